"""The MAML inner loop and meta-objective (Finn, Abbeel & Levine 2017, Algorithm 1).

For a task T_i with support data D_i and query data D'_i, and meta-parameters theta:

    theta'_i = theta - alpha * grad_theta L_i(theta; D_i)          (``adapt``; repeated S times)
    meta-objective  = mean_i L_i(theta'_i; D'_i)                     (``meta_objective``)

The meta-gradient differentiates through the inner update, which brings in the second-order term
``-alpha * H_i(theta) @ grad L_i(theta'_i; D'_i)``. With ``first_order=True`` the inner gradients are
treated as constants (``tf.stop_gradient``), which drops that term (first-order MAML).

One inner loop serves every experiment: the loss is an arbitrary ``task_loss(weights, data) ->
scalar``. Supervised learning builds it from a model and a per-example loss with
:func:`supervised_loss`; reinforcement learning passes a policy-gradient surrogate.

Tasks are batched along axis 0 of every tensor of ``support`` and ``query`` (nested structures of
tensors are fine). How the per-task computations are laid out is chosen by ``layout``:
``"vectorized"`` (``tf.vectorized_map``, the default, measured faster), ``"loop"`` (a plain loop,
the reference) or ``"batched"`` (all tasks folded into one network with grouped convolutions, for the
models :mod:`maml_tf.batched` supports; whole meta-objectives and metric curves only, other models and
per-task calls run ``"vectorized"``).
"""

from __future__ import annotations

import math
import numbers
from typing import Any, Callable, Collection, Sequence, Union

import tensorflow as tf

from maml_tf.functional import Weights

TaskLoss = Callable[[Weights, Any], tf.Tensor]
LearningRate = Union[float, Sequence[float]]
LAYOUTS = ("vectorized", "loop", "batched")


def step_size(inner_lr: LearningRate, step: int) -> float:
    """The inner learning rate of step ``step`` (0-based): a float, or a per-step sequence whose
    last entry is reused for later steps (the RL experiments use 0.1 then 0.05). Raises ValueError for
    anything else (a string, an empty sequence, a value that is not a finite number)."""
    if isinstance(inner_lr, (str, bytes)) or not isinstance(inner_lr, (numbers.Real, Sequence)):
        raise ValueError(f"inner_lr must be a number or a sequence of numbers (one per step), not {inner_lr!r}.")
    lrs = [inner_lr] if isinstance(inner_lr, numbers.Real) else list(inner_lr)
    if not lrs:
        raise ValueError("inner_lr is an empty sequence; give one step size, or one per step.")
    lr = lrs[min(step, len(lrs) - 1)]
    if isinstance(lr, bool) or not isinstance(lr, numbers.Real) or not math.isfinite(lr):
        raise ValueError(f"inner_lr must hold finite numbers, not {lr!r}.")
    return float(lr)


def check_steps(steps) -> int:
    """``steps`` as an int, after checking that it is a whole number >= 0."""
    if isinstance(steps, bool) or not isinstance(steps, numbers.Integral) or steps < 0:
        raise ValueError(f"steps must be a whole number >= 0, not {steps!r}.")
    return int(steps)


def check_frozen(weights: Weights, frozen: Collection[str]) -> frozenset:
    """``frozen`` as a set, after checking that every name is one of ``weights``."""
    if isinstance(frozen, (str, bytes)):
        raise ValueError(f"frozen takes a collection of weight names, not the string {frozen!r} (write [{frozen!r}]).")
    frozen = frozenset(frozen)
    unknown = sorted(frozen - set(weights))
    if unknown:
        raise ValueError(f"Frozen weights {unknown} are not among the model's weights {sorted(weights)}.")
    if frozen == set(weights):
        raise ValueError("Every weight is frozen: the inner loop would have nothing to adapt.")
    return frozen


def inner_update(task_loss: TaskLoss, weights: Weights, data, lr: float, first_order: bool = False,
                 frozen: Collection[str] = ()) -> Weights:
    """One plain gradient step on ``task_loss(weights, data)``; the weights named in ``frozen`` are
    left as they are (they stay meta-parameters, learned by the outer loop only)."""
    frozen = check_frozen(weights, frozen)
    adapted = {k: w for k, w in weights.items() if k not in frozen}
    with tf.GradientTape() as tape:
        tape.watch(list(adapted.values()))
        loss = task_loss(weights, data)
    grads = tape.gradient(loss, adapted)
    missing = [k for k, g in grads.items() if g is None]
    if missing:
        raise ValueError(f"The task loss does not depend on the weights {missing}; the inner step needs all of "
                         "them (or name them in frozen).")
    # a gather (an embedding, or a one-class task's labels) yields IndexedSlices: make them dense
    grads = {k: tf.convert_to_tensor(g) if isinstance(g, tf.IndexedSlices) else g for k, g in grads.items()}
    if first_order:
        grads = {k: tf.stop_gradient(g) for k, g in grads.items()}
    return {k: weights[k] - lr * grads[k] if k in grads else weights[k] for k in weights}


def adapt(task_loss: TaskLoss, weights: Weights, support, steps: int, inner_lr: LearningRate,
          first_order: bool = False, frozen: Collection[str] = ()) -> Weights:
    """``steps`` gradient steps of ``task_loss`` on ``support`` (the same data at every step).

    Returns fast weights that stay differentiable with respect to ``weights`` (second order), or
    whose inner gradients are cut (``first_order=True``). Weights named in ``frozen`` are not
    adapted (e.g. batch norm offsets, which the authors' few-shot code meta-learns but does not adapt).
    """
    fast = dict(weights)
    for s in range(check_steps(steps)):
        fast = inner_update(task_loss, fast, support, step_size(inner_lr, s), first_order, frozen)
    return fast


def per_task(fn: Callable[[Any], Any], batch, layout: str = "vectorized"):
    """Apply ``fn`` to each task of ``batch`` (axis 0) and stack the results.

    ``fn`` may close over shared tensors (the meta-parameters). ``"vectorized"`` uses
    ``tf.vectorized_map``; ``"loop"`` runs the tasks one after another (unrolled in a
    ``tf.function``), which is the plain reference implementation.
    """
    if layout in ("vectorized", "batched"):  # "batched" only changes whole meta-objectives (maml_tf/batched.py)
        return tf.vectorized_map(fn, batch)
    if layout == "loop":
        num_tasks = tf.nest.flatten(batch)[0].shape[0]
        if num_tasks is None:
            raise ValueError("layout='loop' needs a static number of tasks.")
        outs = [fn(tf.nest.map_structure(lambda t: t[i], batch)) for i in range(num_tasks)]
        return tf.nest.map_structure(lambda *xs: tf.stack(xs), *outs)
    raise ValueError(f"Unknown task layout {layout!r}; choose one of {LAYOUTS}.")


def meta_objective(task_loss: TaskLoss, weights: Weights, support, query, steps: int,
                   inner_lr: LearningRate, first_order: bool = False, query_loss: TaskLoss | None = None,
                   layout: str = "vectorized", frozen: Collection[str] = ()) -> tf.Tensor:
    """Mean over tasks of the query loss after adapting on the support set.

    ``query_loss`` defaults to ``task_loss`` (RL uses a different outer objective); ``frozen`` as in
    :func:`adapt`; ``layout`` as in the module docstring (``"batched"`` runs
    :func:`maml_tf.batched.meta_objective`).
    """
    check_steps(steps)
    step_size(inner_lr, 0)
    s_tasks, q_tasks = (tf.nest.flatten(x)[0].shape[0] for x in (support, query))
    if s_tasks is not None and q_tasks is not None and s_tasks != q_tasks:
        raise ValueError(f"support holds {s_tasks} tasks but query holds {q_tasks}; give each task both.")
    if layout == "batched":  # tasks folded into one batch, for supported models (maml_tf/batched.py)
        from maml_tf import batched
        return batched.meta_objective(task_loss, weights, support, query, steps, inner_lr, first_order, query_loss,
                                      frozen)
    query_loss = query_loss or task_loss

    def one_task(data):
        s, q = data
        fast = adapt(task_loss, weights, s, steps, inner_lr, first_order, frozen)
        return query_loss(fast, q)

    return tf.reduce_mean(per_task(one_task, (support, query), layout))


def meta_gradient(task_loss: TaskLoss, weights: Weights, support, query, steps: int,
                  inner_lr: LearningRate, first_order: bool = False, layout: str = "vectorized",
                  frozen: Collection[str] = (), query_loss: TaskLoss | None = None):
    """(meta-objective, its gradient w.r.t. ``weights`` as a dict); arguments as :func:`meta_objective`."""
    with tf.GradientTape() as tape:
        tape.watch(list(weights.values()))
        loss = meta_objective(task_loss, weights, support, query, steps, inner_lr, first_order, query_loss,
                              layout=layout, frozen=frozen)
    return loss, tape.gradient(loss, weights)


# ----------------------------------------------------------------------------------------------
# Supervised losses


def mse(y_true, y_pred):
    return tf.reduce_mean(tf.square(tf.cast(y_true, y_pred.dtype) - y_pred))


def softmax_cross_entropy(labels, logits):
    return tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(labels=tf.cast(labels, tf.int32),
                                                                        logits=logits))


def accuracy(labels, logits):
    return tf.reduce_mean(tf.cast(tf.equal(tf.argmax(logits, -1, output_type=tf.int32),
                                           tf.cast(labels, tf.int32)), tf.float32))


def supervised_loss(forward: Callable[[Weights, Any], tf.Tensor], loss: Callable = mse) -> TaskLoss:
    """``task_loss(weights, (x, y)) = loss(y, forward(weights, x))``."""

    def task_loss(weights: Weights, data):
        x, y = data
        return loss(y, forward(weights, x))

    return task_loss
