"""2D navigation (MAML paper section 5.3): a point moves toward a goal in the plane.

State: the point's position p (starts at the origin). Task: goal g ~ U[-0.5, 0.5]^2.
Step: p <- p + clip(u, -0.1, 0.1), reward = -|p - g| after the move, terminated when p is within 0.01
of g: ``goal_region="disc"`` (default, ``maml_tf/Navigation2D-v0``) ends it on |p - g| < 0.01, the
paper's words; ``goal_region="box"`` (``-v1``, the training preset) on |p_x - g_x| < 0.01 and
|p_y - g_y| < 0.01, as the authors' environment (their maml_examples/point_env_randgoal.py), whose
returns the paper reports. The disc has 21% less area, so a jittering policy ends its episode later:
on a policy trained on the disc, the box alone raised the return after 2 and 3 test steps by about
0.4 (README). The time limit
(100 steps) comes from the registered spec (gymnasium's TimeLimit) or the sampler.

With ``normalized_actions=True`` (default, as the authors' rllab ``normalize`` wrapper) the action
space is [-1, 1]^2 and u = 0.1 * clip(a, -1, 1); with False the action space is [-0.1, 0.1]^2 and
u = clip(a, -0.1, 0.1). Observation: p (float64), with g appended for the oracle.
``info``: position_x, position_y, distance (after the move), velocity_x, velocity_y (= u).
"""

from __future__ import annotations

import gymnasium as gym
import numpy as np
from gymnasium import spaces, utils

from rl.envs.tasks import ActionMap, GoalTasks2D, TaskEnvMixin


GOAL_REGIONS = ("box", "disc")


class Navigation2DEnv(TaskEnvMixin, gym.Env, utils.EzPickle):
    """Point-mass 2D navigation to a goal in [-0.5, 0.5]^2 (horizon 100)."""

    metadata = {"render_modes": []}
    family = GoalTasks2D(-0.5, 0.5)

    def __init__(self, task=None, oracle: bool = False, normalized_actions: bool = True,
                 max_speed: float = 0.1, goal_radius: float = 0.01, goal_region: str = "disc"):
        utils.EzPickle.__init__(self, task=task, oracle=oracle, normalized_actions=normalized_actions,
                                max_speed=max_speed, goal_radius=goal_radius, goal_region=goal_region)
        if goal_region not in GOAL_REGIONS:
            raise ValueError(f"goal_region must be one of {GOAL_REGIONS}, got {goal_region!r}.")
        self._box = goal_region == "box"
        self._oracle = bool(oracle)
        self._normalized = bool(normalized_actions)
        self._goal_radius = float(goal_radius)
        self._action_map = ActionMap(np.full(2, -max_speed), np.full(2, max_speed), normalized_actions)
        bound = 1.0 if self._normalized else float(max_speed)
        self.action_space = spaces.Box(-bound, bound, shape=(2,), dtype=np.float32)
        self.observation_space = spaces.Box(
            -np.inf, np.inf, shape=(2 + self._task_obs_dim(),), dtype=np.float64)
        self._position = np.zeros(2)
        if task is not None:
            self.set_task(task)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.prepare_task(options)
        self._position = np.zeros(2)
        return np.concatenate((self._position, self._task_obs)), {}

    def step(self, action):
        if self._task is None:
            raise RuntimeError("Call reset() before step().")
        move = self._action_map(action)
        self._position = self._position + move
        distance = float(np.linalg.norm(self._position - self._task))
        info = {"position_x": self._position[0], "position_y": self._position[1],
                "distance": distance, "velocity_x": move[0], "velocity_y": move[1]}
        obs = np.concatenate((self._position, self._task_obs))
        if self._box:
            arrived = bool(np.all(np.abs(self._position - self._task) < self._goal_radius))
        else:
            arrived = distance < self._goal_radius
        return obs, -distance, arrived, False, info
