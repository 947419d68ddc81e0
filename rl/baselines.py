"""Discounted returns, the linear feature baseline, and generalized advantage estimation (GAE).

All functions work on padded, masked batches: time is the last axis of `rewards`/`mask` ([..., T])
and the axis before the features of `obs` ([..., T, obs_dim]); typically [M tasks, R rollouts, T].
``mask`` is 1 while an episode is alive and 0 after it ended. Episodes are not bootstrapped: the
value after an episode's last step is taken as 0, whether it ended by termination or at the horizon
(as in rllab, which the MAML authors used).

Linear feature baseline (Duan et al. 2016, used by MAML): for each task, V(s_t) = phi(s_t, t) . w with

    phi = [clip(o, -10, 10), clip(o, -10, 10)^2, t/100, (t/100)^2, (t/100)^3, 1]

(observation clipping and the 1/100 time scale as in rllab), and w fitted to the discounted returns
of that task's episodes by ridge regression: w = argmin |Phi w - G|^2 + reg |w|^2 over the alive
steps, i.e. (Phi^T Phi + reg I) w = Phi^T G, with reg = 1e-5 (raised tenfold, up to 5 times, if the
solve fails or is not finite).

GAE (Schulman et al. 2016): delta_t = r_t + gamma V_{t+1} - V_t,  A_t = sum_k (gamma lambda)^k delta_{t+k}.
With lambda = 1 this is A_t = G_t - V_t (discounted return minus baseline), the paper's setting.
"""

from __future__ import annotations

import numpy as np

OBS_CLIP = 10.0
TIME_SCALE = 0.01


def discounted_returns(rewards: np.ndarray, mask: np.ndarray, discount: float = 0.99) -> np.ndarray:
    """G_t = sum_{k>=0} discount^k r_{t+k} within each episode; 0 after its end. Shape [..., T]."""
    rewards = np.asarray(rewards, dtype=np.float64) * mask
    returns = np.zeros_like(rewards)
    running = np.zeros(rewards.shape[:-1])
    for t in range(rewards.shape[-1] - 1, -1, -1):
        running = rewards[..., t] + discount * running * mask[..., t]
        returns[..., t] = running
    return returns * mask


def linear_features(obs: np.ndarray, mask: np.ndarray, obs_clip: float = OBS_CLIP,
                    time_scale: float = TIME_SCALE) -> np.ndarray:
    """phi(o_t, t) = [o, o^2, s, s^2, s^3, 1] with o = clip(obs), s = t * time_scale; zero where mask
    is 0. [..., T, obs_dim] -> [..., T, 2 * obs_dim + 4]."""
    o = np.clip(np.asarray(obs, dtype=np.float64), -obs_clip, obs_clip)
    s = np.arange(o.shape[-2], dtype=np.float64) * time_scale
    s = np.broadcast_to(s[:, None], o.shape[:-1] + (1,))
    features = np.concatenate([o, o * o, s, s * s, s * s * s, np.ones_like(s)], axis=-1)
    return features * np.asarray(mask, dtype=np.float64)[..., None]


def fit_linear(features: np.ndarray, targets: np.ndarray, mask: np.ndarray, reg: float = 1e-5,
               max_tries: int = 5) -> np.ndarray:
    """Ridge regression per task over its alive steps.

    features [M, ..., F], targets [M, ...], mask [M, ...] -> weights [M, F] minimising
    sum over alive steps (phi . w - target)^2 + reg |w|^2, separately for each task m.
    """
    M, F = features.shape[0], features.shape[-1]
    phi = np.asarray(features, dtype=np.float64).reshape(M, -1, F)
    m = np.asarray(mask, dtype=np.float64).reshape(M, -1, 1)
    y = np.asarray(targets, dtype=np.float64).reshape(M, -1, 1)
    alive = m[..., 0] > 0
    for i in range(M):
        if not (np.all(np.isfinite(phi[i][alive[i]])) and np.all(np.isfinite(y[i][alive[i]]))):
            raise FloatingPointError(f"The rollouts of task {i} hold observations or returns that are not finite: "
                                     "the policy diverged (a step size too large?).")
    phi, y = np.where(m > 0, phi, 0.0), np.where(m > 0, y, 0.0)  # dead steps count for nothing, whatever they hold
    gram = np.matmul((phi * m).transpose(0, 2, 1), phi)   # [M, F, F]
    rhs = np.matmul((phi * m).transpose(0, 2, 1), y)      # [M, F, 1]
    weights = np.empty((M, F))
    eye = np.eye(F)
    for i in range(M):
        r = reg
        for _ in range(max_tries):
            try:
                w = np.linalg.solve(gram[i] + r * eye, rhs[i])[:, 0]
            except np.linalg.LinAlgError:
                w = None
            if w is not None and np.all(np.isfinite(w)):
                break
            r *= 10.0
        else:
            raise np.linalg.LinAlgError(f"The baseline fit of task {i} failed up to reg={r / 10}.")
        weights[i] = w
    return weights


def linear_baseline(obs: np.ndarray, returns: np.ndarray, mask: np.ndarray, reg: float = 1e-5,
                    obs_clip: float = OBS_CLIP, time_scale: float = TIME_SCALE) -> np.ndarray:
    """The linear feature baseline fitted to `returns` per task (axis 0) and evaluated on the same
    steps: obs [M, R, T, obs_dim], returns and mask [M, R, T] -> values [M, R, T] (0 where masked)."""
    mask = np.asarray(mask, dtype=np.float64)
    values = np.zeros(mask.shape)
    for m in range(mask.shape[0]):  # one task at a time bounds the memory of the features
        features = linear_features(obs[m], mask[m], obs_clip, time_scale)
        weights = fit_linear(features[None], returns[m][None], mask[m][None], reg)[0]
        values[m] = features @ weights
    return values * mask


def gae(rewards: np.ndarray, values: np.ndarray, mask: np.ndarray, discount: float = 0.99,
        lam: float = 1.0) -> np.ndarray:
    """Generalized advantage estimates [..., T]; V after an episode's last step is 0, A is 0 where
    masked."""
    mask = np.asarray(mask, dtype=np.float64)
    rewards = np.asarray(rewards, dtype=np.float64) * mask
    values = np.asarray(values, dtype=np.float64) * mask
    next_values = np.zeros_like(values)
    next_values[..., :-1] = values[..., 1:] * mask[..., 1:]
    deltas = (rewards + discount * next_values - values) * mask
    advantages = np.zeros_like(deltas)
    running = np.zeros(deltas.shape[:-1])
    for t in range(deltas.shape[-1] - 1, -1, -1):
        next_alive = mask[..., t + 1] if t + 1 < deltas.shape[-1] else 0.0
        running = deltas[..., t] + discount * lam * next_alive * running
        advantages[..., t] = running
    return advantages * mask


def advantages(rewards: np.ndarray, obs: np.ndarray, mask: np.ndarray, discount: float = 0.99,
               lam: float = 1.0, reg: float = 1e-5) -> tuple[np.ndarray, np.ndarray]:
    """The paper's recipe in one call: fit the linear baseline per task to the discounted returns of
    these episodes, then GAE. Returns (advantages, returns), both [M, R, T]."""
    returns = discounted_returns(rewards, mask, discount)
    values = linear_baseline(obs, returns, mask, reg)
    return gae(rewards, values, mask, discount, lam), returns


def previous_task_advantages(rewards: np.ndarray, obs: np.ndarray, mask: np.ndarray, weights: np.ndarray | None,
                             discount: float = 0.99, lam: float = 1.0,
                             reg: float = 1e-5) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Advantages in the order of rllab's original sampler (predict, then refit), run task by task: the
    values of task m come from the baseline fitted on the task processed just before it (task m - 1;
    for task 0 the given ``weights``, or a zero baseline if None), and the baseline is refitted on
    task m's episodes after its advantages are computed; then it is refitted on all tasks' episodes
    together (the logging pass of the MAML authors' training loop), which is what the next batch starts
    from. The authors' final sampler fits each task's baseline to its own episodes before predicting
    (:func:`advantages`, our default); an earlier version of their code had this order.

    Returns (advantages [M, R, T], returns [M, R, T], weights fitted on all tasks together [F])."""
    returns = discounted_returns(rewards, mask, discount)
    mask = np.asarray(mask, dtype=np.float64)
    values = np.zeros(mask.shape)
    for m in range(mask.shape[0]):
        features = linear_features(obs[m], mask[m])
        if weights is not None:
            values[m] = (features @ weights) * mask[m]
        weights = fit_linear(features[None], returns[m][None], mask[m][None], reg)[0]
    pooled = linear_features(obs, mask)
    F = pooled.shape[-1]
    pooled_weights = fit_linear(pooled.reshape(1, -1, F), returns.reshape(1, -1), mask.reshape(1, -1), reg)[0]
    return gae(rewards, values, mask, discount, lam), returns, pooled_weights
