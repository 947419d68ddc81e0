"""Batched lockstep rollouts: R episodes for each of M tasks, one policy call per time step.

    with Sampler("maml_tf/HalfCheetahVel-v0") as sampler:          # starts one worker per core
        tasks = sampler.sample_tasks(40, np.random.default_rng(0))
        episodes = sampler.sample(tasks, policy_fn, rollouts_per_task=20, seed=1)

At each time step t the sampler calls ``policy_fn(obs)`` once for all M*R environments, with
``obs`` of shape [M, R, obs_dim] (dtype float32 by default; row [m, r] is episode r of task m), and
expects actions of shape [M, R, act_dim] (or [M*R, act_dim]; numpy, or anything ``np.asarray``
accepts, e.g. an eager tf.Tensor). Environments whose episode has ended still appear in ``obs``
(frozen at their last observation) and their actions are ignored. The policy samples its own
actions, so it owns that randomness; for reproducible rollouts, seed it.

Physics is stepped by ``num_workers`` processes, each owning an interleaved share of the M*R environments (env
i goes to worker i % num_workers) and stepping it one env after another; actions go out and observations,
rewards and termination flags come back over pipes. ``num_workers=0`` steps everything in this process.

Workers are started with multiprocessing's "spawn" method (safe next to TensorFlow's threads), so
a script that creates a Sampler needs the usual ``if __name__ == "__main__":`` guard (absl's
``app.run(main)`` idiom has it).

With ``restart=True`` a batch is a step budget instead, as in the authors' rllab samplers (which
collect ``rollouts x horizon`` environment steps per task in whole episodes): each of a task's R
"slots" starts a new episode when its episode ends before lockstep time T, and episodes under way at
time T run to their end; so a task gets at least R*T steps, and more than R episodes when episodes
end early (2D navigation after adaptation). The episode axis of the result is then padded to the
largest count over tasks (padding episodes have length 0; ``Episodes.valid``). Without early ends
(the half-cheetah) both modes give the same episodes.

Reproducibility: episode j of task m is reset with the seed ``rollout_seed(seed, m, j)`` (episodes
0..R-1 are the slots' first ones, later ones are numbered in the order they start), and MuJoCo is
deterministic, so the same (tasks, policy, seed) gives identical episodes whatever the number of
workers.
"""

from __future__ import annotations

import dataclasses
import multiprocessing as mp
import os
import signal
import traceback
from typing import Callable, Sequence

import numpy as np

from rl import envs as rl_envs

PolicyFn = Callable[[np.ndarray], np.ndarray]


@dataclasses.dataclass(frozen=True)
class Episodes:
    """Padded episodes of M tasks x R rollouts x T steps (T = horizon).

    Steps after an episode's end have mask 0 and zeros in obs, actions, rewards and infos.
    ``actions`` are as returned by the policy (before the environment clips them). With
    ``Sampler.sample(..., restart=True)`` tasks may hold different numbers of episodes: the episode
    axis is padded with empty episodes (length 0, mask 0; ``valid`` is False for them).
    """

    obs: np.ndarray         # [M, R, T, obs_dim]  observation at step t (the policy's input)
    actions: np.ndarray     # [M, R, T, act_dim]
    rewards: np.ndarray     # [M, R, T]           reward of step t
    mask: np.ndarray        # [M, R, T]           1.0 while the episode is alive, else 0.0
    lengths: np.ndarray     # [M, R] int32        number of steps taken (= mask.sum(-1))
    terminated: np.ndarray  # [M, R] bool         ended by the environment (goal, fall), not the horizon
    final_obs: np.ndarray   # [M, R, obs_dim]     observation after the last step
    tasks: np.ndarray       # [M] or [M, task_dim] task parameters
    infos: dict             # name -> [M, R, T]   per-step info values requested with `info_keys`

    @property
    def num_tasks(self) -> int:
        return self.rewards.shape[0]

    @property
    def rollouts_per_task(self) -> int:
        return self.rewards.shape[1]

    @property
    def horizon(self) -> int:
        return self.rewards.shape[2]

    @property
    def num_steps(self) -> int:
        """Environment steps taken in total."""
        return int(self.lengths.sum())

    @property
    def valid(self) -> np.ndarray:
        """[M, R] bool: True for the episodes that exist (False for padding)."""
        return self.lengths > 0

    def returns(self) -> np.ndarray:
        """Undiscounted return of each episode, [M, R] (0 for padding episodes)."""
        return self.rewards.sum(axis=-1)

    def task_returns(self) -> np.ndarray:
        """[M] mean undiscounted return of each task's episodes."""
        valid = self.valid
        return (self.returns() * valid).sum(axis=1) / np.maximum(valid.sum(axis=1), 1)

    def average_return(self) -> float:
        """Mean undiscounted return over all episodes of all tasks (rllab's AverageReturn)."""
        return float(self.returns()[self.valid].mean())


def rollout_seed(seed: int, task_index: int, rollout_index: int) -> int:
    """The environment reset seed of episode `rollout_index` of task `task_index`."""
    return int(np.random.SeedSequence([seed, task_index, rollout_index]).generate_state(1)[0])


class _EnvGroup:
    """A slice of environments, stepped one after another (in a worker process or in-process)."""

    def __init__(self, env_class: type, env_kwargs: dict, info_keys: tuple):
        self._env_class = env_class  # the class itself, not its id: a worker need not know users' registrations
        self._env_kwargs = env_kwargs
        self._info_keys = info_keys
        self._envs = []
        self._obs = None

    def run(self, command: str, arg):
        if command == "reset":
            return self.reset(*arg)
        if command == "step":
            return self.step(*arg)
        if command == "restart":
            return self.restart(*arg)
        if command == "reserve":
            return self.reserve(arg)
        raise ValueError(f"Unknown command {command!r}.")

    def reserve(self, n: int) -> None:
        while len(self._envs) < n:
            self._envs.append(self._env_class(task=None, **self._env_kwargs))

    def reset(self, tasks: Sequence, seeds: Sequence[int]) -> np.ndarray:
        n = len(seeds)
        self.reserve(n)
        obs = None
        for i in range(n):
            env = self._envs[i]
            env.set_task(tasks[i])
            ob, _ = env.reset(seed=int(seeds[i]))
            if obs is None:
                obs = np.empty((n, ob.shape[0]), dtype=np.float64)
            obs[i] = ob
        self._obs = obs
        return obs

    def restart(self, indices: Sequence[int], tasks: Sequence, seeds: Sequence[int]) -> np.ndarray:
        """Resets the envs at `indices` (of this group) for new episodes; their observations."""
        for i, task, seed in zip(indices, tasks, seeds):
            env = self._envs[i]
            env.set_task(task)
            self._obs[i], _ = env.reset(seed=int(seed))
        return self._obs[list(indices)]

    def step(self, actions: np.ndarray, active: np.ndarray):
        """Steps the envs whose episode is under way (`active`, as the sampler knows it)."""
        n = len(self._obs)
        rewards = np.zeros(n)
        terminated = np.zeros(n, dtype=bool)
        infos = np.zeros((n, len(self._info_keys)))
        obs, envs, keys = self._obs, self._envs, self._info_keys
        step_many = getattr(type(envs[0]), "step_many", None) if envs else None
        if step_many is not None and not keys:  # the same steps with less Python work per env
            idx = np.flatnonzero(active)
            if len(idx):
                out = np.empty((len(idx), obs.shape[1]))
                rewards[idx], terminated[idx] = step_many([envs[i] for i in idx], actions[idx], out)
                obs[idx] = out
            return obs, rewards, terminated, infos
        for i in np.flatnonzero(active):
            ob, rewards[i], term, _, info = envs[i].step(actions[i])
            obs[i] = ob
            terminated[i] = term
            for k, key in enumerate(keys):
                infos[i, k] = info[key]
        return obs, rewards, terminated, infos

    def close(self) -> None:
        for env in self._envs:
            env.close()
        self._envs = []


def _worker_main(conn, env_class: type, env_kwargs: dict, info_keys: tuple) -> None:
    # The parent handles Ctrl-C and SIGTERM (finishing its iteration and saving a checkpoint) and closes us; a
    # signal sent to the whole process group (kill -- -pgid, Slurm, systemd) must not end us mid-sampling.
    # Should the parent die, recv() sees EOF and we exit.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    group = _EnvGroup(env_class, env_kwargs, info_keys)
    conn.send(("ok", None))
    while True:
        try:
            command, arg = conn.recv()
        except (EOFError, OSError):
            break
        if command == "close":
            break
        try:
            out = group.run(command, arg)
            conn.send(("ok", out))
        except Exception:  # reported to the parent, which raises it
            conn.send(("error", traceback.format_exc()))
    group.close()
    conn.close()


def default_num_workers() -> int:
    """The number of CPU cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


class Sampler:
    """Collects episodes of `env_id` for many tasks in lockstep (see the module docstring).

    Args:
      env_id: an id of `rl.envs`, built in or added with `rl.envs.register` (ValueError otherwise).
      num_workers: worker processes stepping the physics; None = one per CPU core; 0 = in-process.
      horizon: episode length T; default the environment's time limit (100 or 200).
      env_kwargs: keyword arguments for the environment constructor.
      info_keys: names of per-step `info` values to record in `Episodes.infos`.
      dtype: dtype of the observations given to the policy and of the returned arrays.
      start_method: multiprocessing start method of the workers ("spawn" is safe with TensorFlow).
    """

    def __init__(self, env_id: str, *, num_workers: int | None = None, horizon: int | None = None,
                 env_kwargs: dict | None = None, info_keys: Sequence[str] = (),
                 dtype=np.float32, start_method: str = "spawn"):
        self.env_id = env_id
        self.horizon = int(horizon) if horizon is not None else rl_envs.horizon(env_id)
        if self.horizon < 1:
            raise ValueError(f"horizon must be at least 1, got {self.horizon}.")
        self.env_kwargs = dict(env_kwargs or {})
        env_class, _, spec_kwargs = rl_envs.spec(env_id)
        construct = {**spec_kwargs, **self.env_kwargs}  # what every environment of this sampler is built with
        self.info_keys = tuple(info_keys)
        self.dtype = np.dtype(dtype)
        self.num_workers = default_num_workers() if num_workers is None else int(num_workers)
        if self.num_workers < 0:
            raise ValueError(f"num_workers must be >= 0, got {self.num_workers}.")
        self._closed = True
        self._conns, self._procs, self._group = [], [], None

        probe = env_class(task=None, **construct)
        self.env_class = type(probe)
        self.observation_space = probe.observation_space
        self.action_space = probe.action_space
        self.obs_dim = probe.observation_space.shape[0]
        self.act_dim = probe.action_space.shape[0]
        probe.reset(seed=0)
        info = probe.step(np.zeros(self.act_dim))[4]
        missing = [key for key in self.info_keys if key not in info]
        if missing:
            raise ValueError(f"info_keys {missing} are not in {env_id}'s info; it has {sorted(info)}.")
        probe.close()

        self._closed = False
        if self.num_workers == 0:
            self._group = _EnvGroup(env_class, construct, self.info_keys)
            return
        ctx = mp.get_context(start_method)
        try:
            for _ in range(self.num_workers):
                parent, child = ctx.Pipe()
                proc = ctx.Process(target=_worker_main, daemon=True,
                                   args=(child, env_class, construct, self.info_keys))
                proc.start()
                child.close()
                self._conns.append(parent)
                self._procs.append(proc)
            for conn in self._conns:
                self._receive(conn)
        except BaseException:
            self.close()
            raise

    @property
    def worker_pids(self) -> list[int]:
        """Process ids of the worker processes (empty when stepping in-process)."""
        return [proc.pid for proc in self._procs]

    def reserve(self, num_envs: int) -> None:
        """Creates the environments for batches of up to `num_envs` = tasks x rollouts now, instead
        of during the first `sample` call that needs them (for steady-state timings)."""
        if self._closed:
            raise RuntimeError("This Sampler is closed.")
        n = int(num_envs)
        self._run("reserve", n, lambda part: len(range(n)[part]))

    # ----------------------------------------------------------------------------------------------
    def sample_tasks(self, n: int, rng: np.random.Generator, stratified: bool = False) -> np.ndarray:
        """`n` task parameters of this environment's family (``stratified``: spread evenly over it,
        :mod:`rl.envs.tasks`)."""
        return self.env_class.sample_tasks(n, rng, stratified=stratified)

    def sample(self, tasks: Sequence, policy_fn: PolicyFn, rollouts_per_task: int,
               seed: int, restart: bool = False) -> Episodes:
        """Runs `rollouts_per_task` episodes of each task in `tasks` to the horizon or their end;
        with `restart`, a budget of at least `rollouts_per_task` x horizon steps per task in whole
        episodes (module docstring)."""
        if self._closed:
            raise RuntimeError("This Sampler is closed.")
        family = self.env_class.family
        tasks = [family.validate(task) for task in tasks]
        M, R, T = len(tasks), int(rollouts_per_task), self.horizon
        if M < 1 or R < 1:
            raise ValueError(f"Need at least one task and one rollout per task, got {M} and {R}.")
        if isinstance(seed, (bool, np.bool_)) or not isinstance(seed, (int, np.integer)) or seed < 0:
            raise ValueError(f"seed must be a non-negative integer, got {seed!r}.")
        N, d, k = M * R, self.obs_dim, self.act_dim
        env_tasks = [tasks[i // R] for i in range(N)]
        seeds = [rollout_seed(int(seed), i // R, i % R) for i in range(N)]

        obs = np.empty((N, d))
        for part, ob in self._run("reset", N, lambda part: (env_tasks[part], seeds[part])):
            obs[part] = ob
        if restart:
            return self._sample_restarting(tasks, policy_fn, R, int(seed), obs)

        out_obs = np.zeros((N, T, d), self.dtype)
        out_act = np.zeros((N, T, k), self.dtype)
        rewards = np.zeros((N, T), self.dtype)
        mask = np.zeros((N, T), self.dtype)
        infos = np.zeros((len(self.info_keys), N, T), self.dtype)
        lengths = np.zeros(N, np.int32)
        terminated = np.zeros(N, bool)
        alive = np.ones(N, bool)
        for t in range(T):
            mask[:, t] = alive
            ended = self._lockstep_step(policy_fn, obs, alive, t, M, R, (out_obs, out_act, rewards, infos))
            lengths += alive
            terminated |= ended & alive
            alive &= ~ended
            if not alive.any():
                break

        return Episodes(
            obs=out_obs.reshape(M, R, T, d), actions=out_act.reshape(M, R, T, k),
            rewards=rewards.reshape(M, R, T), mask=mask.reshape(M, R, T),
            lengths=lengths.reshape(M, R), terminated=terminated.reshape(M, R),
            final_obs=obs.astype(self.dtype).reshape(M, R, d), tasks=np.asarray(tasks),
            infos={key: infos[i].reshape(M, R, T) for i, key in enumerate(self.info_keys)})

    def _sample_restarting(self, tasks: list, policy_fn: PolicyFn, R: int, seed: int, obs: np.ndarray) -> Episodes:
        """``sample(..., restart=True)`` after the first reset: slots run episodes back to back on a
        timeline of up to 2T - 1 lockstep steps, then the episodes are packed per task."""
        M, T, d, k = len(tasks), self.horizon, self.obs_dim, self.act_dim
        N, K, L = M * R, len(self.info_keys), 2 * T - 1
        tl_obs = np.zeros((N, L, d), self.dtype)
        tl_act = np.zeros((N, L, k), self.dtype)
        tl_rew = np.zeros((N, L), self.dtype)
        tl_inf = np.zeros((K, N, L), self.dtype)
        # per slot: (episode index within its task, start time, end time, terminated, final obs)
        done_eps: list[list[tuple]] = [[] for _ in range(N)]
        current = [(i % R, 0) for i in range(N)]  # (episode index, start time) of the running episode
        next_index = [R] * M
        alive = np.ones(N, bool)
        steps_in_episode = np.zeros(N, np.int64)
        t = 0
        while alive.any():
            ended = self._lockstep_step(policy_fn, obs, alive, t, M, R, (tl_obs, tl_act, tl_rew, tl_inf))
            steps_in_episode += alive
            finished = alive & (ended | (steps_in_episode == T))
            t += 1
            for i in np.flatnonzero(finished):
                j, start = current[i]
                done_eps[i].append((j, start, t, bool(ended[i]), obs[i].copy()))
            alive &= ~finished
            again = np.flatnonzero(finished) if t < T else np.zeros(0, np.int64)
            if len(again):
                new_tasks, new_seeds = [], []
                for i in again:
                    m = i // R
                    current[i] = (next_index[m], t)
                    new_tasks.append(tasks[m])
                    new_seeds.append(rollout_seed(seed, m, next_index[m]))
                    next_index[m] += 1
                obs[again] = self._restart(again, new_tasks, new_seeds)
                alive[again] = True
                steps_in_episode[again] = 0

        E = max(next_index)
        out_obs = np.zeros((M, E, T, d), self.dtype)
        out_act = np.zeros((M, E, T, k), self.dtype)
        rewards = np.zeros((M, E, T), self.dtype)
        mask = np.zeros((M, E, T), self.dtype)
        infos = np.zeros((K, M, E, T), self.dtype)
        lengths = np.zeros((M, E), np.int32)
        terminated = np.zeros((M, E), bool)
        final_obs = np.zeros((M, E, d), self.dtype)
        for i in range(N):
            m = i // R
            for j, start, end, term, last in done_eps[i]:
                n = end - start
                out_obs[m, j, :n] = tl_obs[i, start:end]
                out_act[m, j, :n] = tl_act[i, start:end]
                rewards[m, j, :n] = tl_rew[i, start:end]
                infos[:, m, j, :n] = tl_inf[:, i, start:end]
                mask[m, j, :n] = 1.0
                lengths[m, j], terminated[m, j], final_obs[m, j] = n, term, last
        return Episodes(obs=out_obs, actions=out_act, rewards=rewards, mask=mask, lengths=lengths,
                        terminated=terminated, final_obs=final_obs, tasks=np.asarray(tasks),
                        infos={key: infos[i] for i, key in enumerate(self.info_keys)})

    def _lockstep_step(self, policy_fn: PolicyFn, obs: np.ndarray, alive: np.ndarray, t: int, M: int, R: int,
                       record: tuple) -> np.ndarray:
        """One lockstep time step of the `alive` envs: records their observations, the policy's actions,
        the rewards and infos at time `t` in `record` = (obs [N, ., d], actions [N, ., k], rewards
        [N, .], infos [K, N, .]), updates `obs` in place; returns which envs' episodes terminated."""
        rec_obs, rec_act, rec_rew, rec_inf = record
        rec_obs[alive, t] = obs[alive]
        actions = self._call_policy(policy_fn, obs.astype(self.dtype).reshape(M, R, self.obs_dim), M, R)
        rec_act[alive, t] = actions[alive]
        ended = np.zeros(len(obs), bool)
        for part, (ob, rew, term, inf) in self._run("step", len(obs), lambda part: (actions[part], alive[part])):
            obs[part] = ob
            rec_rew[part, t] = rew
            ended[part] = term
            rec_inf[:, part, t] = inf.T
        return ended

    def _restart(self, indices: np.ndarray, tasks: list, seeds: list) -> np.ndarray:
        """Resets the envs at global `indices` for new episodes; their observations, in that order."""
        if self._group is not None:
            return self._group.run("restart", (list(indices), tasks, seeds))
        w = max(self.num_workers, 1)
        by_worker: dict[int, list[int]] = {}
        for pos, g in enumerate(indices):
            by_worker.setdefault(int(g) % w, []).append(pos)
        out = np.empty((len(indices), self.obs_dim))
        try:
            for worker, positions in by_worker.items():
                self._conns[worker].send(("restart", ([int(indices[p]) // w for p in positions],
                                                      [tasks[p] for p in positions], [seeds[p] for p in positions])))
            for worker, positions in by_worker.items():
                out[positions] = self._receive(self._conns[worker])
        except BaseException:
            self.close()
            raise
        return out

    # ----------------------------------------------------------------------------------------------
    def _call_policy(self, policy_fn: PolicyFn, obs: np.ndarray, M: int, R: int) -> np.ndarray:
        actions = np.asarray(policy_fn(obs), dtype=np.float64)
        if actions.shape not in ((M, R, self.act_dim), (M * R, self.act_dim)):
            raise ValueError(f"policy_fn must return actions of shape {(M, R, self.act_dim)} or "
                             f"{(M * R, self.act_dim)}, got {actions.shape}.")
        return actions.reshape(M * R, self.act_dim)

    def _parts(self, n: int) -> list[slice]:
        """Environment i of a batch of n belongs to worker i % num_workers (interleaved, so every
        worker gets a share of every task and early terminations balance out)."""
        w = max(self.num_workers, 1)
        return [slice(i, n, w) for i in range(min(w, n))]

    def _run(self, command: str, n: int, make_arg):
        """Sends `command` with each part's argument to its env group; returns [(part, result)]."""
        if self._group is not None:
            part = slice(0, n)
            return [(part, self._group.run(command, make_arg(part)))]
        parts = self._parts(n)
        results = []
        try:
            for conn, part in zip(self._conns, parts):
                conn.send((command, make_arg(part)))
            for conn, part in zip(self._conns, parts):
                results.append((part, self._receive(conn)))
        except BaseException:
            self.close()  # replies may be pending: the workers' state is unknown
            raise
        return results

    @staticmethod
    def _receive(conn):
        try:
            status, out = conn.recv()
        except (EOFError, OSError):
            raise RuntimeError("A sampler worker process exited unexpectedly.") from None
        if status != "ok":
            raise RuntimeError(f"A sampler worker failed:\n{out}")
        return out

    def close(self) -> None:
        """Stops the worker processes (idempotent)."""
        if getattr(self, "_closed", True):
            return
        self._closed = True
        for conn in self._conns:
            try:
                conn.send(("close", None))
            except (BrokenPipeError, OSError):
                pass
        for proc in self._procs:
            proc.join(timeout=5)
            if proc.is_alive():  # (it ignores SIGTERM: see _worker_main)
                proc.kill()
                proc.join(timeout=5)
        for conn in self._conns:
            conn.close()
        self._conns, self._procs = [], []
        if self._group is not None:
            self._group.close()
            self._group = None

    def __enter__(self) -> "Sampler":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self):
        try:
            self.close()
        except Exception:
            pass
