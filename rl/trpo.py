r"""Trust region policy optimization (Schulman et al. 2015), as small pure helpers.

TRPO maximises a surrogate objective S(theta) subject to a trust region on the average KL divergence
between the policy that collected the data and the new one:

    maximise_theta  S(theta)    subject to   KL(theta) = E_s[ KL(pi_old(.|s) || pi_theta(.|s)) ] <= delta.

Written as the minimisation of the loss L = -S, the step from theta_0 uses a linear model of L and a
quadratic model of the KL (its value and gradient are zero at theta_0, so its Hessian H says all):

    g = grad L(theta_0),   H = hess KL(theta_0),
    x = H^{-1} g                        conjugate gradient, using only products H v  (``conjugate_gradient``)
    step = -sqrt(2 delta / (x^T H x)) x  the largest step of the quadratic model with KL <= delta  (``natural_step``)

and then a backtracking line search (``line_search``) tries theta_0 + beta^n step, n = 0, 1, ..., and
accepts the first candidate whose loss is lower than L(theta_0), whose *exact* KL is <= delta and
whose values are all finite. If none qualifies the parameters stay at theta_0: a step that breaks
the trust region or produces NaN/inf is never applied.

Hessian-vector products ``H v = grad_theta (grad_theta KL . v)`` come from nested gradient tapes
(``hessian_vector_product``: double backpropagation, or forward-over-backward with a
``tf.autodiff.ForwardAccumulator``), so H is never formed. A small damping ``(H + c I) v`` keeps
conjugate gradient well conditioned.

Parameters are dictionaries of tensors (the library's weight dictionaries); ``flatten`` and
``unflatten`` convert to and from the flat vectors that conjugate gradient and the line search use.
Conjugate gradient and the line search run in numpy float64 on those vectors.
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Dict, Sequence

import numpy as np
import tensorflow as tf

Params = Dict[str, tf.Tensor]


# ------------------------------------------------------------------------------------------------
# Flat vectors <-> parameter dictionaries


def flatten(params: Params, keys: Sequence[str] | None = None) -> tf.Tensor:
    """One 1-D tensor holding ``params[k]`` for ``k`` in ``keys`` (default: the dict's order)."""
    keys = list(params) if keys is None else list(keys)
    return tf.concat([tf.reshape(params[k], [-1]) for k in keys], axis=0)


def unflatten(vector, like: Params) -> Params:
    """The inverse of :func:`flatten`: split ``vector`` into tensors shaped like ``like``'s entries
    (in ``like``'s order), with ``like``'s dtype."""
    vector = tf.convert_to_tensor(vector)
    sizes = [int(np.prod(v.shape)) for v in like.values()]
    total = sum(sizes)
    if vector.shape.rank != 1 or vector.shape[0] != total:
        raise ValueError(f"Expected a vector of {total} entries, got shape {vector.shape}.")
    parts = tf.split(vector, sizes)
    return {k: tf.cast(tf.reshape(p, v.shape), v.dtype) for (k, v), p in zip(like.items(), parts)}


def num_parameters(params: Params) -> int:
    return sum(int(np.prod(v.shape)) for v in params.values())


# ------------------------------------------------------------------------------------------------
# Curvature


def _keys_values_tangents(params: Params, vector: Params):
    """``params`` and ``vector`` as parallel lists (the vector cast to each parameter's dtype)."""
    keys = list(params)
    values = [tf.convert_to_tensor(params[k]) for k in keys]
    tangents = [tf.cast(tf.convert_to_tensor(vector[k]), v.dtype) for k, v in zip(keys, values)]
    return keys, values, tangents


def _gradient(f: Callable[[Params], tf.Tensor], keys: list, values: list) -> list:
    """grad f at the parameters ``dict(zip(keys, values))``, zeros where f does not depend on one."""
    with tf.GradientTape() as tape:
        tape.watch(values)
        y = f(dict(zip(keys, values)))
    return tape.gradient(y, values, unconnected_gradients=tf.UnconnectedGradients.ZERO)


def hessian_vector_product(f: Callable[[Params], tf.Tensor], params: Params, vector: Params,
                           mode: str = "double_backprop") -> Params:
    """``H v`` with ``H`` the Hessian of the scalar ``f(params)`` at ``params``, by nested tapes.

    ``"double_backprop"``: ``grad_theta (grad_theta f(theta) . v)``; ``"forward_over_back"``: the
    directional derivative (forward mode) of ``grad_theta f`` along ``v``. Same result; which is
    faster depends on the model. Entries that ``f`` does not depend on get zeros.
    """
    keys, values, tangents = _keys_values_tangents(params, vector)
    if mode == "double_backprop":
        with tf.GradientTape() as outer:
            outer.watch(values)
            grads = _gradient(f, keys, values)
            gv = tf.add_n([tf.reduce_sum(g * t) for g, t in zip(grads, tangents)])
        hv = outer.gradient(gv, values, unconnected_gradients=tf.UnconnectedGradients.ZERO)
    elif mode == "forward_over_back":
        with tf.autodiff.ForwardAccumulator(values, tangents) as acc:
            grads = _gradient(f, keys, values)
        hv = [acc.jvp(g, unconnected_gradients=tf.UnconnectedGradients.ZERO) for g in grads]
    else:
        raise ValueError(f"Unknown mode {mode!r}; choose 'double_backprop' or 'forward_over_back'.")
    return dict(zip(keys, hv))


def finite_difference_hvp(f: Callable[[Params], tf.Tensor], params: Params, vector: Params,
                          base_eps: float = 1.0) -> Params:
    """``H v`` as the symmetric secant of the gradient, the way the MAML authors' TRPO computed it
    (rllab's ``FiniteDifferenceHvp``):

        H v ~ (grad f(theta + eps v) - grad f(theta - eps v)) / (2 eps),   eps = base_eps / (|theta| + 1e-8)

    with |theta| the norm of all parameters together. Exact for a quadratic ``f``; otherwise the
    secant over the probed segment, whose length eps |v| grows with ``base_eps``. The authors'
    optimizer passed its ``num_slices=1`` positionally into ``base_eps`` (their
    ``conjugate_gradient_optimizer.py``), so their runs used base_eps = 1, the default here.
    """
    keys, values, tangents = _keys_values_tangents(params, vector)
    norm = tf.sqrt(tf.add_n([tf.reduce_sum(tf.square(v)) for v in values]))
    eps = tf.cast(base_eps, norm.dtype) / (norm + 1e-8)
    plus = _gradient(f, keys, [v + eps * t for v, t in zip(values, tangents)])
    minus = _gradient(f, keys, [v - eps * t for v, t in zip(values, tangents)])
    return {k: (p - m) / (2.0 * eps) for k, p, m in zip(keys, plus, minus)}


def conjugate_gradient(matvec: Callable[[np.ndarray], np.ndarray], b: np.ndarray, iterations: int = 10,
                       residual_tol: float = 1e-10) -> np.ndarray:
    """Approximately solve ``A x = b`` for symmetric positive (semi-)definite ``A`` given only
    ``matvec(v) = A v``: ``iterations`` steps of conjugate gradient from x = 0 (stops early once
    ``|r|^2 < residual_tol``). Exact after n steps for an n x n positive-definite A."""
    b = np.asarray(b, dtype=np.float64)
    x = np.zeros_like(b)
    r = b.copy()          # residual b - A x
    p = r.copy()          # search direction
    rr = r @ r
    for _ in range(iterations):
        if rr < residual_tol:
            break
        ap = np.asarray(matvec(p), dtype=np.float64)
        pap = p @ ap
        if not np.isfinite(pap) or pap <= 0.0:
            break  # the curvature along p is not positive (or not finite): keep what we have
        alpha = rr / pap
        x += alpha * p
        r -= alpha * ap
        rr_new = r @ r
        p = r + (rr_new / rr) * p
        rr = rr_new
    return x


def natural_step(gradient: np.ndarray, matvec: Callable[[np.ndarray], np.ndarray], max_kl: float,
                 cg_iterations: int = 10, damping: float = 1e-5) -> tuple[np.ndarray, float]:
    """The TRPO step for the loss gradient ``gradient`` and KL Hessian products ``matvec``:
    ``step = -sqrt(2 max_kl / (x^T H x)) x`` with ``x ~= (H + damping I)^{-1} g`` (conjugate
    gradient). Returns ``(step, expected_improvement)`` where ``expected_improvement = -g . step``
    is the decrease of the loss that the linear model predicts. A zero step (and 0.0) if the
    quadratic model is degenerate or not finite."""
    g = np.asarray(gradient, dtype=np.float64)

    def damped(v):
        return np.asarray(matvec(v), dtype=np.float64) + damping * v

    x = conjugate_gradient(damped, g, cg_iterations)
    xhx = float(x @ damped(x))
    if not (np.isfinite(xhx) and xhx > 0.0 and np.all(np.isfinite(x))):
        return np.zeros_like(g), 0.0
    step = -np.sqrt(2.0 * max_kl / xhx) * x
    return step, float(-g @ step)


@dataclasses.dataclass(frozen=True)
class LineSearchResult:
    fraction: float        # the accepted fraction of the full step (0.0: no step was accepted)
    loss: float            # loss at the returned parameters
    kl: float              # KL at the returned parameters (0.0 if no step)
    backtracks: int        # candidates rejected before the accepted one (or all tried)
    accepted: bool


def line_search(evaluate: Callable[[float], tuple[float, float]], loss_before: float, max_kl: float,
                backtrack_ratio: float = 0.8, max_backtracks: int = 15) -> LineSearchResult:
    """Backtracking on the fraction of a full step.

    ``evaluate(fraction) -> (loss, kl)`` at ``theta_0 + fraction * step``. The first fraction
    ``backtrack_ratio ** n`` (n = 0 .. max_backtracks - 1) with a finite loss below ``loss_before``
    and a finite KL <= ``max_kl`` is accepted. Otherwise fraction 0.0 (no step) is returned: a NaN or
    KL-violating step is never returned.
    """
    if not 0.0 < backtrack_ratio < 1.0:
        raise ValueError(f"backtrack_ratio must be in (0, 1), got {backtrack_ratio}.")
    fraction = 1.0
    for n in range(max_backtracks):
        loss, kl = (float(v) for v in evaluate(fraction))
        if np.isfinite(loss) and np.isfinite(kl) and loss < loss_before and kl <= max_kl:
            return LineSearchResult(fraction, loss, kl, n, True)
        fraction *= backtrack_ratio
    return LineSearchResult(0.0, float(loss_before), 0.0, max_backtracks, False)


# ------------------------------------------------------------------------------------------------
# One TRPO update


def trpo_update(params: Params, loss_and_gradient: Callable[[Params], tuple[tf.Tensor, Params]],
                kl_hvp: Callable[[Params], Params], loss_and_kl: Callable[[Params], tuple[tf.Tensor, tf.Tensor]],
                max_kl: float = 0.01, cg_iterations: int = 10, damping: float = 1e-5,
                backtrack_ratio: float = 0.8, max_backtracks: int = 15) -> tuple[Params, dict]:
    """One TRPO update of ``params`` (a dict of tensors); returns ``(new_params, info)``.

    ``loss_and_gradient(params) -> (L, grad L)`` at the current parameters, ``kl_hvp(v) -> H v``
    (the KL's Hessian at the current parameters times the dict ``v``), ``loss_and_kl(params) -> (L,
    KL)`` at candidate parameters. ``new_params`` is ``params`` itself when the line search finds no
    acceptable step.
    """
    keys = list(params)
    theta0 = flatten(params).numpy().astype(np.float64)
    loss0, grads = loss_and_gradient(params)
    loss0 = float(loss0)
    g = flatten(grads, keys).numpy().astype(np.float64)
    info = {"loss_before": loss0, "grad_norm": float(np.linalg.norm(g))}
    if not (np.isfinite(loss0) and np.all(np.isfinite(g))):
        return params, {**info, "loss_after": loss0, "kl": 0.0, "step_fraction": 0.0, "backtracks": 0,
                        "accepted": 0.0, "expected_improvement": 0.0}

    def matvec(v):
        return flatten(kl_hvp(unflatten(v, params)), keys).numpy()

    step, expected = natural_step(g, matvec, max_kl, cg_iterations, damping)

    def candidate(fraction):
        return unflatten(theta0 + fraction * step, params)

    def evaluate(fraction):
        return loss_and_kl(candidate(fraction))

    if not np.any(step):
        result = LineSearchResult(0.0, loss0, 0.0, 0, False)
    else:
        result = line_search(evaluate, loss0, max_kl, backtrack_ratio, max_backtracks)
    new_params = candidate(result.fraction) if result.accepted else params
    info.update(loss_after=result.loss, kl=result.kl, step_fraction=result.fraction,
                backtracks=result.backtracks, accepted=float(result.accepted), expected_improvement=expected)
    return new_params, info
