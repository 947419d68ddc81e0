"""MAML's RL task environments, registered with gymnasium when this package is imported.

    ids                                   class               task parameter        horizon
    maml_tf/Navigation2D-v0               Navigation2DEnv     goal in [-0.5, 0.5]^2  100
    maml_tf/HalfCheetahVel-v0             HalfCheetahVelEnv   velocity in [0, 2]     200
    maml_tf/HalfCheetahDir-v0             HalfCheetahDirEnv   direction +1 / -1      200
    maml_tf/AntVel-v0                     AntVelEnv           velocity in [0, 3]     200
    maml_tf/AntDir-v0                     AntDirEnv           direction +1 / -1      200
    maml_tf/Navigation2D-v1               Navigation2DEnv     goal in [-0.5, 0.5]^2  100
    maml_tf/HalfCheetahVel-v1             HalfCheetahVelEnv   velocity in [0, 2]     200
    maml_tf/HalfCheetahDir-v1             HalfCheetahDirEnv   direction +1 / -1      200
    maml_tf/AntVel-v1                     AntVelEnv           velocity in [0, 3]     200
    maml_tf/AntDir-v1                     AntDirEnv           direction +1 / -1      200

The ``-v1`` ids follow the authors' (rllab) environments, which the training presets use. For
navigation that is the goal region: a box of half-width 0.01 around the goal ends the episode
(``goal_region="box"``), where ``-v0`` uses a disc of radius 0.01 (rl/envs/navigation.py). For the
locomotion tasks it is ``convention="rllab"`` (details in rl/envs/locomotion.py): one physics step per action (0.01 s for
the half-cheetah, whose gymnasium v5 takes five; 0.02 s for the ant, five of 0.01 s in v5), rllab's
observations (with the torso subtree's centre of mass), that centre of mass's velocity as the
forward velocity, Gaussian reset noise, and for the ant rllab's initial pose and reward constants.
The ``-v0`` ids keep gymnasium's v5 conventions (``convention="gymnasium"``).

Each has an oracle variant (``...Oracle-v0``, e.g. ``maml_tf/AntVelOracle-v0``) whose observation
ends with the task parameter. Usage::

    env = rl.envs.make("maml_tf/HalfCheetahVel-v0")          # gymnasium.make, with its TimeLimit
    tasks = env.unwrapped.sample_tasks(40, np.random.default_rng(0))
    env.unwrapped.set_task(tasks[0])                           # or env.reset(options={"task": ...})
"""

from __future__ import annotations

import gymnasium as gym

from rl.envs.locomotion import AntDirEnv, AntVelEnv, HalfCheetahDirEnv, HalfCheetahVelEnv
from rl.envs.navigation import Navigation2DEnv
from rl.envs.tasks import DirectionTasks, GoalTasks2D, VelocityTasks

_FAMILIES = {  # name: (class, horizon)
    "Navigation2D": (Navigation2DEnv, 100),
    "HalfCheetahVel": (HalfCheetahVelEnv, 200),
    "HalfCheetahDir": (HalfCheetahDirEnv, 200),
    "AntVel": (AntVelEnv, 200),
    "AntDir": (AntDirEnv, 200),
}

# env id -> (class, horizon, constructor kwargs)
_SPECS = {}
for _name, (_cls, _horizon) in _FAMILIES.items():
    _SPECS[f"maml_tf/{_name}-v0"] = (_cls, _horizon, {})
    _SPECS[f"maml_tf/{_name}Oracle-v0"] = (_cls, _horizon, {"oracle": True})
_SPECS["maml_tf/Navigation2D-v1"] = (Navigation2DEnv, 100, {"goal_region": "box"})
_SPECS["maml_tf/Navigation2DOracle-v1"] = (Navigation2DEnv, 100, {"goal_region": "box", "oracle": True})
for _name in ("HalfCheetahVel", "HalfCheetahDir", "AntVel", "AntDir"):
    _cls, _horizon = _FAMILIES[_name]
    _SPECS[f"maml_tf/{_name}-v1"] = (_cls, _horizon, {"convention": "rllab"})
    _SPECS[f"maml_tf/{_name}Oracle-v1"] = (_cls, _horizon, {"convention": "rllab", "oracle": True})

ENV_IDS: tuple[str, ...] = tuple(_SPECS)


def _register() -> None:
    for env_id, (cls, horizon, kwargs) in _SPECS.items():
        if env_id not in gym.registry:
            gym.register(id=env_id, entry_point=f"{cls.__module__}:{cls.__name__}",
                         max_episode_steps=horizon, kwargs=dict(kwargs))


_register()


def _spec(env_id: str):
    if env_id not in _SPECS:
        raise ValueError(f"Unknown environment id {env_id!r}; valid ids are: {', '.join(ENV_IDS)}.")
    return _SPECS[env_id]


def env_class(env_id: str) -> type:
    """The environment class behind `env_id` (it has ``sample_tasks(n, rng)`` as a classmethod)."""
    return _spec(env_id)[0]


def horizon(env_id: str) -> int:
    """The episode length (time limit) of `env_id`."""
    return _spec(env_id)[1]


def make(env_id: str, task=None, **kwargs) -> gym.Env:
    """``gymnasium.make(env_id, **kwargs)`` (with the time limit), its task set to `task` if given."""
    _spec(env_id)
    env = gym.make(env_id, **kwargs)
    if task is not None:
        env.unwrapped.set_task(task)
    return env


def make_raw(env_id: str, task=None, **kwargs) -> gym.Env:
    """The bare environment object, without gymnasium's wrappers (no time limit): for samplers."""
    cls, _, spec_kwargs = _spec(env_id)
    return cls(task=task, **{**spec_kwargs, **kwargs})


__all__ = [
    "ENV_IDS", "make", "make_raw", "env_class", "horizon",
    "Navigation2DEnv", "HalfCheetahVelEnv", "HalfCheetahDirEnv", "AntVelEnv", "AntDirEnv",
    "VelocityTasks", "DirectionTasks", "GoalTasks2D",
]
