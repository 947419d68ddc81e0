"""``compute_dtype="bfloat16"`` in the batched layout (maml_tf/batched.py): the convolutions and matrix
products (and their gradients of every order) run in bfloat16, everything else in float32. The
meta-objective and second-order meta-gradient stay close to float32's; the ops really are bfloat16;
bad uses are refused with one sentence."""

import keras
import numpy as np
import pytest
import tensorflow as tf
from keras import layers

from maml_tf import batched, maml, models
from maml_tf.functional import get_weights

from test_batched import episodes


def _loss_and_grad(task_loss, weights, support, query, steps, lr):
    with tf.GradientTape() as tape:
        tape.watch(list(weights.values()))
        loss = maml.meta_objective(task_loss, weights, support, query, steps, lr, False, layout="batched")
    return loss, tape.gradient(loss, weights)


@pytest.fixture(scope="module")
def omniglot(needs_bfloat16_convolutions):
    keras.utils.set_random_seed(0)  # a small network of the paper's Omniglot kind, to keep the test quick
    model = models.conv_classifier(5, (14, 14, 1), filters=16, blocks=3)
    support = episodes(3, 5, 1, (14, 14, 1), seed=1, binary=True)
    query = episodes(3, 5, 1, (14, 14, 1), seed=2, binary=True)
    return model, support, query


@pytest.mark.parametrize("steps, min_cosine", [(0, 0.99), (2, 0.9)])
def test_meta_gradient_close_to_float32(omniglot, steps, min_cosine):
    """Without inner steps the gradient is within bfloat16 rounding of float32's (here cosine 0.996,
    relative error 0.09). Through second-order inner steps the rounding is amplified: cosine 0.956 and
    relative error 0.30 after two steps here, 0.88 and 0.50 for the paper's Omniglot network at its
    initialisation (5 ways, 3 tasks, lr 0.4). So bfloat16 meta-gradients are noisy estimates of
    float32's, and whether that matters is measured by training (README), not assumed."""
    model, support, query = omniglot
    weights = get_weights(model)
    ref_loss, ref = _loss_and_grad(batched.supervised_loss(model, maml.softmax_cross_entropy), weights,
                                   support, query, steps, 0.4)
    loss, got = _loss_and_grad(batched.supervised_loss(model, maml.softmax_cross_entropy,
                                                       compute_dtype="bfloat16"), weights, support, query, steps, 0.4)
    assert loss.dtype == tf.float32 and all(got[k].dtype == tf.float32 for k in got)
    np.testing.assert_allclose(float(loss), float(ref_loss), rtol=2e-2)
    flat_ref = np.concatenate([ref[k].numpy().ravel() for k in sorted(ref)])
    flat = np.concatenate([got[k].numpy().ravel() for k in sorted(ref)])
    cosine = flat @ flat_ref / np.linalg.norm(flat) / np.linalg.norm(flat_ref)
    assert cosine > min_cosine, cosine
    # and it is not float32 in disguise: bfloat16 rounding leaves a visible difference
    assert np.linalg.norm(flat - flat_ref) > 1e-3 * np.linalg.norm(flat_ref)


def test_graph_runs_convolutions_and_their_gradients_in_bfloat16(omniglot):
    model, support, query = omniglot
    weights = get_weights(model)
    task_loss = batched.supervised_loss(model, maml.softmax_cross_entropy, compute_dtype="bfloat16")
    graph = tf.function(lambda w: _loss_and_grad(task_loss, w, support, query, 1, 0.4)).get_concrete_function(
        weights).graph
    kinds = {}
    for op in graph.get_operations():
        if "SoftmaxCrossEntropy" in op.name:  # the loss's own (float32) products: not the network's
            continue
        if op.type in ("Conv2D", "Conv2DBackpropInput", "Conv2DBackpropFilter", "MatMul", "BatchMatMulV2"):
            kinds.setdefault(op.type, set()).add(op.get_attr("T"))
    assert {"Conv2D", "Conv2DBackpropInput", "Conv2DBackpropFilter", "BatchMatMulV2"} <= set(kinds), kinds
    for kind, dtypes in kinds.items():
        assert dtypes == {tf.bfloat16}, (kind, dtypes)


def test_bad_uses_are_refused(omniglot):
    model, support, _ = omniglot
    task_loss = batched.supervised_loss(model, maml.softmax_cross_entropy, compute_dtype="bfloat16")
    with pytest.raises(ValueError, match="batched layout only"):
        maml.meta_objective(task_loss, get_weights(model), support, support, 1, 0.4, layout="loop")


def test_bad_dtypes_and_models_are_refused_on_any_processor():
    model = models.conv_classifier(5, (14, 14, 1), filters=4, blocks=1)
    with pytest.raises(ValueError, match="compute_dtype must be one of"):
        batched.supervised_loss(model, maml.softmax_cross_entropy, compute_dtype="float16")
    unsupported = keras.Sequential([keras.Input((4,)), layers.Dense(3), layers.Dropout(0.1), layers.Dense(2)])
    with pytest.raises(ValueError, match="needs the batched layout"):
        batched.supervised_loss(unsupported, maml.softmax_cross_entropy, compute_dtype="bfloat16")


def test_a_processor_that_cannot_run_bfloat16_convolutions_refuses_them(monkeypatch):
    """Where the probe finds bfloat16 grouped convolutions unsupported (as on a CPU without AVX-512),
    asking for them is one clear error, not a crash inside the first gradient."""
    for device in ("CPU", "GPU"):
        monkeypatch.setitem(batched._grouped_conv_problem, (device, "bfloat16"), "no bfloat16 grouped convolutions")
    model = models.conv_classifier(5, (14, 14, 1), filters=4, blocks=1)
    with pytest.raises(ValueError, match="needs the batched layout.*no bfloat16 grouped convolutions"):
        batched.supervised_loss(model, maml.softmax_cross_entropy, compute_dtype="bfloat16")
    batched.supervised_loss(model, maml.softmax_cross_entropy)  # float32 is not affected
    mlp = keras.Sequential([keras.Input((4,)), layers.Dense(3), layers.ReLU(), layers.Dense(2)])
    assert batched.supervised_loss(mlp, maml.softmax_cross_entropy, compute_dtype="bfloat16").net is not None
