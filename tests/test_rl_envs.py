"""Tests of the RL task environments: rewards recomputed from simulator state, task ranges, errors."""

import numpy as np
import pytest

import rl.envs

LOCOMOTION = ["HalfCheetahVel", "HalfCheetahDir", "AntVel", "AntDir"]


def _qpos(env):
    return env.unwrapped.data.qpos.copy()


@pytest.mark.parametrize("env_id", rl.envs.ENV_IDS)
def test_every_id_makes_an_env_with_the_paper_horizon(env_id):
    env = rl.envs.make(env_id)
    obs, _ = env.reset(seed=0)
    assert env.spec.max_episode_steps == (100 if "Navigation" in env_id else 200)
    assert obs.shape == env.observation_space.shape
    task = env.unwrapped.get_task()
    if "Oracle" in env_id:  # the task parameter is appended to the observation
        np.testing.assert_array_equal(obs[-np.size(task):], np.ravel(task))
        base = rl.envs.make(env_id.replace("Oracle", ""))
        assert obs.shape[0] == base.observation_space.shape[0] + np.size(task)
    env.close()


@pytest.mark.parametrize("name", ["HalfCheetahVel", "HalfCheetahDir"])
def test_half_cheetah_reward_recomputed_from_qpos(name):
    env = rl.envs.make(f"maml_tf/{name}-v0")
    rng = np.random.default_rng(1)
    task = env.unwrapped.sample_tasks(1, rng)[0]
    env.reset(seed=1, options={"task": task})
    dt = env.unwrapped.model.opt.timestep * env.unwrapped.frame_skip
    assert dt == pytest.approx(0.05)
    for _ in range(25):
        action = rng.normal(size=6) * 1.5
        x_before = _qpos(env)[0]
        _, reward, terminated, _, info = env.step(action)
        velocity = (_qpos(env)[0] - x_before) / dt
        applied = np.clip(action, -1.0, 1.0)
        forward = -abs(velocity - task) if name.endswith("Vel") else task * velocity
        assert reward == pytest.approx(forward - 0.05 * np.sum(applied**2), abs=1e-9)
        assert info["x_velocity"] == pytest.approx(velocity, abs=1e-9)
        assert not terminated


@pytest.mark.parametrize("name", ["AntVel", "AntDir"])
def test_ant_reward_recomputed_from_simulator_state(name):
    env = rl.envs.make(f"maml_tf/{name}-v0")
    raw = env.unwrapped
    rng = np.random.default_rng(2)
    task = raw.sample_tasks(1, rng)[0]
    env.reset(seed=2, options={"task": task})
    dt = raw.model.opt.timestep * raw.frame_skip
    ended = False
    for _ in range(200):
        action = rng.normal(size=8) * 1.5
        x_before = _qpos(env)[0]
        _, reward, terminated, _, info = env.step(action)
        qpos, qvel = _qpos(env), raw.data.qvel.copy()
        velocity = (qpos[0] - x_before) / dt
        healthy = np.all(np.isfinite(qpos)) and np.all(np.isfinite(qvel)) and 0.2 <= qpos[2] <= 1.0
        forward = -abs(velocity - task) if name.endswith("Vel") else task * velocity
        ctrl_cost = 0.5 * np.sum(np.clip(action, -1.0, 1.0) ** 2)
        contact_cost = 5e-4 * np.sum(np.clip(raw.data.cfrc_ext, -1.0, 1.0) ** 2)
        expected = forward + 1.0 * healthy - ctrl_cost - contact_cost
        assert reward == pytest.approx(expected, abs=1e-9)
        assert info["reward_contact"] == pytest.approx(-contact_cost, abs=1e-12)
        assert terminated == (not healthy)  # the ant terminates when unhealthy
        if terminated:
            ended = True
            break
    assert ended  # strong random actions make the ant jump above z = 1.0 (checks the True case)


def test_navigation_reward_and_episode_ends_at_the_goal():
    env = rl.envs.make("maml_tf/Navigation2D-v0", task=[0.3, -0.45])
    obs, _ = env.reset(seed=0)
    goal = np.array([0.3, -0.45])
    position = np.zeros(2)
    np.testing.assert_array_equal(obs, position)
    for step in range(100):
        # Drive toward the goal at full speed (policy actions in [-1, 1] are scaled by 0.1).
        action = np.clip((goal - position) / 0.1, -1.0, 1.0)
        obs, reward, terminated, truncated, _ = env.step(action)
        position = position + np.clip(0.1 * action, -0.1, 0.1)
        np.testing.assert_allclose(obs, position, atol=1e-12)
        assert reward == pytest.approx(-np.linalg.norm(position - goal))
        if terminated:
            break
    assert terminated and not truncated
    assert np.linalg.norm(position - goal) < 0.01
    assert step + 1 == 5  # max(|0.3|, |0.45|) / 0.1 rounded up


@pytest.mark.parametrize("env_id,ends", [("maml_tf/Navigation2D-v0", False), ("maml_tf/Navigation2D-v1", True)])
def test_navigation_goal_region_is_a_disc_in_v0_and_the_authors_box_in_v1(env_id, ends):
    # One full-speed step to (0.1, 0) leaves offsets of 0.009 on both axes from the goal: inside the
    # box |dx|, |dy| < 0.01 (the authors' environment), outside the disc |d| < 0.01 (0.0127 away).
    env = rl.envs.make(env_id, task=[0.109, 0.009])
    env.reset(seed=0)
    _, reward, terminated, _, _ = env.step(np.array([1.0, 0.0], dtype=np.float32))
    assert reward == pytest.approx(-np.hypot(0.009, 0.009))
    assert terminated == ends
    with pytest.raises(ValueError, match="goal_region"):
        rl.envs.make_raw("maml_tf/Navigation2D-v0", goal_region="square")


def test_navigation_random_walk_is_truncated_at_100_steps_and_clips_actions():
    env = rl.envs.make("maml_tf/Navigation2D-v0", normalized_actions=False, task=[0.5, 0.5])
    env.reset(seed=0)
    _, _, _, _, info = env.step(np.array([5.0, -5.0], dtype=np.float32))
    assert (info["velocity_x"], info["velocity_y"]) == (0.1, -0.1)
    steps, done = 1, False
    while not done:
        _, _, terminated, truncated, _ = env.step(np.array([-1.0, 1.0], dtype=np.float32))
        steps += 1
        done = terminated or truncated
    assert truncated and steps == 100


@pytest.mark.parametrize("env_id,low,high", [
    ("maml_tf/HalfCheetahVel-v0", 0.0, 2.0), ("maml_tf/AntVel-v0", 0.0, 3.0)])
def test_velocity_tasks_cover_their_range(env_id, low, high):
    tasks = rl.envs.env_class(env_id).sample_tasks(2000, np.random.default_rng(0))
    assert tasks.shape == (2000,)
    assert low <= tasks.min() < low + 0.02 * high and high - 0.02 * high < tasks.max() <= high
    assert np.mean(tasks) == pytest.approx((low + high) / 2, abs=0.05 * high)


@pytest.mark.parametrize("env_id", ["maml_tf/HalfCheetahDir-v0", "maml_tf/AntDir-v0"])
def test_direction_tasks_are_plus_minus_one_equally_likely(env_id):
    tasks = rl.envs.env_class(env_id).sample_tasks(4000, np.random.default_rng(0))
    assert set(np.unique(tasks)) == {-1.0, 1.0}
    assert np.mean(tasks == 1.0) == pytest.approx(0.5, abs=0.03)


def test_navigation_goals_cover_the_square():
    goals = rl.envs.Navigation2DEnv.sample_tasks(4000, np.random.default_rng(0))
    assert goals.shape == (4000, 2)
    assert np.all(np.abs(goals) <= 0.5)
    for corner in [(0.5, 0.5), (-0.5, 0.5), (0.5, -0.5), (-0.5, -0.5)]:
        assert np.min(np.linalg.norm(goals - corner, axis=1)) < 0.05


@pytest.mark.parametrize("n", [1, 7, 40])
def test_stratified_directions_split_every_batch_in_half(n):
    family = rl.envs.env_class("maml_tf/HalfCheetahDir-v1").family
    rng = np.random.default_rng(0)
    batches = np.stack([family.sample(n, rng, stratified=True) for _ in range(2000)])
    forward = (batches == 1.0).sum(axis=1)
    assert set(np.unique(batches)) <= {-1.0, 1.0}
    assert forward.min() >= n // 2 and forward.max() <= n - n // 2  # the odd task goes either way
    assert np.mean(batches == 1.0) == pytest.approx(0.5, abs=0.045)  # still each way with p = 1/2 (4 sd at n = 1)
    if n > 1:  # in random order, not sorted
        assert len({tuple(b) for b in batches}) > 1


@pytest.mark.parametrize("env_id,low,high", [
    ("maml_tf/HalfCheetahVel-v1", 0.0, 2.0), ("maml_tf/AntVel-v1", 0.0, 3.0)])
def test_stratified_goal_velocities_take_one_per_bin_and_stay_uniform(env_id, low, high):
    family = rl.envs.env_class(env_id).family
    rng = np.random.default_rng(1)
    batches = np.stack([family.sample(8, rng, stratified=True) for _ in range(1000)])
    bins = np.floor((batches - low) / (high - low) * 8).astype(int)
    assert np.all(np.sort(bins, axis=1) == np.arange(8))  # exactly one task in each eighth of the range
    assert not np.all(np.diff(batches, axis=1) > 0)        # in random order
    pooled = np.histogram(batches, bins=16, range=(low, high))[0] / batches.size
    assert np.allclose(pooled, 1 / 16, atol=0.01)           # pooled over batches: uniform on [low, high]


def test_stratified_navigation_goals_are_a_latin_hypercube_of_the_square():
    rng = np.random.default_rng(2)
    goals = rl.envs.Navigation2DEnv.family.sample(10, rng, stratified=True)
    assert goals.shape == (10, 2) and np.all(np.abs(goals) <= 0.5)
    for axis in range(2):
        assert sorted(np.floor((goals[:, axis] + 0.5) * 10).astype(int)) == list(range(10))
    pooled = np.concatenate([rl.envs.Navigation2DEnv.sample_tasks(10, rng, stratified=True) for _ in range(500)])
    assert np.mean(pooled, axis=0) == pytest.approx([0.0, 0.0], abs=0.02)
    assert abs(np.corrcoef(pooled.T)[0, 1]) < 0.05  # the two axes are paired at random


@pytest.mark.parametrize("env_id,bad_task", [
    ("maml_tf/HalfCheetahVel-v0", -1.0), ("maml_tf/HalfCheetahVel-v0", 2.5),
    ("maml_tf/HalfCheetahVel-v0", float("nan")), ("maml_tf/HalfCheetahVel-v0", "fast"),
    ("maml_tf/HalfCheetahVel-v0", [1.0, 1.0]), ("maml_tf/AntVel-v0", 3.5),
    ("maml_tf/HalfCheetahDir-v0", 0.5), ("maml_tf/AntDir-v0", 0),
    ("maml_tf/Navigation2D-v0", [0.7, 0.0]), ("maml_tf/Navigation2D-v0", [0.1, 0.1, 0.1]),
    ("maml_tf/Navigation2D-v0", 0.2), ("maml_tf/Navigation2DOracle-v0", [np.inf, 0.0]),
])
def test_a_task_outside_the_family_raises_value_error(env_id, bad_task):
    env = rl.envs.make_raw(env_id)
    with pytest.raises(ValueError) as error:
        env.set_task(bad_task)
    message = str(error.value)
    assert message.endswith(".") and "\n" not in message


def test_unknown_env_id_raises_value_error_listing_the_valid_ids():
    with pytest.raises(ValueError, match="maml_tf/AntDir-v0") as error:
        rl.envs.make("maml_tf/Pendulum-v0")
    assert "Pendulum" in str(error.value)


def test_task_persists_across_resets_and_reset_is_seeded():
    env = rl.envs.make("maml_tf/HalfCheetahVel-v0", task=1.25)
    a, _ = env.reset(seed=5)
    b, _ = env.reset(seed=5)
    c, _ = env.reset(seed=6)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    assert env.unwrapped.get_task() == 1.25


@pytest.mark.parametrize("name", LOCOMOTION)
def test_observation_is_gymnasiums_v5_observation(name):
    from gymnasium.envs.mujoco.ant_v5 import AntEnv
    from gymnasium.envs.mujoco.half_cheetah_v5 import HalfCheetahEnv
    parent = AntEnv if name.startswith("Ant") else HalfCheetahEnv
    env = rl.envs.make_raw(f"maml_tf/{name}-v0")
    obs, _ = env.reset(seed=3)
    rng = np.random.default_rng(3)
    for _ in range(5):
        np.testing.assert_array_equal(obs, parent._get_obs(env))
        obs = env.step(rng.uniform(-1, 1, size=env.action_space.shape))[0]


def _com_velocity_reference(model, data, root: int) -> np.ndarray:
    """Mass-weighted mean of the centre-of-mass velocities of the bodies in `root`'s subtree (each from
    mj_objectVelocity, in world coordinates): the velocity of the subtree's centre of mass."""
    import mujoco
    total, momentum = 0.0, np.zeros(3)
    for body in range(model.nbody):
        b = body
        while b != 0 and b != root:
            b = model.body_parentid[b]
        if b != root:
            continue
        velocity = np.zeros(6)
        mujoco.mj_objectVelocity(model, data, mujoco.mjtObj.mjOBJ_BODY, body, velocity, 0)
        momentum += model.body_mass[body] * velocity[3:]
        total += model.body_mass[body]
    return momentum / total


@pytest.mark.parametrize("name", ["HalfCheetahVel", "HalfCheetahDir"])
def test_half_cheetah_v1_follows_rllab_step_observation_and_reward(name):
    """v1 against a reference stepped the rllab way on a separate MjData (mj_step, then mj_forward):
    same states, observation = (qpos[1:], qvel, torso subtree COM), forward velocity = the subtree's
    COM velocity recomputed body by body, 0.01 s per action."""
    import mujoco
    env = rl.envs.make(f"maml_tf/{name}-v1")
    raw = env.unwrapped
    model = raw.model
    assert raw.dt == pytest.approx(0.01) and raw.frame_skip == 1
    rng = np.random.default_rng(4)
    task = raw.sample_tasks(1, rng)[0]
    obs, _ = env.reset(seed=4, options={"task": task})
    ref = mujoco.MjData(model)
    ref.qpos[:], ref.qvel[:] = raw.data.qpos, raw.data.qvel
    mujoco.mj_forward(model, ref)
    torso = model.body("torso").id
    for t in range(60):
        np.testing.assert_allclose(obs, np.concatenate([ref.qpos[1:], ref.qvel, ref.subtree_com[torso]]),
                                   rtol=0, atol=1e-9)
        action = rng.normal(size=6) * 1.5
        applied = np.clip(action, -1.0, 1.0)
        obs, reward, terminated, _, info = env.step(action)
        ref.ctrl[:] = applied
        mujoco.mj_step(model, ref)
        mujoco.mj_forward(model, ref)
        velocity = _com_velocity_reference(model, ref, torso)[0]
        forward = -abs(velocity - task) if name.endswith("Vel") else task * velocity
        assert info["x_velocity"] == pytest.approx(velocity, abs=1e-9)
        assert reward == pytest.approx(forward - 0.05 * np.sum(applied**2), abs=1e-9)
        assert not terminated


def test_half_cheetah_v1_reset_noise_is_rllabs_gaussian():
    env = rl.envs.make_raw("maml_tf/HalfCheetahVel-v1", task=1.0)
    qpos, qvel = [], []
    for seed in range(200):
        env.reset(seed=seed)
        qpos.append(env.data.qpos - env.init_qpos)
        qvel.append(env.data.qvel - env.init_qvel)
    assert np.std(qpos) == pytest.approx(0.01, rel=0.1)
    assert np.std(qvel) == pytest.approx(0.1, rel=0.1)
    assert np.abs(qpos).max() > 0.02  # Gaussian, not uniform in [-0.01, 0.01]


def test_unknown_half_cheetah_convention_is_one_clear_error():
    with pytest.raises(ValueError, match="Unknown half-cheetah convention 'mujoco'"):
        rl.envs.HalfCheetahVelEnv(convention="mujoco")


@pytest.mark.parametrize("name", ["AntVel", "AntDir"])
def test_ant_v1_follows_rllab_step_observation_and_reward(name):
    """v1 ant against a reference stepped the rllab way on a separate MjData: one RK4 step of 0.02 s,
    then mj_forward; observation (qpos, qvel, clipped cfrc_ext of every body, torso rotation, torso
    subtree COM); reward = forward (+1 for goal velocity) + 0.05 - 0.005 |a|^2 - 5e-4 |clip(cfrc_ext)|^2."""
    import mujoco
    env = rl.envs.make(f"maml_tf/{name}-v1")
    raw = env.unwrapped
    model = raw.model
    assert model.opt.timestep == pytest.approx(0.02) and raw.frame_skip == 1
    assert model.opt.integrator == mujoco.mjtIntegrator.mjINT_RK4
    rng = np.random.default_rng(5)
    task = raw.sample_tasks(1, rng)[0]
    obs, _ = env.reset(seed=5, options={"task": task})
    init = np.array([0.0, 0.0, 0.55, 1.0, 0.0, 0.0, 0.0, 0.0, 1.0, 0.0, -1.0, 0.0, -1.0, 0.0, 1.0])
    assert np.abs(raw.data.qpos - init).max() < 0.06  # rllab's pose plus N(0, 0.01^2) noise
    ref = mujoco.MjData(model)
    ref.qpos[:], ref.qvel[:] = raw.data.qpos, raw.data.qvel
    mujoco.mj_forward(model, ref)
    mujoco.mj_rnePostConstraint(model, ref)
    torso = model.body("torso").id

    def reference_obs():
        return np.concatenate([ref.qpos, ref.qvel, np.clip(ref.cfrc_ext, -1, 1).ravel(),
                               ref.xmat[torso], ref.subtree_com[torso]])

    ended = False
    for _ in range(200):
        np.testing.assert_allclose(obs, reference_obs(), rtol=0, atol=1e-7)
        action = rng.normal(size=8) * 1.5
        applied = np.clip(action, -1.0, 1.0)
        obs, reward, terminated, _, info = env.step(action)
        ref.ctrl[:] = applied
        mujoco.mj_step(model, ref)
        mujoco.mj_forward(model, ref)
        mujoco.mj_rnePostConstraint(model, ref)
        velocity = _com_velocity_reference(model, ref, torso)[0]
        forward = -abs(velocity - task) + 1.0 if name.endswith("Vel") else task * velocity
        contact = 5e-4 * np.sum(np.clip(ref.cfrc_ext, -1, 1) ** 2)
        expected = forward + 0.05 - 0.005 * np.sum(applied**2) - contact
        assert info["x_velocity"] == pytest.approx(velocity, abs=1e-7)
        assert reward == pytest.approx(expected, abs=1e-7)
        healthy = np.isfinite(ref.qpos).all() and 0.2 <= ref.qpos[2] <= 1.0
        assert terminated == (not healthy)
        if terminated:
            ended = True
            break
    assert ended  # strong random actions make the ant jump above z = 1.0 (checks the True case)
