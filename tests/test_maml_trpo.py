"""Tests of MAML-TRPO: the inner policy-gradient step against a hand-computed REINFORCE gradient, the
meta-gradient against finite differences, the curvature against an explicit Hessian, and a few
real iterations on 2D navigation."""

import statistics

import numpy as np
import pytest
import tensorflow as tf

from maml_tf import maml
from maml_tf.functional import get_weights
from rl import maml_trpo, policies, trpo
from rl.sampler import Sampler

LAYOUT = "loop"  # two tasks: unrolled graphs trace faster than vectorized ones


def random_data(M, N, obs_dim, act_dim, seed, dtype=tf.float64, ragged=True):
    rng = np.random.default_rng(seed)
    mask = (rng.uniform(size=(M, N)) < 0.8).astype(float) if ragged else np.ones((M, N))
    mask[:, 0] = 1.0
    return maml_trpo.PolicyData(tf.constant(rng.normal(size=(M, N, obs_dim)), dtype),
                                tf.constant(rng.normal(size=(M, N, act_dim)), dtype),
                                tf.constant(rng.normal(size=(M, N)) * mask, dtype), tf.constant(mask, dtype))


def test_surrogate_and_kl_against_densities_and_numerical_integration():
    """TRPO's two functions from first principles: the likelihood ratio as a quotient of Gaussian densities
    (not of log-likelihoods), and the KL of each action dimension by numerical integration of
    p log(p / q) on a fine grid (the KL of product densities is the sum over dimensions)."""
    model = policies.gaussian_mlp_policy(3, 2, hidden=(4,), seed=0, dtype="float64", name="tiny")
    rng = np.random.default_rng(3)
    weights = {k: v + 0.2 * rng.normal(size=v.shape) for k, v in get_weights(model).items()}
    data = tf.nest.map_structure(lambda x: x[0], random_data(1, 7, 3, 2, seed=4))
    old_mean = tf.constant(rng.normal(size=(7, 2)) * 0.5)
    old_log_std = tf.constant(rng.normal(size=(7, 2)) * 0.3)
    surrogate, kl = maml_trpo.surrogate_and_kl(model, weights, data, maml_trpo.OldPolicy(old_mean, old_log_std))
    mean, log_std = (x.numpy() for x in policies.distribution(model, weights, data.obs))

    def density(a, mu, sigma):  # [steps, dims] -> product over dims
        return np.prod(np.exp(-0.5 * ((a - mu) / sigma) ** 2) / (sigma * np.sqrt(2 * np.pi)), axis=-1)

    a, adv, m = data.actions.numpy(), data.advantages.numpy(), data.mask.numpy()
    ratio = density(a, mean, np.exp(log_std)) / density(a, old_mean.numpy(), np.exp(old_log_std.numpy()))
    np.testing.assert_allclose(surrogate.numpy(), np.sum(m * ratio * adv) / m.sum(), rtol=1e-10)

    kl_steps = np.zeros(7)
    for n in range(7):
        for d in range(2):
            mu0, s0 = old_mean.numpy()[n, d], np.exp(old_log_std.numpy()[n, d])
            mu1, s1 = mean[n, d], np.exp(log_std[n, d])
            x = np.linspace(mu0 - 12 * s0, mu0 + 12 * s0, 200001)
            p = np.exp(-0.5 * ((x - mu0) / s0) ** 2) / (s0 * np.sqrt(2 * np.pi))
            q = np.exp(-0.5 * ((x - mu1) / s1) ** 2) / (s1 * np.sqrt(2 * np.pi))
            kl_steps[n] += np.trapezoid(p * (np.log(p) - np.log(q)), x)
    np.testing.assert_allclose(kl.numpy(), np.sum(m * kl_steps) / m.sum(), rtol=1e-6)
    assert kl.numpy() > 0.01  # the two policies differ: the check has something to measure


def test_inner_step_is_the_hand_computed_reinforce_gradient_of_a_linear_gaussian_policy():
    # one-step problem: a ~ N(W s + b, diag(exp(l))^2), loss -mean_n m_n A_n log pi(a_n | s_n)
    model = policies.gaussian_mlp_policy(3, 2, hidden=(), seed=0, dtype="float64", name="linear")
    w = perturbed = {k: v + 0.1 for k, v in get_weights(model).items()}
    data = random_data(1, 9, 3, 2, seed=1)
    one = tf.nest.map_structure(lambda x: x[0], data)
    s, a, adv, m = (x.numpy() for x in one)
    W, b, l = perturbed["mean/kernel"].numpy(), perturbed["mean/bias"].numpy(), perturbed["log_std/log_std"].numpy()
    mu = s @ W + b
    var = np.exp(2 * l)
    coef = -(m * adv) / m.sum()                     # d loss / d log pi_n
    d_mu = (a - mu) / var                            # d log pi / d mu
    grad = {"mean/kernel": s.T @ (coef[:, None] * d_mu),
            "mean/bias": (coef[:, None] * d_mu).sum(0),
            "log_std/log_std": (coef[:, None] * ((a - mu) ** 2 / var - 1.0)).sum(0)}
    fast = maml.inner_update(maml_trpo.reinforce_loss(model), w, one, lr=0.1)
    for k in w:
        np.testing.assert_allclose(fast[k].numpy(), w[k].numpy() - 0.1 * grad[k], rtol=1e-10, atol=1e-12)


def tiny_setup(first_order=False, inner_steps=1, curvature="gauss_newton"):
    model = policies.gaussian_mlp_policy(2, 2, hidden=(3,), seed=3, dtype="float64", name="tiny")
    config = maml_trpo.Config(inner_lr=0.7, inner_steps=inner_steps, first_order=first_order, curvature=curvature,
                              rollouts_per_task=1, layout=LAYOUT)
    objective = maml_trpo.MetaObjective(model, config)
    w0 = get_weights(model)
    pre, post = random_data(2, 6, 2, 2, seed=4), random_data(2, 6, 2, 2, seed=5)
    fast = objective.adapted(w0, pre)
    # actions of the post-update data drawn near the adapted policy, so the surrogate is informative
    old = objective.old_policy(fast, post)
    return model, objective, w0, pre, post, old, fast


def test_meta_gradient_matches_central_finite_differences():
    model, objective, w0, pre, post, old, _ = tiny_setup()
    point = {k: v + tf.constant(np.random.default_rng(6).normal(scale=0.1, size=v.shape), v.dtype)
             for k, v in w0.items()}
    loss, grad = objective.loss_and_gradient(point, pre, post, old)
    flat0, g = trpo.flatten(point).numpy(), trpo.flatten(grad).numpy()
    eps = 1e-6
    fd = np.zeros_like(flat0)
    for j in range(len(flat0)):
        e = np.zeros_like(flat0)
        e[j] = eps
        plus = objective.loss_and_kl(trpo.unflatten(flat0 + e, point), pre, post, old)[0]
        minus = objective.loss_and_kl(trpo.unflatten(flat0 - e, point), pre, post, old)[0]
        fd[j] = (float(plus) - float(minus)) / (2 * eps)
    np.testing.assert_allclose(g, fd, rtol=1e-6, atol=1e-8)
    # the first-order gradient is a different quantity on this problem (the second-order term matters)
    with tf.GradientTape() as tape:
        tape.watch(point)
        loss_fo = -objective._terms(point, pre, post, old, first_order=True)[0]
    g_fo = tape.gradient(loss_fo, point)
    assert np.linalg.norm(trpo.flatten(g_fo).numpy() - fd) > 1e-3 * np.linalg.norm(fd)


def flat_gradient(function, point):
    """The gradient of ``function`` (of a weight dict shaped like ``point``) as a function of the flat
    parameter vector, by one tape."""
    @tf.function
    def gradient(flat):
        with tf.GradientTape() as tape:
            tape.watch(flat)
            y = function(trpo.unflatten(flat, point))
        return tape.gradient(y, flat)

    return gradient


def explicit_hessian(function, point, eps=1e-5):
    """The Hessian of ``function`` (of a weight dict) at ``point`` by central differences of its
    gradient (one tape: no nested differentiation, unlike the products under test)."""
    flat0 = trpo.flatten(point).numpy()
    gradient = flat_gradient(function, point)
    columns = []
    for j in range(len(flat0)):
        e = np.zeros_like(flat0)
        e[j] = eps
        columns.append((gradient(tf.constant(flat0 + e)) - gradient(tf.constant(flat0 - e))).numpy() / (2 * eps))
    return np.stack(columns, axis=1), gradient(tf.constant(flat0)).numpy()


@pytest.mark.parametrize("first_order, inner_steps, curvatures", [
    (False, 1, ("gauss_newton", "exact")), (True, 1, ("gauss_newton",)), (False, 0, ("gauss_newton",))])
def test_curvature_products_equal_the_hessian_of_the_kl_through_the_inner_step(first_order, inner_steps, curvatures):
    model, gn, w0, pre, post, old, fast = tiny_setup(first_order, inner_steps)
    if first_order:  # theta'_i = theta + a constant shift: the curvature is that of KL(theta + shift_i)
        def kl(w):
            return tf.reduce_mean([maml_trpo.surrogate_and_kl(
                model, {k: w[k] + fast[k][i] - w0[k] for k in w},
                *tf.nest.map_structure(lambda x: x[i], (post, old)))[1]
                for i in range(2)])
    else:
        def kl(w):
            return gn._terms(w, pre, post, old, first_order=False)[1]
    hessian, grad = explicit_hessian(kl, w0)
    assert np.abs(grad).max() < 1e-10  # the KL is at its minimum (0) at the current parameters
    np.testing.assert_allclose(hessian, hessian.T, atol=1e-7)
    v = np.random.default_rng(7).normal(size=hessian.shape[0])
    for curvature in curvatures:
        config = maml_trpo.Config(**{**gn.config.__dict__, "curvature": curvature})
        hv = maml_trpo.MetaObjective(model, config).hvp(w0, trpo.unflatten(v, w0), pre, post, old, fast)
        np.testing.assert_allclose(trpo.flatten(hv).numpy(), hessian @ v, rtol=1e-6, atol=1e-8)


def test_pre_update_kl_is_the_closed_form_gaussian_kl_and_its_curvature_the_hessian():
    """kl_constraint="pre"/"both": the KL of the unadapted policy on the pre-update rollouts against the
    closed form of the KL of two diagonal Gaussians (masked mean per task, mean over tasks), and its
    Hessian-vector product against the explicit Hessian (central differences of one tape's gradient)."""
    model, objective, w0, pre, _, _, _ = tiny_setup()
    old_pre = objective.old_policy(policies.stack_weights(w0, 2), pre)
    rng = np.random.default_rng(8)
    point = {k: v + tf.constant(rng.normal(scale=0.2, size=v.shape), v.dtype) for k, v in w0.items()}
    expected = []
    for i in range(2):
        m0, l0 = (np.broadcast_to(x.numpy(), (6, 2)) for x in policies.distribution(model, w0, pre.obs[i]))
        m1, l1 = (np.broadcast_to(x.numpy(), (6, 2)) for x in policies.distribution(model, point, pre.obs[i]))
        per_step = np.sum(l1 - l0 + (np.exp(2 * l0) + (m0 - m1) ** 2) / (2 * np.exp(2 * l1)) - 0.5, axis=-1)
        mask = pre.mask.numpy()[i]
        expected.append(np.sum(mask * per_step) / mask.sum())
    kl = float(objective.pre_kl(point, pre, old_pre))
    np.testing.assert_allclose(kl, np.mean(expected), rtol=1e-10)
    assert kl > 1e-3 and abs(float(objective.pre_kl(w0, pre, old_pre))) < 1e-12
    hessian, _ = explicit_hessian(lambda w: objective._pre_kl(w, pre, old_pre), w0)
    v = rng.normal(size=hessian.shape[0])
    hv = objective.pre_hvp(w0, trpo.unflatten(tf.constant(v), w0), pre, old_pre)
    np.testing.assert_allclose(trpo.flatten(hv).numpy(), hessian @ v, rtol=1e-5, atol=1e-8)


def test_finite_difference_curvature_is_the_authors_secant_and_tends_to_the_hessian():
    # The meta-KL (through the second-order inner step) and its explicit Hessian, as above.
    model, gn, w0, pre, post, old, fast = tiny_setup()

    def kl(w):
        return gn._terms(w, pre, post, old, first_order=False)[1]

    hessian, _ = explicit_hessian(kl, w0)
    v = np.random.default_rng(8).normal(size=hessian.shape[0])
    flat0 = trpo.flatten(w0).numpy()

    def objective(base_eps):
        config = maml_trpo.Config(**{**gn.config.__dict__, "curvature": "finite_difference", "fd_base_eps": base_eps})
        return maml_trpo.MetaObjective(model, config)

    # a tiny probe gives the Hessian-vector product
    hv = objective(1e-4).hvp(w0, trpo.unflatten(v, w0), pre, post, old, fast)
    np.testing.assert_allclose(trpo.flatten(hv).numpy(), hessian @ v, rtol=1e-5, atol=1e-8)
    # the authors' base_eps = 1: the secant of the gradient over theta +- v / |theta|, rebuilt here from
    # one-tape gradients at the two points (the probe in numpy)
    gradient = flat_gradient(kl, w0)
    eps = 1.0 / (np.linalg.norm(flat0) + 1e-8)
    secant = (gradient(tf.constant(flat0 + eps * v)) - gradient(tf.constant(flat0 - eps * v))).numpy() / (2 * eps)
    hv = objective(1.0).hvp(w0, trpo.unflatten(v, w0), pre, post, old, fast)
    np.testing.assert_allclose(trpo.flatten(hv).numpy(), secant, rtol=1e-8, atol=1e-12)
    # and on this problem that probe is long enough for the secant to differ from the Hessian
    assert np.linalg.norm(secant - hessian @ v) > 1e-3 * np.linalg.norm(hessian @ v)
    # it uses every post-update rollout, as the exact curvature
    assert maml_trpo.curvature_rollouts(objective(1.0).config, 20) == 20


def test_curvature_subsample_keeps_at_least_min_curvature_rollouts():
    """0.2 of the paper's 20 rollouts is 4; fewer rollouts per task keep 4 (or all), not ceil(0.2 R)."""
    config = maml_trpo.Config()
    assert [maml_trpo.curvature_rollouts(config, r) for r in (2, 4, 5, 16, 20, 21, 40)] == [2, 4, 4, 4, 4, 5, 8]
    assert maml_trpo.curvature_rollouts(maml_trpo.Config(min_curvature_rollouts=1), 5) == 1
    assert maml_trpo.curvature_rollouts(maml_trpo.Config(curvature="exact"), 5) == 5
    with pytest.raises(ValueError, match="min_curvature_rollouts must be at least 1"):
        maml_trpo.Config(min_curvature_rollouts=0)


def test_subsampled_curvature_keeps_the_inner_step_on_all_pre_update_rollouts():
    # 2 rollouts x 3 steps per task, hvp_subsample 0.5: the curvature must be the Hessian of the KL on
    # the first post-update rollout, through the inner step on *both* pre-update rollouts (the step
    # that made the adapted policies); an inner step on a subsample would be a different function.
    model, _, w0, pre, post, old, fast = tiny_setup()
    config = maml_trpo.Config(inner_lr=0.7, rollouts_per_task=2, hvp_subsample=0.5, min_curvature_rollouts=1,
                              layout=LAYOUT)
    objective = maml_trpo.MetaObjective(model, config)
    pre_c, post_c, old_c = maml_trpo.curvature_inputs(config, pre, post, old)
    assert pre_c is pre and post_c.obs.shape[1] == 3 and old_c.mean.shape[1] == 3
    hessian, _ = explicit_hessian(lambda w: objective._terms(w, pre, post_c, old_c, first_order=False)[1], w0)
    v = np.random.default_rng(8).normal(size=hessian.shape[0])
    hv = objective.hvp(w0, trpo.unflatten(v, w0), pre_c, post_c, old_c, fast)
    np.testing.assert_allclose(trpo.flatten(hv).numpy(), hessian @ v, rtol=1e-6, atol=1e-8)
    # the old choice (inner step on the first pre-update rollout only) is measurably different here
    pre_sub = maml_trpo.subsample_rollouts(pre, maml_trpo.uniform_lengths(pre, 2), 1)
    hv_sub = objective.hvp(w0, trpo.unflatten(v, w0), pre_sub, post_c, old_c, fast)
    assert np.linalg.norm(trpo.flatten(hv_sub).numpy() - hessian @ v) > 1e-3 * np.linalg.norm(hessian @ v)


def test_xla_curvature_on_padded_steps_equals_the_explicit_hessian():
    """jit_compile=True: the products compiled by XLA, on step axes zero-padded as MAMLTRPO.step pads
    them, against the explicit Hessian of the unpadded KL."""
    model, gn, w0, pre, post, old, fast = tiny_setup()
    hessian, _ = explicit_hessian(lambda w: gn._terms(w, pre, post, old, first_order=False)[1], w0)
    config = maml_trpo.Config(**{**gn.config.__dict__, "jit_compile": True})
    padded = [maml_trpo.pad_steps(x, 11) for x in (pre, post, old)]
    assert padded[0].obs.shape[1] == padded[2].mean.shape[1] == 11 and float(tf.reduce_sum(padded[0].mask)) == \
        float(tf.reduce_sum(pre.mask))
    v = np.random.default_rng(9).normal(size=hessian.shape[0])
    hv = maml_trpo.MetaObjective(model, config).hvp(w0, trpo.unflatten(v, w0), *padded, fast)
    np.testing.assert_allclose(trpo.flatten(hv).numpy(), hessian @ v, rtol=1e-6, atol=1e-8)


def test_bucket_sizes_bound_padding_and_the_number_of_shapes():
    sizes = np.array([maml_trpo.bucket_size(n) for n in range(1, 20000)])
    n = np.arange(1, 20000)
    assert np.all(sizes >= n) and np.all(sizes - n <= n / 32)
    assert len(set(sizes[(n > 2048) & (n <= 4096)])) == 32  # 32 sizes per octave
    assert maml_trpo.bucket_size(800) == 800 and maml_trpo.bucket_size(4000) == 4032


def test_packing_keeps_every_valid_step_in_order_and_the_losses_unchanged():
    rng = np.random.default_rng(3)
    lengths = np.array([[4, 1, 0], [2, 3, 2]])  # task 0: 5 valid steps (and a padding episode), task 1: 7
    mask = (np.arange(4)[None, None, :] < lengths[:, :, None]).astype(np.float64)
    obs, act, adv = rng.normal(size=(2, 3, 4, 3)) * mask[..., None], rng.normal(size=(2, 3, 4, 2)) * mask[..., None], \
        rng.normal(size=(2, 3, 4)) * mask
    p_obs, p_act, p_adv, p_mask = maml_trpo.pack_steps(mask, obs, act, adv)
    assert p_obs.shape == (2, 7, 3) and p_act.shape == (2, 7, 2) and p_adv.shape == (2, 7)
    np.testing.assert_array_equal(p_mask, [[1, 1, 1, 1, 1, 0, 0], [1] * 7])
    np.testing.assert_array_equal(p_obs[0, :5], np.concatenate([obs[0, 0, :4], obs[0, 1, :1]]))
    np.testing.assert_array_equal(p_obs[0, 5:], 0.0)
    np.testing.assert_array_equal(p_act[1], np.concatenate([act[1, 0, :2], act[1, 1, :3], act[1, 2, :2]]))
    np.testing.assert_array_equal(p_adv[1], np.concatenate([adv[1, 0, :2], adv[1, 1, :3], adv[1, 2, :2]]))
    # the inner loss and its gradient are the same on the padded and the packed layout
    model = policies.gaussian_mlp_policy(3, 2, hidden=(4,), seed=0, dtype="float64")
    w = get_weights(model)
    loss = maml_trpo.reinforce_loss(model)
    padded = maml_trpo.PolicyData(*(tf.constant(x.reshape((2, 12) + x.shape[3:])) for x in (obs, act, adv, mask)))
    packed = maml_trpo.PolicyData(*(tf.constant(x) for x in (p_obs, p_act, p_adv, p_mask)))
    for m in range(2):
        one = lambda d: tf.nest.map_structure(lambda x: x[m], d)  # noqa: E731
        with tf.GradientTape(persistent=True) as tape:
            tape.watch(w)
            a, b = loss(w, one(padded)), loss(w, one(packed))
        np.testing.assert_allclose(b.numpy(), a.numpy(), rtol=1e-12)
        ga, gb = tape.gradient(a, w), tape.gradient(b, w)
        for k in w:
            np.testing.assert_allclose(gb[k].numpy(), ga[k].numpy(), rtol=1e-10, atol=1e-14)
    # without padding, packing is a reshape
    full = np.ones((2, 3, 4))
    p_obs, p_mask = maml_trpo.pack_steps(full, obs)
    np.testing.assert_array_equal(p_obs, obs.reshape(2, 12, 3))
    np.testing.assert_array_equal(p_mask, 1.0)


def test_standardize_and_subsample():
    adv = np.array([[1.0, 2.0, 3.0, 100.0], [5.0, 5.0, 7.0, 0.0]])
    mask = np.array([[1.0, 1.0, 1.0, 0.0], [1.0, 1.0, 1.0, 1.0]])
    z = maml_trpo.standardize(adv, mask)
    assert z[0, 3] == 0.0
    for i in range(2):
        valid = z[i][mask[i] > 0]
        assert valid.mean() == pytest.approx(0.0, abs=1e-12) and valid.std() == pytest.approx(1.0, rel=1e-6)
    data = random_data(2, 12, 2, 2, seed=0)  # 4 rollouts x 3 steps
    lengths = maml_trpo.uniform_lengths(data, 4)
    sub = maml_trpo.subsample_rollouts(data, lengths, keep=1)
    assert sub.obs.shape == (2, 3, 2) and sub.mask.shape == (2, 3)
    np.testing.assert_array_equal(sub.mask.numpy(), data.mask.numpy()[:, :3])
    assert maml_trpo.subsample_rollouts(data, lengths, keep=4) is data
    # packed episodes of unequal lengths: the first two episodes are 3 + 1 steps of task 0, 2 + 2 of task 1
    sub, old = maml_trpo.subsample_rollouts((data, data.obs), np.array([[3, 1, 5, 3], [2, 2, 4, 4]]), keep=2)
    assert sub.obs.shape == (2, 4, 2) and old.shape == (2, 4, 2)
    np.testing.assert_array_equal(sub.mask.numpy(), data.mask.numpy()[:, :4])  # all 4 steps of both
    sub = maml_trpo.subsample_rollouts(data, np.array([[3, 1, 5, 3], [1, 2, 4, 5]]), keep=1)
    np.testing.assert_array_equal(sub.mask.numpy(), [[1, 1, 1], [1, 0, 0]] * data.mask.numpy()[:, :3])


@pytest.fixture(scope="module")
def nav_sampler():
    with Sampler("maml_tf/Navigation2D-v0", num_workers=0, horizon=10) as sampler:
        yield sampler


@pytest.mark.parametrize("inner_steps, jit_compile", [(1, False), (0, False), (1, True)])
def test_meta_iterations_on_navigation_respect_the_trust_region(nav_sampler, inner_steps, jit_compile):
    model = policies.gaussian_mlp_policy(2, 2, seed=0, name=f"nav{inner_steps}{jit_compile}")
    config = maml_trpo.Config(rollouts_per_task=4, inner_lr=0.5, inner_steps=inner_steps, hvp_subsample=0.5,
                              min_curvature_rollouts=1,
                              layout=LAYOUT, jit_compile=jit_compile)
    learner = maml_trpo.MAMLTRPO(model, nav_sampler, config)
    tasks = nav_sampler.sample_tasks(2, np.random.default_rng(0))
    for i in range(2 if inner_steps else 1):
        before = trpo.flatten(get_weights(model)).numpy()
        metrics = learner.step(maml_trpo.IterationBatch(tasks, seed=10 + i))
        after = trpo.flatten(get_weights(model)).numpy()
        assert metrics["kl"] <= config.max_kl and np.all(np.isfinite(after))
        assert ("post_return" in metrics) == bool(inner_steps)
        if metrics["step_fraction"] > 0:
            assert metrics["surrogate_after"] > metrics["surrogate_before"] and not np.allclose(before, after)
        else:
            np.testing.assert_array_equal(before, after)
    assert learner.score() == metrics["post_return" if inner_steps else "pre_return"]


@pytest.mark.parametrize("kl_constraint", ["pre", "both"])
def test_a_pre_update_trust_region_bounds_the_pre_update_policy(nav_sampler, kl_constraint):
    """With kl_constraint pre or both, every accepted step keeps the KL of the unadapted policy on the
    pre-update rollouts within max_kl (both: the post-update one too), and the logged pre_kl is that KL
    recomputed from the same rollouts."""
    model = policies.gaussian_mlp_policy(2, 2, seed=0, name=f"navkl{kl_constraint}")
    config = maml_trpo.Config(rollouts_per_task=4, inner_lr=0.5, hvp_subsample=0.5, min_curvature_rollouts=1,
                              max_kl=0.002, kl_constraint=kl_constraint, layout=LAYOUT)
    learner = maml_trpo.MAMLTRPO(model, nav_sampler, config)
    tasks = nav_sampler.sample_tasks(2, np.random.default_rng(0))
    accepted = 0
    for i in range(3):
        before = get_weights(model)
        batch = maml_trpo.IterationBatch(tasks, seed=20 + i)
        metrics = learner.step(batch)
        # the pre-update KL recomputed from the rollouts the step used (same seed: the same episodes)
        pre_eps = nav_sampler.sample(tasks, learner.policy_fn(before, np.random.default_rng([batch.seed, 0])),
                                     config.rollouts_per_task, seed=batch.seed, restart=True)
        pre = learner._data(pre_eps)
        old_pre = learner.objective.old_policy(policies.stack_weights(before, len(tasks)), pre)
        pre_kl = float(learner.objective.pre_kl(get_weights(model), pre, old_pre))
        np.testing.assert_allclose(pre_kl, metrics["pre_kl"], rtol=1e-5, atol=1e-9)
        assert pre_kl <= config.max_kl and metrics["kl"] <= config.max_kl
        accepted += metrics["step_fraction"] > 0
    assert accepted >= 1  # the check had steps to look at


def test_adaptation_returns_shape_and_determinism(nav_sampler):
    model = policies.gaussian_mlp_policy(2, 2, seed=1, name="nav_eval")
    tasks = nav_sampler.sample_tasks(3, np.random.default_rng(1))
    kwargs = dict(steps=2, inner_lr=[0.5, 0.25], rollouts_per_task=3, seed=5)
    r1 = maml_trpo.adaptation_returns(model, nav_sampler, tasks, **kwargs)
    r2 = maml_trpo.adaptation_returns(model, nav_sampler, tasks, **kwargs)
    assert r1.shape == (3, 3) and np.all(r1 < 0)
    np.testing.assert_allclose(r1, r2, rtol=1e-5)


@pytest.mark.parametrize("per_task", [False, True])
def test_policy_fn_acts_mean_plus_std_times_the_rngs_noise(per_task):
    """The sampler's policy function against the distribution computed directly, with per-task weights
    differing by task, over two calls (the compiled graph is reused, the noise is fresh)."""
    model = policies.gaussian_mlp_policy(3, 2, hidden=(4,), seed=1, name=f"act{per_task}")
    w = get_weights(model)
    weights = {k: tf.stack([v, v + 0.3]) for k, v in w.items()} if per_task else w
    act = policies.make_policy_fn(model)(weights, np.random.default_rng(5), per_task=per_task)
    noise_rng, obs_rng = np.random.default_rng(5), np.random.default_rng(6)
    for _ in range(2):
        obs = obs_rng.normal(size=(2, 3, 3)).astype(np.float32)
        noise = noise_rng.standard_normal((2, 3, 2)).astype(np.float32)
        expected = []
        for m in range(2):
            wm = {k: v[m] for k, v in weights.items()} if per_task else w
            mean, log_std = policies.distribution(model, wm, tf.constant(obs[m]))
            expected.append((mean + tf.exp(log_std) * noise[m]).numpy())
        np.testing.assert_allclose(act(obs), np.stack(expected), rtol=1e-5, atol=1e-6)


def test_config_refuses_an_unknown_kl_constraint():
    with pytest.raises(ValueError, match="kl_constraint must be one of"):
        maml_trpo.Config(kl_constraint="pre_and_post")


def test_config_refuses_the_batched_layout():
    """"batched" folds conv nets into grouped convolutions; for a policy it would silently mean "vectorized"."""
    with pytest.raises(ValueError, match=r"layout must be one of \('vectorized', 'loop'\), got 'batched'"):
        maml_trpo.Config(layout="batched")
    with pytest.raises(ValueError, match="cg_iterations must be at least 1, got 0"):
        maml_trpo.Config(cg_iterations=0)  # (the flag refused it; the Python API ran TRPO without a CG step)


@pytest.mark.parametrize("activation, hidden", [("relu", lambda x: np.maximum(x, 0.0)), ("tanh", np.tanh)])
def test_policy_mean_is_the_mlp_with_the_chosen_hidden_activation(activation, hidden):
    # the mean by hand from the layer weights: x -> act(x W0 + b0) -> act(. W1 + b1) -> . W2 + b2
    model = policies.gaussian_mlp_policy(3, 2, hidden=(5, 4), seed=0, activation=activation)
    w = {k: v.numpy() for k, v in get_weights(model).items()}
    kernels = sorted(k for k in w if k.endswith("kernel"))
    biases = sorted(k for k in w if k.endswith("bias"))
    x = np.random.default_rng(0).normal(size=(6, 3)).astype(np.float32)
    h = x
    for i, (kk, bb) in enumerate(zip(kernels, biases)):
        h = h @ w[kk] + w[bb]
        if i < len(kernels) - 1:
            h = hidden(h)
    mean, log_std = model(x)
    np.testing.assert_allclose(mean.numpy(), h, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(log_std.numpy(), 0.0, atol=1e-7)  # initial std 1.0


def per_step_log_likelihood_gradients(model, w, data):
    """[N, P] gradients of log pi(a_n | s_n) of each step, one tape per step (no surrogate involved)."""
    rows = []
    for n in range(data.obs.shape[0]):
        with tf.GradientTape() as tape:
            tape.watch(w)
            mean, log_std = policies.distribution(model, w, data.obs[n:n + 1])
            logp = policies.log_likelihood(data.actions[n:n + 1], mean, log_std)[0]
        rows.append(trpo.flatten(tape.gradient(logp, w)).numpy())
    return np.stack(rows)


def autodiff_hessian(loss, w, data):
    """(Hessian, gradient) of ``loss(w, data)`` in the flat parameters (``trpo.flatten`` order) by nested
    tapes, as the meta-gradient differentiates the inner step (differences of the gradient would not do
    for the lvc loss: as a function of theta its gradient is the REINFORCE one)."""
    flat = tf.constant(trpo.flatten(w).numpy())
    with tf.GradientTape() as outer:
        outer.watch(flat)
        with tf.GradientTape() as inner:
            inner.watch(flat)
            value = loss(trpo.unflatten(flat, w), data)
        grad = inner.gradient(value, flat)
    return outer.jacobian(grad, flat).numpy(), grad.numpy()


def test_lvc_inner_loss_has_the_reinforce_gradient_and_the_score_function_curvature():
    """lvc's gradient is the REINFORCE gradient, and its Hessian (by automatic differentiation) exceeds
    REINFORCE's by exactly -sum_n c_n g_n g_n^T (c_n = m_n A_n / sum m, g_n = grad log pi_n from per-step
    tapes)."""
    model = policies.gaussian_mlp_policy(3, 2, hidden=(4,), seed=0, dtype="float64", name="lvc")
    rng = np.random.default_rng(11)
    w = {k: v + 0.2 * rng.normal(size=v.shape) for k, v in get_weights(model).items()}
    one = tf.nest.map_structure(lambda x: x[0], random_data(1, 8, 3, 2, seed=12))
    (hessian_r, grad_r), (hessian_l, grad_l) = (autodiff_hessian(maml_trpo.inner_loss(model, surrogate), w, one)
                                                for surrogate in ("reinforce", "lvc"))
    np.testing.assert_allclose(grad_l, grad_r, rtol=1e-10, atol=1e-12)
    g = per_step_log_likelihood_gradients(model, w, one)
    m, adv = one.mask.numpy(), one.advantages.numpy()
    c = m * adv / m.sum()
    extra = -np.einsum("n,ni,nj->ij", c, g, g)
    assert np.abs(extra).max() > 0.1  # the term is not negligible here
    np.testing.assert_allclose(hessian_l - hessian_r, extra, rtol=1e-6, atol=1e-7)


def test_lvc_curvature_estimates_the_hessian_of_the_expected_return():
    """A one-step bandit a ~ N(b, exp(l)^2) (zero observation) with return A(a) = a^2: the expected return
    is b^2 + exp(2 l), whose Hessian in (b, l) is diag(2, 4 exp(2 l)). Over many samples the lvc loss's
    Hessian tends to minus it; the REINFORCE loss's does not (it lacks the score-function term)."""
    model = policies.gaussian_mlp_policy(1, 1, hidden=(), seed=0, dtype="float64", name="bandit")
    b, l = 0.5, np.log(0.8)
    w = {"mean/kernel": tf.constant([[0.0]], tf.float64), "mean/bias": tf.constant([b], tf.float64),
         "log_std/log_std": tf.constant([l], tf.float64)}
    assert set(w) == set(get_weights(model))
    n = 200_000  # the actions: normal quantiles at (k + 1/2) / n, a sample with little Monte-Carlo error
    z = np.array([statistics.NormalDist().inv_cdf((k + 0.5) / n) for k in range(n)])
    a = b + np.exp(l) * z
    data = maml_trpo.PolicyData(tf.zeros((n, 1), tf.float64), tf.constant(a[:, None]), tf.constant(a ** 2),
                                tf.ones(n, tf.float64))
    expected = np.diag([2.0, 4.0 * np.exp(2 * l)])
    # every weight here is a scalar, so a key's position in w is its index in the flat parameters
    bl = [list(w).index("mean/bias"), list(w).index("log_std/log_std")]  # (the kernel multiplies a zero observation)
    found = {surrogate: -autodiff_hessian(maml_trpo.inner_loss(model, surrogate), w, data)[0][np.ix_(bl, bl)]
             for surrogate in ("reinforce", "lvc")}
    np.testing.assert_allclose(found["lvc"], expected, rtol=0.01, atol=0.01)
    assert np.abs(found["reinforce"] - expected).max() > 0.5


def test_lvc_meta_gradient_adds_the_score_function_term_through_the_inner_step():
    """With inner_surrogate="lvc" the meta-gradient is the REINFORCE one plus
    -alpha/M sum_i sum_n c_in g_in (g_in . grad_theta' S_i) (the extra Jacobian term of each task), and the
    curvature and the values are unchanged."""
    model, reinforce, w0, pre, post, old, fast = tiny_setup()
    lvc = maml_trpo.MetaObjective(model, maml_trpo.Config(**{**reinforce.config.__dict__, "inner_surrogate": "lvc"}))
    point = {k: v + tf.constant(np.random.default_rng(6).normal(scale=0.1, size=v.shape), v.dtype)
             for k, v in w0.items()}
    loss_r, grad_r = reinforce.loss_and_gradient(point, pre, post, old)
    loss_l, grad_l = lvc.loss_and_gradient(point, pre, post, old)
    np.testing.assert_allclose(loss_l.numpy(), loss_r.numpy(), rtol=1e-12)
    alpha, M = reinforce.config.inner_lr, 2
    correction = 0.0
    adapted = reinforce.adapted(point, pre)
    for i in range(M):
        p, q, o = tf.nest.map_structure(lambda x: x[i], (pre, post, old))
        w_fast = {k: v[i] for k, v in adapted.items()}
        with tf.GradientTape() as tape:
            tape.watch(w_fast)
            surrogate = maml_trpo.surrogate_and_kl(model, w_fast, q, o)[0]
        ds = trpo.flatten(tape.gradient(surrogate, w_fast)).numpy()
        g = per_step_log_likelihood_gradients(model, point, p)
        c = p.mask.numpy() * p.advantages.numpy() / p.mask.numpy().sum()
        correction = correction - alpha / M * np.einsum("n,ni,n->i", c, g, g @ ds)
    diff = trpo.flatten(grad_l).numpy() - trpo.flatten(grad_r).numpy()
    assert np.linalg.norm(correction) > 1e-3 * np.linalg.norm(trpo.flatten(grad_r).numpy())
    np.testing.assert_allclose(diff, correction, rtol=1e-7, atol=1e-10)
    v = trpo.unflatten(np.random.default_rng(8).normal(size=diff.shape), w0)
    np.testing.assert_allclose(trpo.flatten(lvc.hvp(w0, v, pre, post, old, fast)).numpy(),
                               trpo.flatten(reinforce.hvp(w0, v, pre, post, old, fast)).numpy(), rtol=1e-12)


def test_config_refuses_an_unknown_inner_surrogate():
    with pytest.raises(ValueError, match="inner_surrogate must be one of"):
        maml_trpo.Config(inner_surrogate="dice")
