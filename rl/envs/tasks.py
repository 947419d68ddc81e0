"""Task families of the MAML RL experiments, and helpers shared by the environments.

A task family knows how to sample task parameters, how to check one, and how it turns the agent's
forward velocity into the task's forward reward term:

    VelocityTasks(low, high)   goal velocity v* ~ U[low, high];   forward term = -|v - v*|
    DirectionTasks()           direction d = +1 or -1 (p = 1/2);  forward term = d * v
    GoalTasks2D(low, high)     goal g ~ U[low, high]^2            (2D navigation)

Families are small frozen dataclasses; an environment class holds one as its ``family`` attribute.
``sample(n, rng, stratified=True)`` draws the same distribution with less spread within a batch:
directions exactly half each way (the odd one at random), goal velocities one per equal-width bin of
[low, high], 2D goals one per bin on each axis (a Latin hypercube); in random order.
"""

from __future__ import annotations

import dataclasses
import numbers

import numpy as np


def _as_real_scalar(task, what: str) -> float:
    """Returns `task` as a Python float, or raises ValueError if it is not one finite real number."""
    value = task
    if isinstance(value, np.ndarray):
        if value.size != 1:
            raise ValueError(f"A {what} task must be one number, got an array of shape {value.shape}.")
        value = value.reshape(()).item()
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(f"A {what} task must be one real number, got {task!r}.")
    value = float(value)
    if not np.isfinite(value):
        raise ValueError(f"A {what} task must be finite, got {value}.")
    return value


def _stratified_unit(n: int, rng: np.random.Generator) -> np.ndarray:
    """`n` numbers in [0, 1), one uniform draw in each of the bins [i/n, (i+1)/n), in random order."""
    return rng.permutation((np.arange(n) + rng.uniform(size=n)) / max(n, 1))


@dataclasses.dataclass(frozen=True)
class VelocityTasks:
    """Goal velocities drawn uniformly from [low, high]; the forward term is -|v - goal|."""

    low: float
    high: float
    task_dim: int = 1

    def sample(self, n: int, rng: np.random.Generator, stratified: bool = False) -> np.ndarray:
        if stratified:
            return self.low + (self.high - self.low) * _stratified_unit(int(n), rng)
        return rng.uniform(self.low, self.high, size=(int(n),))

    def validate(self, task) -> float:
        value = _as_real_scalar(task, "goal-velocity")
        if not self.low <= value <= self.high:
            raise ValueError(
                f"Goal velocity {value} is outside this family's range [{self.low}, {self.high}].")
        return value

    def forward_reward(self, velocity: float, task: float) -> float:
        return -abs(velocity - task)

    def features(self, task: float) -> np.ndarray:
        return np.array([task], dtype=np.float64)


@dataclasses.dataclass(frozen=True)
class DirectionTasks:
    """Directions +1 (forward) or -1 (backward), equally likely; the forward term is direction * v."""

    task_dim: int = 1

    def sample(self, n: int, rng: np.random.Generator, stratified: bool = False) -> np.ndarray:
        if stratified:
            n = int(n)
            half = np.repeat(np.array([-1.0, 1.0]), n // 2)
            return rng.permutation(np.concatenate([half, rng.choice(np.array([-1.0, 1.0]), size=n % 2)]))
        return rng.choice(np.array([-1.0, 1.0]), size=(int(n),))

    def validate(self, task) -> float:
        value = _as_real_scalar(task, "direction")
        if value not in (-1.0, 1.0):
            raise ValueError(f"A direction task must be +1 or -1, got {value}.")
        return value

    def forward_reward(self, velocity: float, task: float) -> float:
        return task * velocity

    def features(self, task: float) -> np.ndarray:
        return np.array([task], dtype=np.float64)


@dataclasses.dataclass(frozen=True)
class GoalTasks2D:
    """2D goal positions drawn uniformly from the square [low, high]^2."""

    low: float
    high: float
    task_dim: int = 2

    def sample(self, n: int, rng: np.random.Generator, stratified: bool = False) -> np.ndarray:
        if stratified:
            unit = np.stack([_stratified_unit(int(n), rng), _stratified_unit(int(n), rng)], axis=1)
            return self.low + (self.high - self.low) * unit
        return rng.uniform(self.low, self.high, size=(int(n), 2))

    def validate(self, task) -> np.ndarray:
        try:
            goal = np.asarray(task, dtype=np.float64)
        except (TypeError, ValueError):
            raise ValueError(f"A 2D goal must be two real numbers, got {task!r}.") from None
        if goal.shape != (2,):
            raise ValueError(f"A 2D goal must have shape (2,), got shape {goal.shape}.")
        if not (np.all(np.isfinite(goal)) and np.all(goal >= self.low) and np.all(goal <= self.high)):
            raise ValueError(
                f"2D goal {goal.tolist()} is outside this family's square [{self.low}, {self.high}]^2.")
        return goal.copy()

    def features(self, task: np.ndarray) -> np.ndarray:
        return np.asarray(task, dtype=np.float64)


class ActionMap:
    """Maps a policy's action to the action applied to the simulator (float64, within [low, high]).

    normalized=True follows rllab's ``normalize`` wrapper used by the MAML authors: the policy acts in
    [-1, 1]^k, which is mapped affinely onto [low, high], then clipped. normalized=False clips the
    action to [low, high] directly.
    """

    def __init__(self, low, high, normalized: bool):
        self.low = np.asarray(low, dtype=np.float64).copy()
        self.high = np.asarray(high, dtype=np.float64).copy()
        self.normalized = bool(normalized)
        scale = 0.5 * (self.high - self.low)
        offset = self.low + scale
        identity = np.all(scale == 1.0) and np.all(offset == 0.0)
        self._affine = (scale, offset) if self.normalized and not identity else None

    def __call__(self, action) -> np.ndarray:
        a = np.asarray(action, dtype=np.float64)
        if a.shape != self.low.shape:
            raise ValueError(f"Expected an action of shape {self.low.shape}, got shape {a.shape}.")
        return self._map(a)

    def many(self, actions) -> np.ndarray:
        """``self(a)`` for each row of ``actions`` [n, k] (the same elementwise operations)."""
        a = np.asarray(actions, dtype=np.float64)
        if a.ndim != 2 or a.shape[1:] != self.low.shape:
            raise ValueError(f"Expected actions of shape [n, {self.low.shape[0]}], got shape {a.shape}.")
        return self._map(a)

    def _map(self, a: np.ndarray) -> np.ndarray:
        if self._affine is not None:
            a = a * self._affine[0] + self._affine[1]
        return np.minimum(np.maximum(a, self.low), self.high)  # np.clip, with less call overhead


class TaskEnvMixin:
    """Task handling shared by the task environments (the class sets ``family``).

    The task persists across resets. It is set with ``set_task(task)`` or ``reset(options={"task":
    task})``; an environment whose task was never set draws one from its family (with the env's
    seeded ``np_random``) at its first reset. With ``oracle=True`` the task parameters are appended to
    every observation.
    """

    family = None  # set by each environment class
    _task = None
    _oracle = False
    _task_obs = np.zeros(0)  # what the observation ends with: the task's features for an oracle

    @classmethod
    def sample_tasks(cls, n: int, rng: np.random.Generator, stratified: bool = False) -> np.ndarray:
        """Draws `n` task parameters of this family from `rng` (shape [n] or [n, 2]); ``stratified``:
        spread evenly over the family (module docstring)."""
        return cls.family.sample(n, rng, stratified=stratified)

    def set_task(self, task) -> None:
        """Sets the task used from now on (checked; ValueError if outside the family)."""
        self._task = self.family.validate(task)
        self._task_obs = self.family.features(self._task) if self._oracle else np.zeros(0)

    def get_task(self):
        """The current task parameter (None before the first reset if never set)."""
        return self._task.copy() if isinstance(self._task, np.ndarray) else self._task

    def prepare_task(self, options) -> None:
        """Call at the start of ``reset(seed=..., options=...)``, after ``super().reset(seed=seed)``: takes
        ``options["task"]`` if given, and draws a task from the family if none was ever set."""
        if options and "task" in options:
            self.set_task(options["task"])
        if self._task is None:
            self.set_task(self.family.sample(1, self.np_random)[0])

    def _task_obs_dim(self) -> int:
        return self.family.task_dim if self._oracle else 0
