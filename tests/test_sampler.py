"""Tests of the batched sampler against plain single-environment rollouts."""

import numpy as np
import pytest

import rl.envs
from rl.sampler import Episodes, Sampler, rollout_seed

CHEETAH = "maml_tf/HalfCheetahVel-v0"
NAV = "maml_tf/Navigation2D-v0"


def gaussian_policy(act_dim, seed, scale=1.0):
    """A seeded stochastic policy of the sampler's calling convention: [M, R, d] -> [M, R, k]."""
    rng = np.random.default_rng(seed)

    def policy(obs):
        mean = np.tanh(obs[..., :1]) * np.ones(act_dim)
        return mean + scale * rng.normal(size=obs.shape[:-1] + (act_dim,))
    return policy


def reference_rollout(env_id, task, seed, actions, horizon):
    """One episode with a plain env loop, replaying `actions`: (obs, rewards, terminated)."""
    env = rl.envs.make_raw(env_id, task=task)
    ob, _ = env.reset(seed=seed)
    obs, rewards, terminated = [], [], False
    for t in range(horizon):
        obs.append(ob)
        ob, reward, terminated, _, _ = env.step(actions[t])
        rewards.append(reward)
        if terminated:
            break
    return np.array(obs), np.array(rewards), terminated, ob


@pytest.fixture(scope="module")
def cheetah_sampler():
    with Sampler(CHEETAH, num_workers=2, horizon=15, info_keys=("x_velocity",)) as sampler:
        yield sampler


def test_episodes_match_single_env_rollouts_and_worker_count(cheetah_sampler):
    tasks = cheetah_sampler.sample_tasks(3, np.random.default_rng(0))
    policy, returned = gaussian_policy(6, seed=1), []

    def recording_policy(obs):
        returned.append(policy(obs))
        return returned[-1]
    episodes = cheetah_sampler.sample(tasks, recording_policy, rollouts_per_task=2, seed=7)
    returned = np.stack(returned, axis=2)  # [M, R, T, 6], float64 as the envs received them
    np.testing.assert_array_equal(episodes.actions, returned.astype(np.float32))
    assert isinstance(episodes, Episodes)
    assert episodes.obs.shape == (3, 2, 15, 17) and episodes.actions.shape == (3, 2, 15, 6)
    assert episodes.rewards.shape == episodes.mask.shape == (3, 2, 15)
    assert episodes.mask.all() and (episodes.lengths == 15).all() and not episodes.terminated.any()
    for m in range(3):
        for r in range(2):
            obs, rewards, _, final = reference_rollout(
                CHEETAH, tasks[m], rollout_seed(7, m, r), returned[m, r], 15)
            np.testing.assert_allclose(episodes.obs[m, r], obs, rtol=1e-6, atol=1e-6)
            np.testing.assert_allclose(episodes.rewards[m, r], rewards, rtol=1e-6, atol=1e-6)
            np.testing.assert_allclose(episodes.final_obs[m, r], final, rtol=1e-6, atol=1e-6)
    # Same seed, different worker count (here: in-process) -> identical episodes.
    with Sampler(CHEETAH, num_workers=0, horizon=15, info_keys=("x_velocity",)) as local:
        again = local.sample(tasks, gaussian_policy(6, seed=1), rollouts_per_task=2, seed=7)
    for field in ["obs", "actions", "rewards", "mask", "lengths", "final_obs"]:
        np.testing.assert_array_equal(getattr(episodes, field), getattr(again, field))
    np.testing.assert_array_equal(episodes.infos["x_velocity"], again.infos["x_velocity"])


def test_same_seed_same_rollouts_other_seed_other_rollouts(cheetah_sampler):
    tasks = [0.5, 1.5]
    a = cheetah_sampler.sample(tasks, gaussian_policy(6, seed=3), 2, seed=11)
    b = cheetah_sampler.sample(tasks, gaussian_policy(6, seed=3), 2, seed=11)
    c = cheetah_sampler.sample(tasks, gaussian_policy(6, seed=3), 2, seed=12)
    np.testing.assert_array_equal(a.rewards, b.rewards)
    np.testing.assert_array_equal(a.obs, b.obs)
    assert not np.array_equal(a.obs[:, :, 0], c.obs[:, :, 0])  # other reset noise


def test_policy_sees_tasks_on_axis_0_and_may_return_flat_actions(cheetah_sampler):
    seen = []

    def policy(obs):
        seen.append(obs.shape)
        return np.zeros((obs.shape[0] * obs.shape[1], 6), np.float32)
    cheetah_sampler.reserve(12)
    cheetah_sampler.sample([1.0, 2.0, 0.0], policy, rollouts_per_task=4, seed=0)
    assert seen == [(3, 4, 17)] * 15


def test_bad_policy_output_and_bad_tasks_raise_value_error(cheetah_sampler):
    with pytest.raises(ValueError, match="shape"):
        cheetah_sampler.sample([1.0], lambda obs: np.zeros((1, 1, 5)), 1, seed=0)
    with pytest.raises(ValueError, match="outside"):
        cheetah_sampler.sample([1.0, -1.0], gaussian_policy(6, 0), 1, seed=0)
    # The sampler still works after those errors.
    assert cheetah_sampler.sample([1.0], gaussian_policy(6, 0), 1, seed=0).num_steps == 15


def test_terminated_episodes_are_masked_and_padded_with_zeros():
    goals = np.array([[0.3, -0.2], [-0.45, 0.05]])

    def policy(obs):  # heads to the goal until a few steps before it, then random: lengths differ
        direction = np.clip((goals[:, None, :] - obs) / 0.1, -1, 1)
        return direction * np.array([1.0, 0.5, 0.0])[None, :, None]
    with Sampler(NAV, num_workers=0) as sampler:
        episodes = sampler.sample(goals, policy, rollouts_per_task=3, seed=0)
    assert episodes.horizon == 100
    np.testing.assert_array_equal(episodes.lengths, episodes.mask.sum(-1))
    np.testing.assert_array_equal(episodes.terminated[:, :2], True)
    np.testing.assert_array_equal(episodes.terminated[:, 2], False)  # zero action never arrives
    assert (episodes.lengths[:, 2] == 100).all() and (episodes.lengths[:, 0] < 10).all()
    dead = episodes.mask == 0
    assert dead.any()
    assert not episodes.rewards[dead].any() and not episodes.obs[dead].any()
    # Rewards are minus the distance to the goal after each move.
    m, r = 0, 1
    n = episodes.lengths[m, r]
    positions = np.cumsum(np.clip(0.1 * episodes.actions[m, r, :n], -0.1, 0.1), axis=0)
    np.testing.assert_allclose(episodes.rewards[m, r, :n],
                               -np.linalg.norm(positions - goals[m], axis=-1), atol=1e-6)


def test_closed_sampler_refuses_work_and_close_is_idempotent():
    sampler = Sampler(NAV, num_workers=0, horizon=3)
    sampler.close()
    sampler.close()
    with pytest.raises(RuntimeError, match="closed"):
        sampler.sample([[0.1, 0.1]], lambda obs: np.zeros(obs.shape), 1, seed=0)


def test_unknown_env_id_and_info_key_raise_value_error():
    with pytest.raises(ValueError, match="valid ids"):
        Sampler("maml_tf/Nope-v0", num_workers=0)
    with pytest.raises(ValueError, match="info_keys"):
        Sampler(NAV, num_workers=0, info_keys=("nope",))


# --- restart=True: a step budget per task, as the authors' rllab samplers --------------------------

def _nav_policy(goals, speeds):
    """Slot r of task m moves toward goal m at speeds[r] of full speed (0: stands still, never ends)."""
    speeds = np.asarray(speeds, dtype=float)

    def policy(obs):
        return np.clip((goals[:, None, :] - obs) / 0.1, -1, 1) * speeds[None, :, None]
    return policy


@pytest.mark.parametrize("num_workers", [0, 2])
def test_restart_fills_each_slot_with_episodes_until_the_horizon(num_workers):
    goals = np.array([[0.3, -0.2], [-0.45, 0.05]])  # reached in 3 and 5 full-speed steps
    with Sampler("maml_tf/Navigation2D-v1", num_workers=num_workers) as sampler:
        episodes = sampler.sample(goals, _nav_policy(goals, [1.0, 0.0]), rollouts_per_task=2, seed=3, restart=True)
    T = 100
    # Slot 0 of task 0 ends every episode after 3 steps: episodes start at 0, 3, ..., 99 -> 34 episodes,
    # the last one running on past T; task 1's slot 0 after 5 steps: 20 episodes; slot 1 never ends.
    counts = episodes.valid.sum(axis=1)
    np.testing.assert_array_equal(counts, [34 + 1, 20 + 1])
    assert episodes.rollouts_per_task == 35 and not episodes.valid[1, 21:].any()
    # Index 1 is slot 1's only episode (episodes 0..R-1 are the slots' first), the rest slot 0's restarts.
    assert episodes.lengths[0, 1] == T and not episodes.terminated[0, 1]
    np.testing.assert_array_equal(episodes.lengths[0, [0] + list(range(2, 35))], 3)
    np.testing.assert_array_equal(episodes.lengths[1, [0] + list(range(2, 21))], 5)
    assert episodes.terminated[episodes.valid & (episodes.lengths < T)].all()
    # Every task gets at least R x T steps, in whole episodes.
    assert (episodes.lengths.sum(axis=1) >= 2 * T).all()
    np.testing.assert_array_equal(episodes.lengths, episodes.mask.sum(-1))
    # Each restarted episode starts again at the origin and earns minus the distance after each move.
    for m in range(2):
        for j in np.flatnonzero(episodes.valid[m]):
            n = episodes.lengths[m, j]
            np.testing.assert_allclose(episodes.obs[m, j, 0], 0.0)
            positions = np.cumsum(np.clip(0.1 * episodes.actions[m, j, :n], -0.1, 0.1), axis=0)
            np.testing.assert_allclose(episodes.rewards[m, j, :n], -np.linalg.norm(positions - goals[m], axis=-1),
                                       atol=1e-6)
    # Averages count real episodes only.
    returns = episodes.returns()
    expected = [returns[m][episodes.valid[m]].mean() for m in range(2)]
    np.testing.assert_allclose(episodes.task_returns(), expected)
    assert episodes.average_return() == pytest.approx(returns[episodes.valid].mean())
    assert episodes.average_return() != pytest.approx(returns.mean())


def test_restart_changes_nothing_when_no_episode_ends_early(cheetah_sampler):
    tasks = cheetah_sampler.sample_tasks(2, np.random.default_rng(4))
    a = cheetah_sampler.sample(tasks, gaussian_policy(6, seed=2), rollouts_per_task=3, seed=5)
    b = cheetah_sampler.sample(tasks, gaussian_policy(6, seed=2), rollouts_per_task=3, seed=5, restart=True)
    for field in ("obs", "actions", "rewards", "mask", "lengths", "terminated", "final_obs"):
        np.testing.assert_array_equal(getattr(a, field), getattr(b, field))
    np.testing.assert_array_equal(a.infos["x_velocity"], b.infos["x_velocity"])


def test_restarted_episodes_use_their_own_seeds_whatever_the_worker_count():
    goals = np.array([[0.2, 0.1], [-0.1, 0.3], [0.05, -0.05]])

    def noisy(seed):
        rng = np.random.default_rng(seed)
        base = _nav_policy(goals, [1.0, 0.6, 0.3])
        return lambda obs: base(obs) + 0.3 * rng.normal(size=obs.shape)
    runs = []
    for workers in (0, 2):
        with Sampler("maml_tf/Navigation2D-v1", num_workers=workers, horizon=30) as sampler:
            runs.append(sampler.sample(goals, noisy(0), rollouts_per_task=3, seed=11, restart=True))
    np.testing.assert_array_equal(runs[0].lengths, runs[1].lengths)
    np.testing.assert_array_equal(runs[0].rewards, runs[1].rewards)
    assert (runs[0].valid.sum(axis=1) > 3).all()


@pytest.mark.parametrize("env_id,steps", [
    ("maml_tf/HalfCheetahVel-v0", 60), ("maml_tf/HalfCheetahDir-v1", 60), ("maml_tf/HalfCheetahVelOracle-v1", 60),
    ("maml_tf/AntVel-v1", 150), ("maml_tf/AntDir-v1", 150), ("maml_tf/AntVel-v0", 150),
    ("maml_tf/AntDirOracle-v1", 60)])
def test_step_many_is_step_on_each_env_bit_for_bit(env_id, steps):
    """The workers' batched step (used when no infos are recorded) against env.step, on actions
    partly outside [-1, 1]: the same observations, rewards and flags, exactly (for the ant, through
    falls: an env whose episode ended is reset, as the sampler would)."""
    n = 4
    batched = [rl.envs.make_raw(env_id) for _ in range(n)]
    single = [rl.envs.make_raw(env_id) for _ in range(n)]
    act_dim = batched[0].action_space.shape[0]
    rng = np.random.default_rng(3)
    tasks = type(batched[0]).sample_tasks(n, rng)
    for i in range(n):
        for env in (batched[i], single[i]):
            env.set_task(tasks[i])
            env.reset(seed=i)
    ended = 0
    for t in range(steps):
        actions = 1.5 * rng.normal(size=(n, act_dim))
        obs = np.empty((n, batched[0].observation_space.shape[0]))
        rewards, terminated = type(batched[0]).step_many(batched, actions, obs)
        for i in range(n):
            ob, reward, term, _, _ = single[i].step(actions[i])
            np.testing.assert_array_equal(obs[i], ob)
            assert rewards[i] == reward and terminated[i] == term
            if term:
                ended += 1
                for env in (batched[i], single[i]):
                    env.reset(seed=100 + t)
    if env_id.startswith("maml_tf/Ant") and steps > 100:
        assert ended > 0  # falls (and resets) were covered
    with pytest.raises(ValueError, match="shape"):
        type(batched[0]).step_many(batched, np.zeros((n, act_dim - 1)), obs)


@pytest.mark.parametrize("env_id,act_dim,horizon",
                         [("maml_tf/HalfCheetahVel-v1", 6, 20), ("maml_tf/AntVel-v1", 8, 200)])
def test_sampler_fast_path_gives_the_episodes_of_the_per_env_path(env_id, act_dim, horizon):
    """Without info keys the workers use step_many; with them, env.step: identical episodes (for the
    ant, some end early when it falls)."""
    tasks = np.array([0.3, 1.7])
    out = []
    for keys in ((), ("x_velocity",)):
        with Sampler(env_id, num_workers=2, horizon=horizon, info_keys=keys) as sampler:
            out.append(sampler.sample(tasks, gaussian_policy(act_dim, seed=4, scale=2.0), rollouts_per_task=3,
                                      seed=5))
    for field in ["obs", "actions", "rewards", "mask", "lengths", "final_obs"]:
        np.testing.assert_array_equal(getattr(out[0], field), getattr(out[1], field))
    if env_id.startswith("maml_tf/Ant"):
        assert (out[0].lengths < horizon).any()


def test_workers_outlive_a_sigterm_to_the_process_group_and_still_close():
    """``kill -- -pgid`` (Slurm, systemd) signals the workers too: they ignore SIGTERM, so the parent, which
    finishes its iteration and saves first, can still sample; close() then ends them (SIGKILL if need be)."""
    import os
    import signal
    import time
    sampler = Sampler(NAV, num_workers=2, horizon=5)
    try:
        pids = sampler.worker_pids
        tasks = sampler.sample_tasks(2, np.random.default_rng(0))
        for pid in pids:
            os.kill(pid, signal.SIGTERM)
        time.sleep(0.5)
        episodes = sampler.sample(tasks, gaussian_policy(2, seed=0), rollouts_per_task=2, seed=1)
        assert episodes.obs.shape[:2] == (2, 2)
    finally:
        sampler.close()
    for pid in pids:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
