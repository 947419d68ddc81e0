"""Meta-gradients of a 20-way 1-shot Omniglot checkpoint (second order, 5 inner steps of 0.1, meta-batch 16)
with exact batch-norm statistics (maml_tf.models.ExactBatchNormalization, our networks) against Keras's
BatchNormalization, whose variance stops the gradient through the mean (as TF1's tf.nn.moments under the
authors' tf.contrib batch_norm), and against the first-order meta-gradient, on the same meta-batches of
training tasks. README.md beside this file has the command and what it printed.

    python results/omniglot/experiments/20way1shot_bn_meta_gradient_check/check.py [LOGDIR] [NUM_BATCHES]
"""
import os
import sys

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..", "..", ".."))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "experiments"))
os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

import fewshot  # noqa: E402
from data.omniglot import load_omniglot_splits  # noqa: E402
from maml_tf import batched, maml, models  # noqa: E402
from maml_tf.functional import get_weights  # noqa: E402


def with_keras_batch_norm(model):
    """The same network with Keras's BatchNormalization in place of ours (same weight names)."""
    def clone(layer):
        if isinstance(layer, models.ExactBatchNormalization):
            return keras.layers.BatchNormalization.from_config(layer.get_config())
        return layer.__class__.from_config(layer.get_config())
    return keras.models.clone_model(model, clone_function=clone)


logdir = sys.argv[1] if len(sys.argv) > 1 else os.path.join(ROOT, "results/omniglot/20way1shot")
num_batches = int(sys.argv[2]) if len(sys.argv) > 2 else 6
exact = models.omniglot_conv(20)
nets = {"exact": exact, "keras": with_keras_batch_norm(exact)}
for net in nets.values():
    info = fewshot.load_for_evaluation(net, logdir)
print(info)
splits = load_omniglot_splits(os.environ.get("OMNIGLOT_DIR", os.path.join(ROOT, "../shared/data/omniglot")),
                              num_train=1200, num_val=100, download=False)
sample = fewshot.episode_sampler(splits.train.sampler(20, 1, 1))
rng = np.random.default_rng(123)


def meta_gradient_fn(net):
    task_loss = batched.supervised_loss(net, maml.softmax_cross_entropy, transductive=True)

    @tf.function
    def meta_gradient(support, query, first_order):
        weights = get_weights(net)
        with tf.GradientTape() as tape:
            tape.watch(weights)
            loss, _ = batched.meta_objective_and_metrics(task_loss, weights, support, query, 5, 0.1, first_order,
                                                          metrics={"accuracy": maml.accuracy}, layout="batched")
        return loss, tape.gradient(loss, weights)
    return meta_gradient


fns = {name: meta_gradient_fn(net) for name, net in nets.items()}


def flat(d):
    return np.concatenate([d[k].numpy().ravel() for k in sorted(d)])


def cos(x, y):
    return x @ y / np.linalg.norm(x) / np.linalg.norm(y)


for b in range(num_batches):
    support, query = (tuple(tf.constant(x) for x in part) for part in sample(16, rng))
    le, ge = fns["exact"](support, query, False)
    la, ga = fns["keras"](support, query, False)
    _, gf = fns["exact"](support, query, True)
    ge, ga, gf = flat(ge), flat(ga), flat(gf)
    print(f"batch {b}: meta-loss {float(le):.4f} (keras BN {float(la):.4f})  |g| exact {np.linalg.norm(ge):.4f}  "
          f"keras BN {np.linalg.norm(ga):.4f}  first-order {np.linalg.norm(gf):.4f}  cos(exact, keras BN) "
          f"{cos(ge, ga):.4f}  cos(exact, first-order) {cos(ge, gf):.4f}", flush=True)
