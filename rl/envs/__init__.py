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

The ``-v1`` ids follow the authors' (rllab) environments, which the training presets use. For navigation that
is the goal region: a box of half-width 0.01 around the goal ends the episode (``goal_region="box"``), where
``-v0`` uses a disc of radius 0.01 (rl/envs/navigation.py). For the locomotion tasks it is
``convention="rllab"`` (details in rl/envs/locomotion.py): one physics step per action (0.01 s for the
half-cheetah, whose gymnasium v5 takes five; 0.02 s for the ant, five of 0.01 s in v5), rllab's observations
(with the torso subtree's centre of mass), that centre of mass's velocity as the forward velocity, Gaussian
reset noise, and for the ant rllab's initial pose and reward constants. The ``-v0`` ids keep gymnasium's v5
conventions (``convention="gymnasium"``).

Each has an oracle variant (``...Oracle-v1``, e.g. ``maml_tf/AntVelOracle-v1``) whose observation
ends with the task parameter. Usage::

    env = rl.envs.make("maml_tf/HalfCheetahVel-v1")          # gymnasium.make, with its TimeLimit
    tasks = env.unwrapped.sample_tasks(40, np.random.default_rng(0))
    env.unwrapped.set_task(tasks[0])                           # or env.reset(options={"task": ...})

Your own task family: ``register(env_id, env_class, horizon, **kwargs)`` adds it, for the sampler, the
learner and ``make``. What the class must have (``rl.envs.tasks.TaskEnvMixin`` gives the task methods):

- a class attribute ``family``: an object with ``sample(n, rng, stratified=False)`` (task parameters,
  an array of n), ``validate(task)`` (the task as the environment stores it; ValueError if it is not
  one of the family) and, for an oracle variant only, ``task_dim`` and ``features(task)``;
- ``sample_tasks(n, rng, stratified=False)`` (a classmethod) and ``set_task(task)``, which the mixin
  builds from ``family``; ``reset`` calls the mixin's ``prepare_task(options)`` after
  ``super().reset(seed=seed)``;
- a constructor that takes ``task=None`` and ``kwargs``; 1-D Box observation and action spaces;
  ``step`` as gymnasium's. The sampler ends episodes at ``horizon`` (or when ``step`` says terminated).

The sampler's worker processes receive the class itself (pickled by reference), so define it at the
top level of an importable module or of the script (not inside a function or the ``__main__`` block).
The README's "Your own task family" is a complete example.
"""

from __future__ import annotations

import inspect
import numbers

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


def register(env_id: str, env_class: type, horizon: int, **kwargs) -> None:
    """Add a task family under ``env_id`` (also with gymnasium, time limit ``horizon``), built as
    ``env_class(task=None, **kwargs)``; see the module docstring for what the class must have.
    Registering an id again with the same class, horizon and kwargs does nothing; with others it is refused."""
    if not isinstance(env_id, str) or not env_id:
        raise ValueError(f"env_id must be a non-empty string, got {env_id!r}.")
    if isinstance(horizon, bool) or not isinstance(horizon, numbers.Integral) or horizon < 1:
        raise ValueError(f"horizon must be a positive integer, got {horizon!r}.")
    family = getattr(env_class, "family", None)
    needs = [name for name in ("sample_tasks", "set_task") if not callable(getattr(env_class, name, None))]
    needs += [f"family.{name}" for name in ("sample", "validate") if not callable(getattr(family, name, None))]
    if not isinstance(env_class, type) or needs:
        raise ValueError(f"{getattr(env_class, '__name__', env_class)!r} is not a task environment class: it lacks "
                         f"{', '.join(needs) or 'being a class'} "
                         "(derive from rl.envs.tasks.TaskEnvMixin and set family).")
    try:  # kwargs the constructor cannot take fail here, not later in a sampler's worker
        inspect.signature(env_class).bind(task=None, **kwargs)
    except TypeError as e:
        raise ValueError(f"{env_class.__name__}(task=None, **{kwargs}) does not fit its constructor: {e}.") from e
    spec = (env_class, int(horizon), dict(kwargs))
    if env_id in _SPECS:
        if _SPECS[env_id] != spec:
            raise ValueError(f"{env_id!r} is already registered as {_SPECS[env_id][0].__name__} (horizon "
                             f"{_SPECS[env_id][1]}, {_SPECS[env_id][2]}); choose another id.")
        return
    if env_id in gym.registry:
        raise ValueError(f"{env_id!r} is already a gymnasium id; choose another id.")
    _SPECS[env_id] = spec
    gym.register(id=env_id, entry_point=env_class, max_episode_steps=int(horizon), kwargs=dict(kwargs))


def spec(env_id: str) -> tuple:
    """``(class, horizon, constructor kwargs)`` of a registered id (ValueError for an unknown one)."""
    if env_id not in _SPECS:
        raise ValueError(f"Unknown environment id {env_id!r}; valid ids are: {', '.join(_SPECS)} (add your own "
                         f"with rl.envs.register).")
    return _SPECS[env_id]


def env_class(env_id: str) -> type:
    """The environment class behind `env_id` (it has ``sample_tasks(n, rng)`` as a classmethod)."""
    return spec(env_id)[0]


def horizon(env_id: str) -> int:
    """The episode length (time limit) of `env_id`."""
    return spec(env_id)[1]


def make(env_id: str, task=None, **kwargs) -> gym.Env:
    """``gymnasium.make(env_id, **kwargs)`` (with the time limit), its task set to `task` if given."""
    spec(env_id)
    env = gym.make(env_id, **kwargs)
    if task is not None:
        env.unwrapped.set_task(task)
    return env


def make_raw(env_id: str, task=None, **kwargs) -> gym.Env:
    """The bare environment object, without gymnasium's wrappers (no time limit): for samplers."""
    cls, _, spec_kwargs = spec(env_id)
    return cls(task=task, **{**spec_kwargs, **kwargs})


__all__ = [
    "ENV_IDS", "make", "make_raw", "env_class", "horizon", "register", "spec",
    "Navigation2DEnv", "HalfCheetahVelEnv", "HalfCheetahDirEnv", "AntVelEnv", "AntDirEnv",
    "VelocityTasks", "DirectionTasks", "GoalTasks2D",
]
