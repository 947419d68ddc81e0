"""The meta-gradient's norm reported by the training step, and --meta_clip_norm of the few-shot
experiments, against hand-computed references."""

import numpy as np
import pytest
import tensorflow as tf

from test_fewshot_inner_loss import config  # (it puts experiments/ on the path)

import fewshot  # noqa: E402
from maml_tf import functional, maml  # noqa: E402
from test_training import setup  # noqa: E402


def test_the_step_reports_the_norm_of_the_meta_gradient_it_applies():
    model, opt, step, batch_for = setup()
    batch = batch_for(0)
    variables = model.trainable_variables
    before = [v.numpy().copy() for v in variables]
    # the reference: the meta-gradient of the same objective (test_training.setup's), taken by hand
    task_loss = maml.supervised_loss(functional.make_forward(model), maml.mse)
    with tf.GradientTape() as tape:
        loss = maml.meta_objective(task_loss, functional.get_weights(model), batch[0], batch[1], 1, 0.01)
    grads = tape.gradient(loss, variables)
    norm = np.sqrt(sum(float(np.sum(g.numpy().astype(np.float64) ** 2)) for g in grads))
    out = step(batch)
    assert float(out["meta_grad_norm"]) == pytest.approx(norm, rel=1e-5)
    assert float(out["loss"]) == pytest.approx(float(loss), rel=1e-6)
    assert any(not np.allclose(v.numpy(), b) for v, b in zip(variables, before))  # the step was applied


def test_meta_clip_norm_scales_large_meta_gradients_down_before_adam():
    """Two Adam steps, the second with a gradient 40 times the clip norm: with --meta_clip_norm the
    optimizer must move the weights exactly as plain Adam fed the gradient scaled to that norm by hand,
    and differently from plain Adam fed the raw gradient (Adam's moments remember the size)."""
    clip = 0.5
    rng = np.random.default_rng(0)
    shapes = [(3, 4), (4,)]
    small = [rng.normal(size=s).astype(np.float32) for s in shapes]
    small = [g * (0.25 / np.sqrt(sum(np.sum(x ** 2) for x in small))) for g in small]  # norm 0.25 < clip
    large = [rng.normal(size=s).astype(np.float32) for s in shapes]
    large = [g * (20.0 / np.sqrt(sum(np.sum(x ** 2) for x in large))) for g in large]  # norm 20 > clip

    def run(optimizer, gradients):
        variables = [tf.Variable(np.ones(s, np.float32)) for s in shapes]
        for grads in gradients:
            optimizer.apply_gradients(zip([tf.constant(g) for g in grads], variables))
        return [v.numpy() for v in variables]

    clipped = run(fewshot.meta_optimizer(config(meta_clip_norm=clip, meta_lr=0.01)), [small, large])
    by_hand = run(fewshot.meta_optimizer(config(meta_lr=0.01)), [small, [g * (clip / 20.0) for g in large]])
    unclipped = run(fewshot.meta_optimizer(config(meta_lr=0.01)), [small, large])
    for a, b in zip(clipped, by_hand):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
    assert max(np.max(np.abs(a - b)) for a, b in zip(clipped, unclipped)) > 1e-4


def test_meta_clip_norm_is_recorded_and_refused_when_negative():
    assert config().meta_clip_norm == 0.0  # the paper: no clipping
    assert config(meta_clip_norm=3.0).to_json()["meta_clip_norm"] == 3.0
    assert fewshot.variant_suffix(config(meta_clip_norm=3.0)).endswith("_clip3")
    assert "_clip" not in fewshot.variant_suffix(config())
    with pytest.raises(ValueError, match="meta_clip_norm must be >= 0"):
        config(meta_clip_norm=-1.0)
