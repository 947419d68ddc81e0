"""The paper's sinusoid regression tasks (section 5.1).

A task is y = A sin(x - phase) with A ~ U[0.1, 5.0], phase ~ U[0, pi]; inputs x ~ U[-5, 5].
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

AMPLITUDE_RANGE = (0.1, 5.0)
PHASE_RANGE = (0.0, np.pi)
INPUT_RANGE = (-5.0, 5.0)


@dataclass(frozen=True)
class SinusoidBatch:
    """Tasks batched on axis 0. x and y are float32 ``[tasks, points, 1]``."""
    support_x: np.ndarray
    support_y: np.ndarray
    query_x: np.ndarray
    query_y: np.ndarray
    amplitude: np.ndarray  # [tasks]
    phase: np.ndarray  # [tasks]

    @property
    def support(self):
        return self.support_x, self.support_y

    @property
    def query(self):
        return self.query_x, self.query_y


def sine(x, amplitude, phase):
    """y = A sin(x - phase), broadcasting ``amplitude`` and ``phase`` of shape [tasks] over x [tasks, n, 1]."""
    return np.asarray(amplitude)[:, None, None] * np.sin(x - np.asarray(phase)[:, None, None])


class SinusoidTasks:
    """Task distribution with ``sample(num_tasks, rng)``; every draw comes from the given ``rng``."""

    def __init__(self, num_support: int = 10, num_query: int = 10):
        if num_support <= 0 or num_query <= 0:
            raise ValueError(f"K must be positive (got {num_support} support and {num_query} query points).")
        self.num_support = num_support
        self.num_query = num_query

    def sample_params(self, num_tasks: int, rng: np.random.Generator):
        amplitude = rng.uniform(*AMPLITUDE_RANGE, size=num_tasks)
        phase = rng.uniform(*PHASE_RANGE, size=num_tasks)
        return amplitude, phase

    def sample(self, num_tasks: int, rng: np.random.Generator) -> SinusoidBatch:
        amplitude, phase = self.sample_params(num_tasks, rng)
        x = rng.uniform(*INPUT_RANGE, size=(num_tasks, self.num_support + self.num_query, 1))
        y = sine(x, amplitude, phase)
        x, y = x.astype(np.float32), y.astype(np.float32)
        k = self.num_support
        return SinusoidBatch(x[:, :k], y[:, :k], x[:, k:], y[:, k:],
                             amplitude.astype(np.float32), phase.astype(np.float32))


def with_task_inputs(x: np.ndarray, amplitude: np.ndarray, phase: np.ndarray) -> np.ndarray:
    """The oracle's input: [x, amplitude, phase] per point, ``[tasks, n, 3]``."""
    t, n, _ = x.shape
    extra = np.broadcast_to(np.stack([amplitude, phase], -1)[:, None, :], (t, n, 2))
    return np.concatenate([x, extra.astype(x.dtype)], axis=-1)
