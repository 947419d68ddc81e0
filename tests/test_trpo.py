"""Tests of the TRPO helpers: flat vectors, Hessian-vector products, conjugate gradient, the step and
the line search (which must never return a NaN or KL-violating step)."""

import numpy as np
import pytest
import tensorflow as tf

from maml_tf.functional import get_weights
from rl import policies, trpo


def tiny_policy(seed=0):
    return policies.gaussian_mlp_policy(3, 2, hidden=(4,), seed=seed, dtype="float64", name=f"tiny{seed}")


def perturbed(weights, scale, seed):
    rng = np.random.default_rng(seed)
    return {k: v + tf.constant(scale * rng.normal(size=v.shape), v.dtype) for k, v in weights.items()}


def test_flatten_unflatten_roundtrip():
    w = get_weights(tiny_policy())
    flat = trpo.flatten(w)
    assert flat.shape == (trpo.num_parameters(w),)
    back = trpo.unflatten(flat, w)
    assert list(back) == list(w)
    for k in w:
        np.testing.assert_array_equal(back[k].numpy(), w[k].numpy())
    with pytest.raises(ValueError):
        trpo.unflatten(flat[:-1], w)


def test_hessian_vector_product_matches_explicit_hessian_of_the_kl():
    model = tiny_policy()
    w0 = get_weights(model)
    obs = tf.constant(np.random.default_rng(1).normal(size=(7, 3)))
    old_mean, old_log_std = policies.distribution(model, w0, obs)

    def kl(weights):  # mean KL(pi_old || pi_weights) over the states
        mean, log_std = policies.distribution(model, weights, obs)
        return tf.reduce_mean(policies.kl_divergence(old_mean, old_log_std, mean, log_std))

    point = perturbed(w0, 0.3, seed=2)  # away from w0, so the Hessian is not just the Fisher matrix
    flat = tf.Variable(trpo.flatten(point))
    with tf.GradientTape(persistent=True) as outer:
        with tf.GradientTape() as inner:
            y = kl(trpo.unflatten(flat, point))
        grad = inner.gradient(y, flat)
    hessian = outer.jacobian(grad, flat, experimental_use_pfor=False).numpy()
    np.testing.assert_allclose(hessian, hessian.T, atol=1e-10)

    v = np.random.default_rng(3).normal(size=flat.shape[0])
    for mode in ("double_backprop", "forward_over_back"):
        hv = trpo.hessian_vector_product(kl, point, trpo.unflatten(v, point), mode=mode)
        np.testing.assert_allclose(trpo.flatten(hv).numpy(), hessian @ v, rtol=1e-8, atol=1e-10)


def test_finite_difference_hvp_is_exact_on_a_quadratic_and_uses_eps_over_the_parameter_norm():
    rng = np.random.default_rng(4)
    a = rng.normal(size=(5, 5))
    a = a @ a.T
    b = rng.normal(size=5)
    point = {"x": tf.constant(rng.normal(size=3)), "y": tf.constant(rng.normal(size=2))}
    v = {"x": tf.constant(rng.normal(size=3)), "y": tf.constant(rng.normal(size=2))}

    def quadratic(w):
        z = tf.concat([w["x"], w["y"]], 0)
        return 0.5 * tf.tensordot(z, tf.linalg.matvec(tf.constant(a), z), 1) + tf.tensordot(tf.constant(b), z, 1)

    flat_v = trpo.flatten(v).numpy()
    for base_eps in (1e-3, 1.0, 10.0):  # any probe length: the gradient of a quadratic is linear
        hv = trpo.finite_difference_hvp(quadratic, point, v, base_eps=base_eps)
        np.testing.assert_allclose(trpo.flatten(hv).numpy(), a @ flat_v, rtol=1e-9, atol=1e-12)

    # on a quartic the secant is 1/2 (f'(x + e v) - f'(x - e v)) / e with e = base_eps / |x|, by hand
    def quartic(w):
        return tf.reduce_sum(w["x"] ** 4)

    x = point["x"].numpy()
    e = 1.0 / (np.linalg.norm(np.concatenate([x, point["y"].numpy()])) + 1e-8)
    vx = v["x"].numpy()
    expected = (4 * (x + e * vx) ** 3 - 4 * (x - e * vx) ** 3) / (2 * e)
    hv = trpo.finite_difference_hvp(quartic, point, v, base_eps=1.0)
    np.testing.assert_allclose(hv["x"].numpy(), expected, rtol=1e-10)
    np.testing.assert_array_equal(hv["y"].numpy(), 0.0)


def spd_matrix(n, seed, condition=10.0):
    rng = np.random.default_rng(seed)
    q, _ = np.linalg.qr(rng.normal(size=(n, n)))
    return q @ np.diag(np.geomspace(1.0, condition, n)) @ q.T


def test_conjugate_gradient_matches_linalg_solve():
    a = spd_matrix(12, seed=0)
    b = np.random.default_rng(1).normal(size=12)
    x = trpo.conjugate_gradient(lambda v: a @ v, b, iterations=12)
    np.testing.assert_allclose(x, np.linalg.solve(a, b), rtol=1e-8, atol=1e-10)
    # 10 iterations on a 40-dimensional, well-conditioned system: already close
    a = spd_matrix(40, seed=2, condition=3.0)
    b = np.random.default_rng(3).normal(size=40)
    x = trpo.conjugate_gradient(lambda v: a @ v, b, iterations=10)
    exact = np.linalg.solve(a, b)
    assert np.linalg.norm(x - exact) < 1e-3 * np.linalg.norm(exact)


def test_conjugate_gradient_stops_on_non_positive_or_nan_curvature():
    b = np.ones(3)
    assert np.all(trpo.conjugate_gradient(lambda v: -v, b) == 0.0)
    assert np.all(trpo.conjugate_gradient(lambda v: np.full_like(v, np.nan), b) == 0.0)


def test_natural_step_lies_on_the_trust_region_boundary_of_the_quadratic_model():
    a = spd_matrix(6, seed=4)
    g = np.random.default_rng(5).normal(size=6)
    step, expected = trpo.natural_step(g, lambda v: a @ v, max_kl=0.01, cg_iterations=6, damping=0.0)
    assert 0.5 * step @ a @ step == pytest.approx(0.01, rel=1e-8)
    direct = np.linalg.solve(a, g)
    np.testing.assert_allclose(step / np.linalg.norm(step), -direct / np.linalg.norm(direct), atol=1e-8)
    assert expected == pytest.approx(-g @ step) and expected > 0
    zero, e0 = trpo.natural_step(g, lambda v: np.full_like(v, np.nan), max_kl=0.01)
    assert not zero.any() and e0 == 0.0


@pytest.mark.parametrize("case", ["nan_loss_far", "kl_violated_far", "nan_kl_far", "inf_loss_far"])
def test_line_search_returns_only_finite_steps_within_the_trust_region(case):
    max_kl = 0.01

    def evaluate(f):
        loss, kl = -f, 0.02 * f * f  # KL <= max_kl only for f <= 0.707
        if case == "nan_loss_far" and f > 0.3:
            loss = float("nan")
        if case == "inf_loss_far" and f > 0.3:
            loss = -float("inf")
        if case == "nan_kl_far" and f > 0.3:
            kl = float("nan")
        if case == "kl_violated_far" and f > 0.2:
            kl = 1.0
        return loss, kl

    r = trpo.line_search(evaluate, loss_before=0.0, max_kl=max_kl, backtrack_ratio=0.8, max_backtracks=15)
    assert r.accepted and r.fraction <= 0.3 and r.kl <= max_kl and np.isfinite(r.loss)
    assert r.fraction == pytest.approx(0.8 ** r.backtracks)


@pytest.mark.parametrize("evaluate", [
    lambda f: (float("nan"), 0.0),             # never finite
    lambda f: (-1.0, 0.02),                    # always outside the trust region
    lambda f: (1.0, 0.0),                      # never an improvement
    lambda f: (-1.0, float("nan")),            # KL never finite
    lambda f: (-1.0, float("inf")),
])
def test_line_search_rejects_everything_when_no_candidate_is_acceptable(evaluate):
    r = trpo.line_search(evaluate, loss_before=0.0, max_kl=0.01, max_backtracks=10)
    assert not r.accepted and r.fraction == 0.0 and r.kl == 0.0 and r.loss == 0.0


def toy_problem(kl_scale=1.0, break_after=None):
    """Loss = c . theta, KL = 0.5 (theta - theta0)^T A (theta - theta0) * kl_scale (the true KL may be
    larger than the quadratic model that the curvature describes)."""
    a = tf.constant(spd_matrix(5, seed=6))
    c = tf.constant(np.random.default_rng(7).normal(size=5))
    theta0 = {"w": tf.constant(np.random.default_rng(8).normal(size=5))}

    def loss_and_gradient(p):
        return tf.reduce_sum(c * p["w"]), {"w": c}

    def kl_hvp(v):
        return {"w": tf.linalg.matvec(a, v["w"])}

    def loss_and_kl(p):
        d = p["w"] - theta0["w"]
        kl = 0.5 * tf.reduce_sum(d * tf.linalg.matvec(a, d)) * kl_scale
        loss = tf.reduce_sum(c * p["w"])
        if break_after is not None and float(tf.norm(d)) > break_after:
            loss = loss * np.nan
        return loss, kl

    return theta0, loss_and_gradient, kl_hvp, loss_and_kl


@pytest.mark.parametrize("kl_scale, break_after", [(1.0, None), (5.0, None), (1.0, 1e-3), (1e6, None)])
def test_trpo_update_never_applies_a_nan_or_kl_violating_step(kl_scale, break_after):
    theta0, lg, hvp, lk = toy_problem(kl_scale, break_after)
    new, info = trpo.trpo_update(theta0, lg, hvp, lk, max_kl=0.01, cg_iterations=10, damping=0.0)
    loss, kl = (float(x) for x in lk(new))
    assert np.isfinite(loss) and kl <= 0.01 + 1e-12
    if info["accepted"]:
        assert loss < info["loss_before"] and info["kl"] == pytest.approx(kl)
    else:
        np.testing.assert_array_equal(new["w"].numpy(), theta0["w"].numpy())
    if kl_scale == 1.0 and break_after is None:
        assert info["accepted"] and info["step_fraction"] == 1.0 and kl == pytest.approx(0.01, rel=1e-6)


def test_trpo_update_leaves_parameters_alone_when_the_gradient_is_not_finite():
    theta0, _, hvp, lk = toy_problem()
    new, info = trpo.trpo_update(theta0, lambda p: (tf.constant(np.nan, tf.float64), {"w": p["w"]}), hvp, lk)
    assert new is theta0 and not info["accepted"]
