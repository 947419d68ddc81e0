"""Half-cheetah and ant task environments of MAML (paper section 5.3), on gymnasium's MuJoCo v5 envs.

Each class subclasses gymnasium's v5 environment (its XML model, observation, reset noise and
``frame_skip``) and replaces the reward's forward term by the task's:

    forward velocity   v = (x_after - x_before) / dt,   x = qpos[0] (root x), dt = timestep * frame_skip
    goal velocity      forward term = -|v - v*|,        v* ~ U[0, 2] (cheetah), U[0, 3] (ant)
    direction          forward term = d * v,            d = +1 or -1 with probability 1/2

    half-cheetah:  r = forward - ctrl_cost_weight * |a|^2                       (ctrl_cost_weight 0.05)
    ant:           r = forward + healthy_reward * healthy - 0.5 * |a|^2
                       - 5e-4 * |clip(cfrc_ext, -1, 1)|^2                       (gymnasium Ant-v5 terms)

The half-cheetah also takes ``convention="rllab"``, the authors' half-cheetah (rllab's MujocoEnv on the
same model file): one physics step of 0.01 s per action; the observation (qpos[1:], qvel, centre of
mass of the torso's subtree); the forward velocity v is that centre of mass's velocity after the step
(rllab's ``get_body_comvel("torso")``); reset noise N(0, 0.01^2) on qpos and N(0, 0.1^2) on qvel. The
``-v1`` ids use it (rl/envs/__init__.py).

``a`` is the action applied to the simulator. With ``normalized_actions=True`` (default, as the
authors' rllab ``normalize`` wrapper) the policy's action is mapped from [-1, 1] onto the actuator
range and clipped first, so costs use the clipped action; ``False`` uses gymnasium's convention
(cost on the raw action, MuJoCo clamps the control). For these models the range is [-1, 1], so the
two differ only in the cost of out-of-range actions.

The ant terminates when unhealthy (torso height outside [0.2, 1.0] or non-finite state), as both
gymnasium's Ant-v5 and the authors' rllab ant do; pass ``terminate_when_unhealthy=False`` to change
it. Its velocity uses qpos[0] (the torso's free-joint x); gymnasium's own Ant-v5 uses the torso's
``xpos``, which MuJoCo updates before the last physics substep, so it lags by one substep.

The ant takes ``convention="rllab"`` too, the authors' ant (rllab's AntEnv and ant.xml) on
gymnasium's ant.xml, which has the same bodies, joints and actuator torque: one RK4 step of 0.02 s
per action (v5: five of 0.01 s); rllab's initial pose (legs bent) with reset noise N(0, 0.01^2) on
qpos and N(0, 0.1^2) on qvel; the observation (qpos, qvel, clip(cfrc_ext, -1, 1) of every body, the
torso's rotation matrix, the torso subtree's centre of mass); the forward velocity is that centre of
mass's velocity; r = forward (+1 for goal velocity) + 0.05 - 0.005 |a|^2 - 5e-4 |clip(cfrc_ext)|^2,
the survival bonus paid on every step; the same termination.

``info`` carries the reward terms: x_position, x_velocity (= forward velocity), reward_forward,
reward_ctrl (= -control cost) and, for the ant, y_velocity, reward_contact, reward_survive,
is_healthy.
"""

from __future__ import annotations

import warnings

import gymnasium as gym
import mujoco
import numpy as np
from gymnasium import spaces, utils
from gymnasium.envs.mujoco.ant_v5 import AntEnv
from gymnasium.envs.mujoco.half_cheetah_v5 import HalfCheetahEnv

from rl.envs.tasks import ActionMap, DirectionTasks, TaskEnvMixin, VelocityTasks

# Compiled models, one per XML path and process: all env instances of a process share one MjModel
# (each has its own MjData), which makes creating hundreds of envs cheap. Envs never modify it.
_MODELS: dict[tuple, mujoco.MjModel] = {}


def _compile(path: str) -> mujoco.MjModel:
    """Compiles an XML model. MuJoCo >= 3.3 warns that half_cheetah.xml's `settotalmass` attribute
    is deprecated (it still applies it) and by default appends that to ./MUJOCO_LOG.TXT; this drops
    that one message and passes any other warning on as a Python warning."""
    messages = []
    previous = mujoco.get_mju_user_warning()
    mujoco.set_mju_user_warning(messages.append)
    try:
        model = mujoco.MjModel.from_xml_path(path)
    finally:
        mujoco.set_mju_user_warning(previous)
    for message in messages:
        if "settotalmass" not in message:
            warnings.warn(f"MuJoCo: {message}", stacklevel=3)
    return model


class _MujocoTaskMixin(TaskEnvMixin):
    """Shared set-up of the MuJoCo task envs: model cache, action mapping, oracle observation.

    ``step`` and ``_get_obs`` are written out here (instead of calling gymnasium's helpers) to keep
    the Python work per step small; they compute the same quantities as gymnasium's v5 code (or as
    rllab's, with ``convention="rllab"``).
    """

    _timestep = None  # a physics timestep replacing the model file's (the rllab ant's 0.02 s)

    def _initialize_simulation(self):
        key = (self.fullpath, self._timestep)
        model = _MODELS.get(key)
        if model is None:
            model = _compile(self.fullpath)
            if self._timestep is not None:
                model.opt.timestep = self._timestep
            _MODELS[key] = model
        model.vis.global_.offwidth = max(model.vis.global_.offwidth, self.width)
        model.vis.global_.offheight = max(model.vis.global_.offheight, self.height)
        return model, mujoco.MjData(model)

    def _setup_task(self, task, oracle: bool, normalized_actions: bool) -> None:
        self._oracle = bool(oracle)
        low, high = self.model.actuator_ctrlrange.astype(np.float64).T
        self._action_map = ActionMap(low, high, normalized_actions)
        if normalized_actions:
            self.action_space = spaces.Box(-1.0, 1.0, shape=(self.model.nu,), dtype=np.float32)
        base_dim = self.observation_space.shape[0]
        self.observation_space = spaces.Box(
            -np.inf, np.inf, shape=(base_dim + self._task_obs_dim(),), dtype=np.float64)
        # Views into MjData (valid for the env's lifetime) and constants, looked up once.
        self._qpos, self._qvel, self._ctrl = self.data.qpos, self.data.qvel, self.data.ctrl
        self._dt = float(self.dt)
        if task is not None:
            self.set_task(task)

    def _apply_action(self, action) -> np.ndarray:
        """Sets the controls to `action`, mapped and clipped; returns them."""
        if self._task is None:
            raise RuntimeError("Call reset() before step().")
        applied = self._action_map(action)
        self._ctrl[:] = applied
        return applied

    @classmethod
    def step_many(cls, envs: list, actions: np.ndarray, obs_out: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Steps ``envs`` (instances of one class made with the same arguments, tasks may differ) with
        ``actions`` [n, act_dim]: the same physics and the same floating-point operations as calling
        ``step`` on each, with less Python work per env (the sampler's workers use it). Writes the
        observations into ``obs_out`` [n, obs_dim]; returns (rewards [n], terminated [n]); no infos."""
        if any(env._task is None for env in envs):
            raise RuntimeError("Call reset() before step().")
        return cls._step_many(envs, envs[0]._action_map.many(actions), obs_out)

    @classmethod
    def _step_many(cls, envs: list, applied: np.ndarray, obs_out: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """:meth:`step_many` for actions already mapped and clipped."""
        raise NotImplementedError

    def reset(self, *, seed=None, options=None):
        gym.Env.reset(self, seed=seed)  # seeds np_random before a default task is drawn from it
        self.prepare_task(options)
        return super().reset(options=options)

    def _use_convention(self, convention: str) -> None:
        if convention not in CONVENTIONS:
            raise ValueError(f"Unknown {self._model_name} convention {convention!r}; choose one of {CONVENTIONS}.")
        self._rllab = convention == "rllab"

    def _reset_rllab_state(self) -> None:
        """rllab's reset: Gaussian noise of scale 0.01 on the positions and 0.1 on the velocities;
        set_state runs mj_forward, so the state's derived quantities are current."""
        qpos = self.init_qpos + 0.01 * self.np_random.standard_normal(self.model.nq)
        qvel = self.init_qvel + 0.1 * self.np_random.standard_normal(self.model.nv)
        self.set_state(qpos, qvel)


CONVENTIONS = ("gymnasium", "rllab")


class _HalfCheetahTaskEnv(_MujocoTaskMixin, HalfCheetahEnv):
    _model_name = "half-cheetah"

    def __init__(self, task=None, oracle: bool = False, normalized_actions: bool = True,
                 ctrl_cost_weight: float = 0.05, convention: str = "gymnasium", **kwargs):
        self._use_convention(convention)
        if self._rllab:
            kwargs.setdefault("frame_skip", 1)
        HalfCheetahEnv.__init__(self, ctrl_cost_weight=ctrl_cost_weight, **kwargs)
        utils.EzPickle.__init__(self, task=task, oracle=oracle, normalized_actions=normalized_actions,
                                ctrl_cost_weight=ctrl_cost_weight, convention=convention, **kwargs)
        if self._rllab:  # the torso's subtree centre of mass joins the observation
            if self.model.opt.integrator == mujoco.mjtIntegrator.mjINT_RK4:
                raise ValueError("The rllab convention steps with mj_step1/mj_step2, which RK4 does not support.")
            self._torso = self.model.body("torso").id
            self._subtree_com, self._subtree_linvel = self.data.subtree_com, self.data.subtree_linvel
            base_dim = self.observation_space.shape[0] + 3
            self.observation_space = spaces.Box(-np.inf, np.inf, shape=(base_dim,), dtype=np.float64)
        self._setup_task(task, oracle, normalized_actions)

    def _get_obs(self):
        out = np.empty(self.observation_space.shape[0])
        self._write_obs(out)
        return out

    def _write_obs(self, out: np.ndarray) -> None:
        """Writes the observation into ``out``: qpos (without the root x), qvel, for ``rllab`` the
        torso subtree's centre of mass, and the task's features for an oracle."""
        qpos = self._qpos[1:] if self._exclude_current_positions_from_observation else self._qpos
        nq, nv = len(qpos), len(self._qvel)
        out[:nq] = qpos
        out[nq:nq + nv] = self._qvel
        end = nq + nv
        if self._rllab:
            out[end:end + 3] = self._subtree_com[self._torso]
            end += 3
        out[end:] = self._task_obs

    @classmethod
    def _step_many(cls, envs: list, applied: np.ndarray, obs_out: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        n, first = len(envs), envs[0]
        velocity, ctrl_cost = np.empty(n), np.empty(n)
        for i, env in enumerate(envs):
            a = applied[i]
            env._ctrl[:] = a
            velocity[i] = env._advance()
            ctrl_cost[i] = a @ a
            env._write_obs(obs_out[i])
        tasks = np.array([env._task for env in envs], dtype=np.float64)
        rewards = first.family.forward_reward(velocity, tasks) - first._ctrl_cost_weight * ctrl_cost
        return rewards, np.zeros(n, dtype=bool)

    def reset_model(self):
        if not self._rllab:
            return super().reset_model()
        self._reset_rllab_state()
        return self._get_obs()

    def _advance(self) -> float:
        """Runs the physics of one action (controls already set); returns the forward velocity.

        rllab's step (``convention="rllab"``): physics steps, then the forward pass of the new state
        (rllab calls mj_step, then mj_forward); the velocity is the torso subtree's centre-of-mass
        velocity at the new state. mj_step2 + mj_step1 does the same work without repeating the forward
        pass in the next mj_step (valid because every state this env reaches has had its
        position/velocity stage computed: set_state runs mj_forward, and each step ends with mj_step1).
        gymnasium's: frame_skip mj_steps, v = the root's x displacement / dt."""
        if self._rllab:
            for _ in range(self.frame_skip):
                mujoco.mj_step2(self.model, self.data)
                mujoco.mj_step1(self.model, self.data)
            mujoco.mj_subtreeVel(self.model, self.data)
            return float(self._subtree_linvel[self._torso, 0])
        x_before = float(self._qpos[0])
        mujoco.mj_step(self.model, self.data, nstep=self.frame_skip)
        return (float(self._qpos[0]) - x_before) / self._dt

    def step(self, action):
        applied = self._apply_action(action)
        velocity = self._advance()
        x_after = float(self._qpos[0])
        reward_forward = self.family.forward_reward(velocity, self._task)
        ctrl_cost = self._ctrl_cost_weight * float(applied @ applied)
        reward = reward_forward - ctrl_cost
        info = {"x_position": x_after, "x_velocity": velocity,
                "reward_forward": reward_forward, "reward_ctrl": -ctrl_cost}
        return self._get_obs(), reward, False, False, info


class HalfCheetahVelEnv(_HalfCheetahTaskEnv):
    """Half-cheetah goal velocity: v* ~ U[0, 2], r = -|v - v*| - 0.05 |a|^2 (horizon 200)."""
    family = VelocityTasks(0.0, 2.0)


class HalfCheetahDirEnv(_HalfCheetahTaskEnv):
    """Half-cheetah forward/backward: d = +-1, r = d * v - 0.05 |a|^2 (horizon 200)."""
    family = DirectionTasks()


# The authors' ant (rllab's AntEnv on its ant.xml), where it differs from gymnasium's Ant-v5 on
# gymnasium's ant.xml (the same bodies, joints, geoms and actuator strength: rllab's motors take
# +-150 with gear 1, gymnasium's +-1 with gear 150, the same torque for a normalized action).
_RLLAB_ANT_TIMESTEP = 0.02  # rllab's ant.xml: RK4 with a 0.02 s step, one physics step per action
_RLLAB_ANT_INIT_QPOS = np.array([0.0, 0.0, 0.55, 1.0, 0.0, 0.0, 0.0, 0.0, 1.0, 0.0, -1.0, 0.0, -1.0, 0.0, 1.0])
_RLLAB_ANT_REWARD = {"ctrl_cost_weight": 0.005, "contact_cost_weight": 5e-4, "healthy_reward": 0.05}


class _AntTaskEnv(_MujocoTaskMixin, AntEnv):
    _model_name = "ant"

    def __init__(self, task=None, oracle: bool = False, normalized_actions: bool = True,
                 convention: str = "gymnasium", **kwargs):
        self._use_convention(convention)
        if self._rllab:
            self._timestep = _RLLAB_ANT_TIMESTEP
            kwargs = {"frame_skip": 1, **_RLLAB_ANT_REWARD, **kwargs}
        AntEnv.__init__(self, **kwargs)
        utils.EzPickle.__init__(self, task=task, oracle=oracle, normalized_actions=normalized_actions,
                                convention=convention, **kwargs)
        if self._rllab:
            self.init_qpos = _RLLAB_ANT_INIT_QPOS.copy()
            self._torso = self.model.body("torso").id
            self._subtree_com, self._subtree_linvel = self.data.subtree_com, self.data.subtree_linvel
            self._xmat = self.data.xmat
            base_dim = self.model.nq + self.model.nv + 6 * self.model.nbody + 9 + 3
            self.observation_space = spaces.Box(-np.inf, np.inf, shape=(base_dim,), dtype=np.float64)
        self._setup_task(task, oracle, normalized_actions)
        self._cfrc_ext = self.data.cfrc_ext
        self._contact_low, self._contact_high = map(float, self._contact_force_range)

    def _contact_forces(self) -> np.ndarray:
        return np.minimum(np.maximum(self._cfrc_ext, self._contact_low), self._contact_high)

    def _get_obs(self, contact_forces=None):
        out = np.empty(self.observation_space.shape[0])
        self._write_obs(out, self._contact_forces() if contact_forces is None else contact_forces)
        return out

    def _write_obs(self, out: np.ndarray, forces: np.ndarray) -> None:
        """Writes the observation into ``out``. rllab: qpos, qvel, the clipped external forces of every
        body, the torso's rotation matrix and centre of mass; gymnasium's Ant-v5: qpos (without x, y),
        qvel, the clipped external forces of the bodies after the world; then an oracle's task features."""
        if self._rllab:
            parts = (self._qpos, self._qvel, forces.ravel(), self._xmat[self._torso], self._subtree_com[self._torso])
        else:
            parts = (self._qpos[2:] if self._exclude_current_positions_from_observation else self._qpos, self._qvel)
            if self._include_cfrc_ext_in_observation:
                parts += (forces[1:].ravel(),)
        end = 0
        for part in parts:
            out[end:end + len(part)] = part
            end += len(part)
        out[end:] = self._task_obs

    def reset_model(self):
        if not self._rllab:
            return super().reset_model()
        self._reset_rllab_state()
        mujoco.mj_rnePostConstraint(self.model, self.data)  # external forces of the reset state
        return self._get_obs()

    def _advance(self) -> tuple[float, float, float, float]:
        """Runs the physics of one action (controls already set); returns the x and y velocities and
        positions after it.

        rllab (``convention="rllab"``): mj_step, then mj_forward; the velocity is the torso subtree's
        centre-of-mass velocity at the new state. gymnasium's: frame_skip mj_steps, the velocity is the
        root's displacement / dt. Both then fill the external contact forces (cfrc_ext)."""
        qpos = self._qpos
        if self._rllab:
            mujoco.mj_step(self.model, self.data, nstep=self.frame_skip)
            mujoco.mj_forward(self.model, self.data)
            mujoco.mj_rnePostConstraint(self.model, self.data)
            mujoco.mj_subtreeVel(self.model, self.data)
            x_velocity, y_velocity = map(float, self._subtree_linvel[self._torso, :2])
            return x_velocity, y_velocity, float(qpos[0]), float(qpos[1])
        x_before, y_before = float(qpos[0]), float(qpos[1])
        mujoco.mj_step(self.model, self.data, nstep=self.frame_skip)
        mujoco.mj_rnePostConstraint(self.model, self.data)  # fills cfrc_ext (as gymnasium does)
        x_after, y_after = float(qpos[0]), float(qpos[1])
        return (x_after - x_before) / self._dt, (y_after - y_before) / self._dt, x_after, y_after

    def _healthy(self) -> bool:
        z_low, z_high = self._healthy_z_range
        return bool(z_low <= self._qpos[2] <= z_high and np.isfinite(self._qpos).all()
                    and np.isfinite(self._qvel).all())

    def _happy_bonus(self) -> float:
        """rllab's goal-velocity ant adds 1 to its forward reward ("make it happy, not suicidal")."""
        return 1.0 if self._rllab and isinstance(self.family, VelocityTasks) else 0.0

    @classmethod
    def _step_many(cls, envs: list, applied: np.ndarray, obs_out: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        n, first = len(envs), envs[0]
        velocity, ctrl, contact = np.empty(n), np.empty(n), np.empty(n)
        healthy = np.empty(n, dtype=bool)
        for i, env in enumerate(envs):
            a = applied[i]
            env._ctrl[:] = a
            velocity[i] = env._advance()[0]
            ctrl[i] = a @ a
            forces = env._contact_forces()
            contact[i] = np.sum(forces * forces)
            healthy[i] = env._healthy()
            env._write_obs(obs_out[i], forces)
        tasks = np.array([env._task for env in envs], dtype=np.float64)
        forward = first.family.forward_reward(velocity, tasks) + first._happy_bonus()
        survive = np.where(healthy | first._rllab, first._healthy_reward, 0.0)
        rewards = forward + survive - first._ctrl_cost_weight * ctrl - first._contact_cost_weight * contact
        return rewards, ~healthy & bool(first._terminate_when_unhealthy)

    def step(self, action):
        applied = self._apply_action(action)
        x_velocity, y_velocity, x_after, y_after = self._advance()
        reward_forward = self.family.forward_reward(x_velocity, self._task) + self._happy_bonus()
        ctrl_cost = self._ctrl_cost_weight * float(applied @ applied)
        forces = self._contact_forces()
        contact_cost = self._contact_cost_weight * float(np.sum(forces * forces))
        healthy = self._healthy()
        # rllab pays its survival bonus on every step; gymnasium only while healthy
        reward_survive = self._healthy_reward if (healthy or self._rllab) else 0.0
        reward = reward_forward + reward_survive - ctrl_cost - contact_cost
        terminated = (not healthy) and self._terminate_when_unhealthy
        info = {"x_position": x_after, "y_position": y_after,
                "x_velocity": x_velocity, "y_velocity": y_velocity,
                "reward_forward": reward_forward, "reward_ctrl": -ctrl_cost,
                "reward_contact": -contact_cost, "reward_survive": reward_survive,
                "is_healthy": float(healthy)}
        return self._get_obs(forces), reward, terminated, False, info


class AntVelEnv(_AntTaskEnv):
    """Ant goal velocity: v* ~ U[0, 3], forward term -|v - v*| plus Ant-v5's other terms."""
    family = VelocityTasks(0.0, 3.0)


class AntDirEnv(_AntTaskEnv):
    """Ant forward/backward: d = +-1, forward term d * v plus Ant-v5's other terms."""
    family = DirectionTasks()
