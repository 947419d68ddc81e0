"""The batched layout (maml_tf/batched.py) gives the same loss, meta-gradient and evaluation curve as
the plain loop layout, for the paper's networks and for a user's model; unsupported models fall back."""

import keras
import numpy as np
import pytest
import tensorflow as tf
from keras import layers

from maml_tf import batched, evaluation, functional, maml, models
from maml_tf.functional import batch_norm_weights, call, get_weights


def episodes(num_tasks, num_ways, shots, image_shape, seed=0, binary=False):
    rng = np.random.default_rng(seed)
    x = rng.random((num_tasks, num_ways * shots) + tuple(image_shape)).astype(np.float32)
    if binary:
        x = (x < 0.25).astype(np.float32)
    y = np.tile(np.repeat(np.arange(num_ways, dtype=np.int32), shots), (num_tasks, 1))
    return x, y


def meta_loss_and_grad(task_loss, model, support, query, steps, lr, first_order, layout, frozen=()):
    weights = get_weights(model)
    with tf.GradientTape() as tape:
        tape.watch(list(weights.values()))
        loss = maml.meta_objective(task_loss, weights, support, query, steps, lr, first_order, layout=layout,
                                   frozen=frozen)
    grads = tape.gradient(loss, weights)
    return float(loss), {k: g.numpy() for k, g in grads.items()}


def assert_same_meta_gradient(model, image_shape, steps, lr, tol, binary=False, num_tasks=2, ways=5,
                              orders=(False, True), frozen=()):
    task_loss = batched.supervised_loss(model, maml.softmax_cross_entropy)
    assert task_loss.net is not None, task_loss.unsupported_reason
    support = episodes(num_tasks, ways, 1, image_shape, seed=1, binary=binary)
    query = episodes(num_tasks, ways, 2, image_shape, seed=2, binary=binary)
    for first_order in orders:
        ref_loss, ref = meta_loss_and_grad(task_loss, model, support, query, steps, lr, first_order, "loop", frozen)
        loss, got = meta_loss_and_grad(task_loss, model, support, query, steps, lr, first_order, "batched", frozen)
        np.testing.assert_allclose(loss, ref_loss, rtol=1e-5)
        scale = max(np.abs(g).max() for g in ref.values())
        assert set(got) == set(ref)
        for k in ref:
            np.testing.assert_allclose(got[k], ref[k], rtol=0, atol=tol * scale,
                                       err_msg=f"{k}, first_order={first_order}")


def test_omniglot_conv_second_and_first_order():
    keras.utils.set_random_seed(0)
    assert_same_meta_gradient(models.omniglot_conv(5), (28, 28, 1), steps=2, lr=0.4, tol=1e-4, binary=True)


def test_frozen_batch_norm_offsets_agree_with_the_loop():
    """The batched layout leaves the frozen weights (here the batch-norm offsets, as the authors' code)
    out of the inner loop exactly as the per-task loop does: same meta-gradient, same accuracy curve."""
    keras.utils.set_random_seed(0)
    model = models.omniglot_conv(5)
    frozen = batch_norm_weights(model)
    assert frozen == [f"bn{i}/beta" for i in range(4)]
    assert_same_meta_gradient(model, (28, 28, 1), steps=2, lr=0.4, tol=1e-4, binary=True, orders=(False,),
                              frozen=frozen)
    task_loss = batched.supervised_loss(model, maml.softmax_cross_entropy)
    support = episodes(3, 5, 1, (28, 28, 1), seed=3, binary=True)
    query = episodes(3, 5, 1, (28, 28, 1), seed=4, binary=True)
    weights = get_weights(model)
    fast = batched.metric_curve(task_loss, maml.accuracy, weights, support, query, 2, 0.4, frozen=frozen).numpy()
    ref = evaluation.metric_curve(task_loss, task_loss.with_loss(maml.accuracy), weights, support, query, 2, 0.4,
                                  layout="loop", frozen=frozen).numpy()
    np.testing.assert_allclose(fast, ref)
    adapted = batched.adapt_packed(task_loss, task_loss.net.pack(weights, 3), support, 1, 0.4, frozen=frozen)
    unpacked = task_loss.net.unpack(adapted, 3)
    for k in frozen:
        np.testing.assert_array_equal(unpacked[k], np.tile(weights[k].numpy()[None], (3, 1)))


def test_mlp_classifier():
    keras.utils.set_random_seed(1)
    assert_same_meta_gradient(models.mlp_classifier(5), (28, 28, 1), steps=2, lr=0.4, tol=1e-4, binary=True,
                              orders=(False,))


def test_maxpool_conv_with_per_step_learning_rates():
    keras.utils.set_random_seed(2)
    model = models.conv_classifier(4, image_shape=(16, 16, 3), filters=8, downsample="maxpool")
    assert_same_meta_gradient(model, (16, 16, 3), steps=2, lr=[0.05, 0.02], tol=1e-4, ways=4, orders=(False,))


def test_user_sequential_model():
    keras.utils.set_random_seed(3)
    model = keras.Sequential([
        keras.Input((12, 12, 2)),
        layers.Conv2D(6, 3, padding="valid", activation="tanh"),
        layers.AveragePooling2D(2),
        layers.Conv2D(5, 3, strides=2, padding="same", use_bias=False),
        layers.BatchNormalization(),  # with a learned scale
        layers.Activation("elu"),
        layers.Flatten(),
        layers.Dense(7, activation="sigmoid"),
        layers.Dense(3),
    ])
    assert_same_meta_gradient(model, (12, 12, 2), steps=1, lr=0.1, tol=1e-4, ways=3, orders=(False,))


def test_forward_matches_keras_and_pack_roundtrips():
    keras.utils.set_random_seed(4)
    model = models.miniimagenet_conv(5)
    net = batched.BatchedNet(model)
    x, _ = episodes(2, 5, 1, (84, 84, 3))
    weights = get_weights(model)
    perturbed = [{k: v + 0.01 * t * tf.ones_like(v) for k, v in weights.items()} for t in range(2)]
    # tasks side by side: along the channels for image layers, along axis 0 for the others
    packed = {k: tf.concat([net.pack(p, 1)[k] for p in perturbed], axis=-1 if net._packing[k] == "channels" else 0)
              for k in weights}
    out = net(packed, x).numpy()
    for t in range(2):
        ref = np.asarray(call(model, perturbed[t], x[t]))
        np.testing.assert_allclose(out[t], ref, rtol=1e-4, atol=1e-4)
    unpacked = net.unpack(packed, 2)
    for t in range(2):
        for k in weights:
            np.testing.assert_allclose(unpacked[k][t].numpy(), perturbed[t][k].numpy(), rtol=0, atol=1e-6)


def test_metric_curve_and_metrics_match_the_reference():
    keras.utils.set_random_seed(5)
    model = models.omniglot_conv(5)
    task_loss = batched.supervised_loss(model, maml.softmax_cross_entropy)
    support = episodes(3, 5, 1, (28, 28, 1), seed=3, binary=True)
    query = episodes(3, 5, 1, (28, 28, 1), seed=4, binary=True)
    weights = get_weights(model)
    fast = batched.metric_curve(task_loss, maml.accuracy, weights, support, query, 2, 0.4).numpy()
    ref = evaluation.metric_curve(task_loss, task_loss.with_loss(maml.accuracy), weights, support, query, 2, 0.4,
                                  layout="loop").numpy()
    assert fast.shape == (3, 3)
    np.testing.assert_allclose(fast, ref)
    # evaluation.metric_curve with layout="batched" is this batched curve (it used to run vectorized_map)
    np.testing.assert_allclose(evaluation.metric_curve(task_loss, maml.accuracy, weights, support, query, 2, 0.4,
                                                       layout="batched"), fast)
    # with a batched task loss, a plain metric(labels, outputs) means the same in every layout
    for layout in ("loop", "vectorized"):
        np.testing.assert_allclose(evaluation.metric_curve(task_loss, maml.accuracy, weights, support, query, 2, 0.4,
                                                           layout=layout), ref)
    # and a metric(weights, data) gets one clear error in every layout, not a TensorFlow one
    weights_style = maml.supervised_loss(functional.make_forward(model), maml.accuracy)
    for layout in ("batched", "loop", "vectorized"):
        with pytest.raises(TypeError, match=r"with a task loss from batched.supervised_loss a metric is a plain "
                                            r"function of \(labels, outputs\)"):
            evaluation.metric_curve(task_loss, weights_style, weights, support, query, 1, 0.4, layout=layout)
    for layout in ("batched", "loop"):
        loss, metrics = batched.meta_objective_and_metrics(task_loss, weights, support, query, 1, 0.4,
                                                           metrics={"acc": maml.accuracy}, layout=layout)
        np.testing.assert_allclose(float(metrics["acc"]), ref[:, 1].mean(), atol=1e-6)
        np.testing.assert_allclose(float(loss), float(maml.meta_objective(task_loss, weights, support, query, 1, 0.4,
                                                                          layout="loop")), rtol=1e-5)


def test_non_transductive_batch_norm_uses_the_support_statistics():
    keras.utils.set_random_seed(6)
    model = models.omniglot_conv(5)
    net = batched.BatchedNet(model)
    (sx, _), (qx, _) = episodes(1, 5, 1, (28, 28, 1), seed=7, binary=True), episodes(1, 5, 3, (28, 28, 1), seed=8)
    weights = get_weights(model)
    packed = net.pack(weights, 1)
    out = net(packed, np.concatenate([sx, qx], 1), stats_examples=5)[0, 5:].numpy()
    # Each query prediction depends on the support set and on itself only.
    changed = qx.copy()
    changed[0, 0] = 1.0 - changed[0, 0]
    out2 = net(packed, np.concatenate([sx, changed], 1), stats_examples=5)[0, 5:].numpy()
    np.testing.assert_allclose(out2[1:], out[1:], rtol=1e-5, atol=1e-6)
    assert np.abs(out2[0] - out[0]).max() > 1e-3
    # Reference: Keras in inference mode with every batch norm's statistics set to the support set's.
    bns = [layer for layer in model.layers if isinstance(layer, layers.BatchNormalization)]
    saved = [(bn.moving_mean.numpy(), bn.moving_variance.numpy()) for bn in bns]
    for bn in bns:
        h = keras.Model(model.inputs, bn.input)(sx[0], training=True)
        mean, var = tf.nn.moments(h, [0, 1, 2])
        bn.moving_mean.assign(mean)
        bn.moving_variance.assign(var)
    ref = np.asarray(call(model, weights, qx[0], training=False))
    for bn, (m, v) in zip(bns, saved):
        bn.moving_mean.assign(m)
        bn.moving_variance.assign(v)
    np.testing.assert_allclose(out, ref, rtol=1e-4, atol=1e-4)


def test_non_transductive_meta_objective_runs_only_batched():
    keras.utils.set_random_seed(7)
    model = models.omniglot_conv(5)
    task_loss = batched.supervised_loss(model, maml.softmax_cross_entropy, transductive=False)
    support, query = episodes(2, 5, 1, (28, 28, 1), binary=True), episodes(2, 5, 1, (28, 28, 1), seed=9, binary=True)
    loss = maml.meta_objective(task_loss, get_weights(model), support, query, 1, 0.4, layout="batched")
    assert np.isfinite(float(loss))
    with pytest.raises(ValueError, match="layout='batched'"):
        batched.meta_objective_and_metrics(task_loss, get_weights(model), support, query, 1, 0.4, layout="loop")


class Subclassed(keras.Model):
    def __init__(self):
        super().__init__()
        self.d1 = layers.Dense(8, activation="relu")
        self.d2 = layers.Dense(2)

    def call(self, x):
        return self.d2(self.d1(x))


def test_unsupported_models_fall_back_to_the_vectorized_layout():
    keras.utils.set_random_seed(8)
    dropout = keras.Sequential([keras.Input((4,)), layers.Dense(8), layers.Dropout(0.0), layers.Dense(2)])
    subclassed = Subclassed()
    subclassed(tf.zeros((1, 4)))
    residual_in = keras.Input((4,))
    h = layers.Dense(4)(residual_in)
    residual = keras.Model(residual_in, layers.Dense(2)(layers.Add()([h, residual_in])))
    rng = np.random.default_rng(0)
    x = rng.normal(size=(3, 6, 4)).astype(np.float32)
    y = np.tile(np.array([0, 1] * 3, np.int32), (3, 1))
    for model in (dropout, subclassed, residual):
        assert batched.why_unsupported(model)
        task_loss = batched.supervised_loss(model, maml.softmax_cross_entropy)
        a = maml.meta_objective(task_loss, get_weights(model), (x, y), (x, y), 1, 0.1, layout="batched")
        b = maml.meta_objective(task_loss, get_weights(model), (x, y), (x, y), 1, 0.1, layout="loop")
        np.testing.assert_allclose(float(a), float(b), rtol=1e-5)
    # a plain task loss (not built by batched.supervised_loss) also falls back
    plain = maml.supervised_loss(lambda w, inputs: call(dropout, w, inputs), maml.softmax_cross_entropy)
    a = maml.meta_objective(plain, get_weights(dropout), (x, y), (x, y), 1, 0.1, layout="batched")
    b = maml.meta_objective(plain, get_weights(dropout), (x, y), (x, y), 1, 0.1, layout="loop")
    np.testing.assert_allclose(float(a), float(b), rtol=1e-5)


PROBE = """
import logging, sys
import keras, numpy as np, tensorflow as tf
sys.path.insert(0, {tests!r})
from test_batched import episodes
from maml_tf import batched, maml, models
from maml_tf.functional import get_weights
logging.basicConfig(level=logging.WARNING, format="LOG %(message)s")
# first asked while a tf.function is traced (where a probe run in the graph could not fail)
print("TRACED", bool(tf.function(lambda: tf.constant(batched.grouped_conv_problem() is None))()))
keras.utils.set_random_seed(0)
model = models.omniglot_conv(3)
task_loss = batched.supervised_loss(model, maml.softmax_cross_entropy)
support, query = episodes(2, 3, 1, (28, 28, 1), seed=1), episodes(2, 3, 1, (28, 28, 1), seed=2)
args = (task_loss, get_weights(model), support, query, 1, 0.4)
print("PROBLEM", batched.grouped_conv_problem())
print("FAST", task_loss.net is not None)
print("VALUES", float(maml.meta_objective(*args, layout="batched")), float(maml.meta_objective(*args, layout="loop")))
"""


@pytest.mark.parametrize("onednn", ["0", "1"])
def test_grouped_convolutions_are_probed_and_fall_back_without_onednn(onednn, tmp_path):
    """With oneDNN on, the conv net runs batched; with it off (TensorFlow's default on CPUs without
    AVX-512), this TensorFlow cannot run grouped convolutions' gradients on a CPU: the probe says so, the
    model runs on the vectorized layout with a warning that names the fix, and the value is unchanged."""
    import os
    import subprocess
    import sys

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    script = tmp_path / "probe.py"
    script.write_text(PROBE.format(tests=os.path.join(root, "tests")))
    env = {**os.environ, "TF_ENABLE_ONEDNN_OPTS": onednn, "TF_CPP_MIN_LOG_LEVEL": "3", "CUDA_VISIBLE_DEVICES": "",
           "PYTHONPATH": root}
    out = subprocess.run([sys.executable, str(script)], env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    lines = {ln.split(" ", 1)[0]: ln.split(" ", 1)[1] for ln in out.stdout.splitlines() if " " in ln}
    batched_value, loop_value = map(float, lines["VALUES"].split())
    np.testing.assert_allclose(batched_value, loop_value, rtol=1e-5)
    if onednn == "1" or lines["PROBLEM"] == "None":  # (a later TensorFlow may run them without oneDNN)
        assert lines["PROBLEM"] == "None" and lines["FAST"] == "True" and lines["TRACED"] == "True"
    else:
        assert "TF_ENABLE_ONEDNN_OPTS=1" in lines["PROBLEM"] and lines["FAST"] == "False"
        assert lines["TRACED"] == "False"
        assert "falls back to 'vectorized'" in out.stderr and "TF_ENABLE_ONEDNN_OPTS=1" in out.stderr


def test_examples_of_another_shape_than_the_models_are_refused_in_one_sentence():
    """Grouped convolutions would otherwise fail deep inside TensorFlow ("Depth of output (256) is not a
    multiple of the number of groups (12)") where the other layouts name the shapes."""
    keras.utils.set_random_seed(0)
    model = models.omniglot_conv(5)
    task_loss = batched.supervised_loss(model, maml.softmax_cross_entropy)
    weights = get_weights(model)
    for shape in ((28, 28, 3), (32, 32, 1)):
        support, query = episodes(2, 5, 1, shape, seed=1), episodes(2, 5, 1, shape, seed=2)
        with pytest.raises(ValueError, match=rf"omniglot_conv takes examples of shape \(28, 28, 1\), got "
                                             rf"\({shape[0]}, {shape[1]}, {shape[2]}\)"):
            maml.meta_objective(task_loss, weights, support, query, 1, 0.4, layout="batched")
