"""Evaluation: a metric on the query set after 0, 1, ..., S inner steps, over many tasks.

The paper reports the mean over test tasks with a 95% confidence interval of
``1.96 * std / sqrt(num_tasks)``; :func:`summarize` computes exactly that for every step.
"""

from __future__ import annotations

from typing import Any, Callable, Collection

import numpy as np
import tensorflow as tf

from maml_tf import batched
from maml_tf.functional import Weights
from maml_tf.maml import LearningRate, TaskLoss, inner_update, per_task, step_size


def metric_curve(task_loss: TaskLoss, metric: TaskLoss, weights: Weights, support, query, steps: int,
                 inner_lr: LearningRate, layout: str = "vectorized", frozen: Collection[str] = ()) -> tf.Tensor:
    """``[tasks, steps + 1]``: the metric on each task's query set before adaptation and after each of
    ``steps`` gradient steps on the same support set (not adapting the weights in ``frozen``). No
    meta-gradient is taken here, so the inner gradients are cut (the values are those of
    second-order adaptation all the same).

    ``metric`` is built like the task loss, ``metric(weights, data)`` (e.g.
    ``maml.supervised_loss(forward, maml.accuracy)``); with a task loss from ``batched.supervised_loss`` it
    is a plain ``metric(labels, outputs)`` (e.g. ``maml.accuracy``) instead, in every layout.
    ``layout="batched"`` runs :func:`maml_tf.batched.metric_curve` (a task loss from
    ``batched.supervised_loss``; other models fall back to ``"vectorized"``)."""
    if layout == "batched":
        return batched.metric_curve(task_loss, metric, weights, support, query, steps, inner_lr, frozen)
    wrapped = batched.as_metric(task_loss, metric)
    plain, metric = wrapped is not metric, wrapped
    weights = {k: tf.stop_gradient(v) for k, v in weights.items()}

    def one_task(data):
        s, q = data
        fast = weights
        if plain:  # as_metric's error says what a metric is here
            values = [metric(fast, q)]
        else:
            try:
                values = [metric(fast, q)]
            except (AttributeError, TypeError, ValueError) as e:
                raise TypeError(
                    f"metric(weights, query) failed ({type(e).__name__}: {e}); a metric takes the weights and a "
                    f"task's query data, like a task loss (e.g. maml.supervised_loss(forward, maml.accuracy)), not "
                    f"(labels, predictions), unless the task loss comes from batched.supervised_loss.") from e
        for i in range(steps):
            fast = inner_update(task_loss, fast, s, step_size(inner_lr, i), first_order=True, frozen=frozen)
            values.append(metric(fast, q))
        return tf.stack(values)

    return per_task(one_task, (support, query), layout)


def evaluate(curve: Callable[[Any, Any], tf.Tensor], sample: Callable[[int, np.random.Generator], tuple],
             num_tasks: int, batch_size: int, seed: int) -> np.ndarray:
    """Run ``curve(support, query)`` on ``num_tasks`` tasks drawn by ``sample(n, rng)`` in batches of
    ``batch_size``; returns the per-task values ``[num_tasks, steps + 1]``. The tasks are those that
    ``sample`` draws in that order from ``np.random.default_rng(seed)``, so they depend on ``batch_size``
    too (one call of ``sample(20)`` need not draw the tasks of two ``sample(10)``): compare methods
    with the same seed and batch size."""
    if num_tasks <= 0 or batch_size <= 0:
        raise ValueError("num_tasks and batch_size must be positive.")
    rng = np.random.default_rng(seed)
    out, done = [], 0
    while done < num_tasks:
        support, query = sample(batch_size, rng)  # fixed batch size: one trace of ``curve``
        values = np.asarray(curve(support, query))
        out.append(values[: num_tasks - done])
        done += len(out[-1])
    return np.concatenate(out, axis=0)


def summarize(values: np.ndarray) -> dict:
    """Mean and 95% confidence interval (1.96 std / sqrt(n), as the paper) at each step."""
    values = np.asarray(values, dtype=np.float64)
    n = values.shape[0]
    return {
        "mean": values.mean(axis=0).tolist(),
        "ci95": (1.96 * values.std(axis=0) / np.sqrt(n)).tolist(),
        "num_tasks": int(n),
    }
