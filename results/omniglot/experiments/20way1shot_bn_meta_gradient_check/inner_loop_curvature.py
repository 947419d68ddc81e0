"""The meta-batch of check.py whose second-order meta-gradient is six times the usual size (its 5th,
"batch 4"), task by task: each task's second- and first-order meta-gradient norms, then, for a few of its
tasks, the support loss and the largest-magnitude eigenvalue of its Hessian (power iteration on exact
Hessian-vector products, 30 iterations) along the 5 inner steps of 0.1. README.md has the command and output.

    python results/omniglot/experiments/20way1shot_bn_meta_gradient_check/inner_loop_curvature.py
"""
import os
import sys

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..", "..", ".."))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "experiments"))
os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

import fewshot  # noqa: E402
from data.omniglot import load_omniglot_splits  # noqa: E402
from maml_tf import batched, maml, models  # noqa: E402
from maml_tf.functional import call, get_weights  # noqa: E402

model = models.omniglot_conv(20)
print(fewshot.load_for_evaluation(model, os.path.join(ROOT, "results/omniglot/20way1shot")))
splits = load_omniglot_splits(os.environ.get("OMNIGLOT_DIR", os.path.join(ROOT, "../shared/data/omniglot")),
                              num_train=1200, num_val=100, download=False)
sample = fewshot.episode_sampler(splits.train.sampler(20, 1, 1))
rng = np.random.default_rng(123)  # as check.py
for _ in range(5):
    support, query = sample(16, rng)
task_loss = batched.supervised_loss(model, maml.softmax_cross_entropy, transductive=True)


@tf.function
def meta_gradient_norm(s, q, first_order):
    w = get_weights(model)
    with tf.GradientTape() as tape:
        tape.watch(w)
        loss, _ = batched.meta_objective_and_metrics(task_loss, w, s, q, 5, 0.1, first_order,
                                                      metrics={"accuracy": maml.accuracy}, layout="batched")
    return loss, tf.linalg.global_norm(list(tape.gradient(loss, w).values()))


for t in range(16):
    s = tuple(tf.constant(x[t:t + 1]) for x in support)
    q = tuple(tf.constant(x[t:t + 1]) for x in query)
    loss2, norm2 = meta_gradient_norm(s, q, False)
    _, norm1 = meta_gradient_norm(s, q, True)
    print(f"task {t}: meta-loss {float(loss2):.3f}  |g| second order {float(norm2):.2f}  first order {float(norm1):.2f}",
          flush=True)


def support_loss(w, x, y):
    return tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(tf.cast(y, tf.int32), call(model, w, x)))


@tf.function
def gradient(w, x, y):
    with tf.GradientTape() as tape:
        tape.watch(w)
        loss = support_loss(w, x, y)
    return loss, tape.gradient(loss, w)


@tf.function
def hvp(w, v, x, y):
    with tf.GradientTape() as outer:
        outer.watch(w)
        with tf.GradientTape() as inner:
            inner.watch(w)
            loss = support_loss(w, x, y)
        g = inner.gradient(loss, w)
        dot = tf.add_n([tf.reduce_sum(g[k] * v[k]) for k in w])
    return outer.gradient(dot, w)


def top_eigenvalue(w, x, y, iterations=30):
    r = np.random.default_rng(0)
    v = {k: tf.constant(r.standard_normal(w[k].shape).astype("float32")) for k in w}
    value = 0.0
    for _ in range(iterations):
        n = tf.linalg.global_norm(list(v.values()))
        v = {k: v[k] / n for k in v}
        hv = hvp(w, v, x, y)
        value = float(tf.add_n([tf.reduce_sum(hv[k] * v[k]) for k in v]))
        v = hv
    return value


for t in (0, 1, 4, 9):
    x, y = tf.constant(support[0][t]), tf.constant(support[1][t])
    w = {k: tf.identity(v) for k, v in get_weights(model).items()}
    rows = []
    for step in range(6):
        loss, g = gradient(w, x, y)
        rows.append(f"after {step}: loss {float(loss):.3f}, eigenvalue {top_eigenvalue(w, x, y):.1f}")
        w = {k: w[k] - 0.1 * g[k] for k in w}
    print(f"task {t} support loss and its Hessian's largest eigenvalue: " + "; ".join(rows), flush=True)
