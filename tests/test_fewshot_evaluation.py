"""The few-shot experiments evaluate on the batched layout whatever layout the training step uses.

``fewshot.make_curve`` (validation and test) runs 100 tasks at a time, first order; the per-task loop
would unroll them into one large graph (minutes to compile), so it takes the batched layout wherever
that can run the model, and ``cfg.layout`` only where it cannot."""

import keras
import numpy as np
import tensorflow as tf

from test_fewshot_inner_loss import TASKS, WAYS, config, episodes  # (it puts experiments/ on the path)

import fewshot  # noqa: E402
from maml_tf import evaluation, functional, models  # noqa: E402


def conv_ops(fn, *args) -> int:
    return sum(op.type == "Conv2D" for op in fn.get_concrete_function(*args).graph.get_operations())


def test_evaluation_runs_batched_whatever_the_training_layout():
    keras.utils.set_random_seed(0)
    model = models.omniglot_conv(WAYS)
    support, query = episodes(np.random.default_rng(0))
    curves = {}
    for layout in ("loop", "batched"):
        cfg = config(layout=layout, inner_loss_reduction="mean")
        task_loss, accuracy = fewshot.task_losses(model, cfg)
        curves[layout] = fewshot.make_curve(model, task_loss, accuracy, cfg)
    # Against an evaluation that really runs task by task (the training layout's own): the same accuracies.
    cfg = config(layout="loop", inner_loss_reduction="mean")
    task_loss, accuracy = fewshot.task_losses(model, cfg)
    per_task_loop = tf.function(lambda s, q: evaluation.metric_curve(
        task_loss, accuracy, functional.get_weights(model), s, q, cfg.num_eval_steps,
        cfg.inner_step_size, layout="loop"))
    reference = per_task_loop(support, query)
    for layout in ("loop", "batched"):
        np.testing.assert_allclose(curves[layout](support, query), reference, atol=1e-6)

    # The same graph for both: one grouped convolution per layer and pass, not one per task as the loop's.
    batched_ops = conv_ops(curves["batched"], support, query)
    assert conv_ops(curves["loop"], support, query) == batched_ops
    assert conv_ops(per_task_loop, support, query) == TASKS * batched_ops
