"""Tests of discounted returns, the linear feature baseline and GAE against direct computations."""

import numpy as np
import pytest

from rl import baselines


def padded_batch(M=3, R=4, T=12, d=3, seed=0):
    """Random rewards/obs with random episode lengths (some full length); mask 1 while alive."""
    rng = np.random.default_rng(seed)
    lengths = rng.integers(3, T + 1, size=(M, R))
    lengths[0, 0] = T
    mask = (np.arange(T) < lengths[..., None]).astype(np.float64)
    rewards = rng.normal(size=(M, R, T)) * mask
    obs = rng.normal(size=(M, R, T, d)) * 4 * mask[..., None]
    return rewards, obs, mask, lengths


def loop_returns(rewards, length, discount):
    return np.array([sum(discount**k * rewards[t + k] for k in range(length - t))
                     for t in range(length)])


def test_discounted_returns_match_a_per_episode_loop():
    rewards, _, mask, lengths = padded_batch()
    returns = baselines.discounted_returns(rewards, mask, 0.9)
    for m, r in np.ndindex(lengths.shape):
        n = lengths[m, r]
        np.testing.assert_allclose(returns[m, r, :n], loop_returns(rewards[m, r], n, 0.9))
        assert not returns[m, r, n:].any()


def test_features_are_clipped_obs_squares_scaled_time_and_constant():
    obs = np.array([[[0.5, -20.0], [2.0, 3.0], [1.0, 1.0]]])  # [1, T=3, d=2]
    mask = np.array([[1.0, 1.0, 0.0]])
    phi = baselines.linear_features(obs, mask)
    assert phi.shape == (1, 3, 2 * 2 + 4)
    np.testing.assert_allclose(phi[0, 0], [0.5, -10.0, 0.25, 100.0, 0.0, 0.0, 0.0, 1.0])
    np.testing.assert_allclose(phi[0, 1], [2.0, 3.0, 4.0, 9.0, 0.01, 1e-4, 1e-6, 1.0])
    assert not phi[0, 2].any()


def test_baseline_fit_equals_least_squares_per_task():
    rewards, obs, mask, lengths = padded_batch(d=2)
    returns = baselines.discounted_returns(rewards, mask, 0.99)
    reg = 1e-3
    values = baselines.linear_baseline(obs, returns, mask, reg=reg)
    expected = lstsq_baseline(obs, returns, mask, reg)
    for m in range(obs.shape[0]):
        alive = mask[m] > 0
        np.testing.assert_allclose(values[m][alive], expected[m][alive], rtol=1e-6, atol=1e-8)
        assert not values[m][~alive].any()


def lstsq_baseline(obs, returns, mask, reg):
    """The linear feature baseline by numpy lstsq on the alive steps of each task, the ridge term as extra
    rows; values [M, R, T], 0 on dead steps."""
    values = np.zeros(mask.shape)
    for m in range(obs.shape[0]):
        alive = mask[m] > 0
        o = np.clip(obs[m][alive], -10, 10)
        s = np.nonzero(alive)[1][:, None] / 100.0
        phi = np.hstack([o, o**2, s, s**2, s**3, np.ones_like(s)])
        a = np.vstack([phi, np.sqrt(reg) * np.eye(phi.shape[1])])
        b = np.concatenate([returns[m][alive], np.zeros(phi.shape[1])])
        w, *_ = np.linalg.lstsq(a, b, rcond=None)
        values[m][alive] = phi @ w
    return values


def test_baseline_recovers_an_exactly_linear_target():
    _, obs, mask, _ = padded_batch(M=2, R=6, T=20, d=2, seed=1)
    phi = baselines.linear_features(obs, mask)
    w = np.random.default_rng(2).normal(size=(2, phi.shape[-1]))
    target = np.einsum("mrtf,mf->mrt", phi, w)
    values = baselines.linear_baseline(obs, target, mask, reg=1e-10)
    np.testing.assert_allclose(values, target, atol=1e-5)


def test_gae_with_lambda_one_is_returns_minus_baseline():
    rewards, obs, mask, _ = padded_batch()
    values = np.random.default_rng(3).normal(size=mask.shape) * mask
    advantages = baselines.gae(rewards, values, mask, discount=0.99, lam=1.0)
    returns = baselines.discounted_returns(rewards, mask, 0.99)
    np.testing.assert_allclose(advantages, (returns - values) * mask, atol=1e-10)


@pytest.mark.parametrize("lam", [0.0, 0.5, 0.95])
def test_gae_matches_a_per_episode_loop(lam):
    rewards, _, mask, lengths = padded_batch(seed=4)
    values = np.random.default_rng(5).normal(size=mask.shape)  # junk where masked: must be ignored
    advantages = baselines.gae(rewards, values, mask, discount=0.9, lam=lam)
    for m, r in np.ndindex(lengths.shape):
        n = lengths[m, r]
        v = np.append(values[m, r, :n], 0.0)  # no bootstrap after the last step
        deltas = rewards[m, r, :n] + 0.9 * v[1:] - v[:-1]
        expected = loop_returns(deltas, n, 0.9 * lam)
        np.testing.assert_allclose(advantages[m, r, :n], expected, atol=1e-10)
        assert not advantages[m, r, n:].any()


def test_advantages_combines_returns_baseline_and_gae():
    """The paper's recipe (discount 0.99, lambda 1, ridge 1e-5) against loops and lstsq: with lambda = 1, GAE's
    advantage is the discounted return minus the baseline's value."""
    rewards, obs, mask, lengths = padded_batch()
    advantages, returns = baselines.advantages(rewards, obs, mask)
    expected_returns = np.zeros(mask.shape)
    for m, r in np.ndindex(lengths.shape):
        expected_returns[m, r, :lengths[m, r]] = loop_returns(rewards[m, r], lengths[m, r], 0.99)
    np.testing.assert_allclose(returns, expected_returns, atol=1e-10)
    expected = (expected_returns - lstsq_baseline(obs, expected_returns, mask, 1e-5)) * mask
    np.testing.assert_allclose(advantages, expected, rtol=1e-6, atol=1e-8)


def test_previous_task_baseline_follows_rllabs_predict_then_fit_order():
    # Reference: paths as lists, processed task after task; each task's values come from a least-squares
    # fit (numpy lstsq on explicitly built features) of the task before it; the first task uses w0.
    rewards, obs, mask, lengths = padded_batch(M=3, R=4, T=12, d=2, seed=3)
    F = 2 * 2 + 4
    w0 = np.random.default_rng(4).normal(size=F)

    def features(o):  # one path's features, built here from the documented formula
        t = np.arange(len(o))[:, None] / 100.0
        oc = np.clip(o, -10, 10)
        return np.hstack([oc, oc ** 2, t, t ** 2, t ** 3, np.ones_like(t)])

    def fit(paths):
        phi = np.vstack([features(o) for o, _ in paths])
        g = np.concatenate([loop_returns(r, len(r), 0.99) for _, r in paths])
        return np.linalg.solve(phi.T @ phi + 1e-5 * np.eye(F), phi.T @ g)

    w, expected, everything = w0, np.zeros_like(rewards), []
    for m in range(3):
        paths = [(obs[m, r, :lengths[m, r]], rewards[m, r, :lengths[m, r]]) for r in range(4)]
        for r, (o, rew) in enumerate(paths):
            expected[m, r, :len(rew)] = loop_returns(rew, len(rew), 0.99) - features(o) @ w
        w = fit(paths)
        everything += paths
    advantages, _, pooled = baselines.previous_task_advantages(rewards, obs, mask, w0)
    np.testing.assert_allclose(advantages, expected, atol=1e-8)
    np.testing.assert_allclose(pooled, fit(everything), rtol=1e-6, atol=1e-8)
    # without initial weights the first task's baseline is zero: its advantages are its returns
    advantages, returns, _ = baselines.previous_task_advantages(rewards, obs, mask, None)
    np.testing.assert_allclose(advantages[0], returns[0], atol=1e-12)


def test_rollouts_that_are_not_finite_are_named_not_blamed_on_the_fit():
    rng = np.random.default_rng(0)
    obs, returns, mask = rng.normal(size=(2, 3, 5, 2)), rng.normal(size=(2, 3, 5)), np.ones((2, 3, 5))
    mask[1, :, 4] = 0.0
    returns[1, :, 4] = np.nan  # targets of dead steps are not looked at
    assert np.all(np.isfinite(baselines.fit_linear(baselines.linear_features(obs, mask), returns, mask)))
    returns[1, 2, 1] = np.inf
    with pytest.raises(FloatingPointError, match="task 1 hold observations or returns that are not finite"):
        baselines.fit_linear(baselines.linear_features(obs, mask), returns, mask)
