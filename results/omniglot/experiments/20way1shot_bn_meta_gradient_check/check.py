"""Meta-gradients of a 20-way 1-shot Omniglot checkpoint (second order, 5 inner steps of 0.1, meta-batch 16)
with exact batch-norm statistics (maml_tf.models.ExactBatchNormalization, our networks) against Keras's
BatchNormalization, whose variance stops the gradient through the mean (as TF1's tf.nn.moments under the
authors' tf.contrib batch_norm), and against the first-order meta-gradient, on the same meta-batches of
training tasks. README.md beside this file has the command and what it printed.

    python results/omniglot/experiments/20way1shot_bn_meta_gradient_check/check.py [LOGDIR] [NUM_BATCHES]
"""
import os, sys, json, time
ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..", "..", ".."))
sys.path.insert(0, ROOT); sys.path.insert(0, os.path.join(ROOT, "experiments"))
os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"
import numpy as np, tensorflow as tf, keras
from keras import layers
from maml_tf import models, maml, batched
from maml_tf.functional import get_weights
from maml_tf.training import make_checkpoint, restore
from data.omniglot import load_omniglot_splits
import fewshot

def build(exact):
    inputs = keras.Input((28, 28, 1), name="image"); h = inputs
    BN = models.ExactBatchNormalization if exact else layers.BatchNormalization
    for i in range(4):
        h = layers.Conv2D(64, 3, strides=2, padding="same", name=f"conv{i}")(h)
        h = BN(scale=False, epsilon=1e-3, name=f"bn{i}")(h)
        h = layers.ReLU(name=f"relu{i}")(h)
    h = layers.GlobalAveragePooling2D(name="avg")(h)
    out = layers.Dense(20, name="logits")(h)
    return keras.Model(inputs, out, name="omniglot_conv")

logdir = sys.argv[1] if len(sys.argv) > 1 else os.path.join(ROOT, "results/omniglot/20way1shot")
nb = int(sys.argv[2]) if len(sys.argv) > 2 else 6
ms = {e: build(e) for e in (True, False)}
for m in ms.values():
    info = fewshot.load_for_evaluation(m, logdir)
print(info)
splits = load_omniglot_splits(os.environ.get("OMNIGLOT_DIR", os.path.join(ROOT, "../shared/data/omniglot")), num_train=1200, num_val=100, download=False)
samp = fewshot.episode_sampler(splits.train.sampler(20, 1, 1))
rng = np.random.default_rng(123)
fns = {}
for e, m in ms.items():
    tl = batched.supervised_loss(m, maml.softmax_cross_entropy, transductive=True)
    names = [w.path for w in m.trainable_weights]
    @tf.function
    def g(support, query, m=m, tl=tl, fo=False):
        weights = {k: tf.identity(v) for k, v in get_weights(m).items()}
        with tf.GradientTape() as tape:
            tape.watch(weights)
            loss, _ = batched.meta_objective_and_metrics(tl, weights, support, query, 5, 0.1, fo,
                                                          metrics={"acc": maml.accuracy}, layout="batched", frozen=[])
        return loss, tape.gradient(loss, weights)
    fns[e] = g
    if e:
        fo_fn = tf.function(lambda s_, q_, g=g.python_function: g(s_, q_, fo=True))
def flat(d): return np.concatenate([d[k].numpy().ravel() for k in sorted(d)])
for b in range(nb):
    support, query = samp(16, rng)
    support = tuple(tf.constant(x) for x in support); query = tuple(tf.constant(x) for x in query)
    t = time.time()
    le, ge = fns[True](support, query); la, ga = fns[False](support, query)
    _, gf = fo_fn(support, query)
    ge, ga, gf = flat(ge), flat(ga), flat(gf)
    c = lambda x, y: x @ y / np.linalg.norm(x) / np.linalg.norm(y)
    print(f"batch {b}: meta-loss {float(le):.4f} (keras BN {float(la):.4f})  |g| exact {np.linalg.norm(ge):.4f}  keras BN {np.linalg.norm(ga):.4f}  first-order {np.linalg.norm(gf):.4f}  cos(exact, keras BN) {c(ge, ga):.4f}  cos(exact, first-order) {c(ge, gf):.4f}", flush=True)
