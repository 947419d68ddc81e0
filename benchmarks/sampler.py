r"""Benchmark: environment steps per second of rl.sampler.Sampler against the physics limit.

For each model (half-cheetah, ant) this collects batches at the paper's size (40 tasks x 20
rollouts x 200 steps; --scale shrinks the number of tasks) with a random Gaussian MLP policy
(2 x 100 ReLU, std 1, numpy; its inference is included in the time), and measures the physics
limit on the same workload: one process per core, all running CONCURRENTLY, replays episodes of
the first batch (same initial states and actions) with nothing but
``data.ctrl[:] = a; mujoco.mj_step(model, data, nstep=frame_skip)`` in a loop, for a fixed window
of wall time; the limit is their total steps over the window's wall time.

Both sides therefore see the same machine, background load included. To make load changes hit
both equally the measurements are interleaved in pairs (S L, L S, S L, ... for --trials pairs; the
limit window lasts as long as the paired sampler call unless --limit_seconds is set), and the
reported ``ratio`` is the median of the per-pair ratios; ``sampler_steps_per_s`` and
``limit_steps_per_s`` are the medians of each side. ``cpu_ratio`` compares CPU time per step
(sampler: main process + workers; limit: the replay processes), which is insensitive to other jobs.
``limit_single_core_x_cores_steps_per_s`` is the former limit (a serial replay in this process,
times the number of cores), for reference. Prints one JSON line per model.

    python benchmarks/sampler.py                 # paper batch
    python benchmarks/sampler.py --scale=0.1     # 4 tasks x 20 rollouts
"""

import json
import math
import multiprocessing as mp
import os
import statistics
import sys
import time

import mujoco
import numpy as np
from absl import app, flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # this checkout's packages first

import rl.envs
from rl.sampler import Sampler, default_num_workers, rollout_seed

ENV_IDS = {"halfcheetah": "maml_tf/HalfCheetahVel-v1", "ant": "maml_tf/AntVel-v1"}

flags.DEFINE_list("envs", ["halfcheetah", "ant"], "Models to benchmark: halfcheetah, ant.")
flags.DEFINE_integer("num_tasks", 40, "Tasks per batch (paper: 40).", lower_bound=1)
flags.DEFINE_integer("rollouts", 20, "Rollouts per task (paper: 20).", lower_bound=1)
flags.DEFINE_integer("horizon", 200, "Steps per episode (paper: 200).", lower_bound=1)
flags.DEFINE_float("scale", 1.0, "Fraction of --num_tasks to run (at least one task).",
                   lower_bound=0.0, upper_bound=1.0)
flags.DEFINE_integer("num_workers", None, "Sampler worker processes (default: one per core).",
                     lower_bound=0)
flags.DEFINE_integer("trials", 3, "(sampler, limit) measurement pairs per model.", lower_bound=1)
flags.DEFINE_float("limit_seconds", None, "Wall time of each concurrent limit measurement "
                   "(default: that of the paired sampler call).", lower_bound=0.1)
flags.DEFINE_integer("limit_steps", 20000, "Environment steps replayed serially in this process "
                     "for the reference single-core limit.", lower_bound=1)
flags.DEFINE_integer("seed", 0, "Seed of tasks, policy and resets.", lower_bound=0)
flags.register_validator("envs", lambda names: set(names) <= set(ENV_IDS),
                         message=f"--envs must be a subset of {sorted(ENV_IDS)}.")
FLAGS = flags.FLAGS


def random_mlp_policy(obs_dim, act_dim, rng, hidden=(100, 100)):
    """A Gaussian MLP policy with random weights: [M, R, obs_dim] -> sampled [M, R, act_dim]."""
    sizes = (obs_dim, *hidden, act_dim)
    weights = [(rng.normal(size=(a, b)) * np.sqrt(2.0 / a)).astype(np.float32)
               for a, b in zip(sizes[:-1], sizes[1:])]
    biases = [np.zeros(b, np.float32) for b in sizes[1:]]

    def policy(obs):
        h = obs
        for i, (w, b) in enumerate(zip(weights, biases)):
            h = h @ w + b
            if i < len(weights) - 1:
                h = np.maximum(h, 0.0)
        return h + rng.standard_normal(h.shape, dtype=np.float32)  # std 1
    return policy


def cpu_seconds(pids):
    """CPU time (user + system) used so far by the processes `pids` (Linux /proc), or None."""
    try:
        total = 0
        for pid in pids:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15)
        return total / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return None


def machine_busy_seconds():
    """CPU time used so far by all processes on the machine (Linux /proc/stat), or None."""
    try:
        with open("/proc/stat") as f:
            fields = [int(x) for x in f.readline().split()[1:]]
        user, nice, system, _, _, irq, softirq = fields[:7]
        return (user + nice + system + irq + softirq) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return None


class _Meter:
    """Wall time, CPU time of `pids` and the CPU load of everything else (in cores) over a block."""

    def __init__(self, pids):
        self.pids = pids

    def __enter__(self):
        self._busy, self._cpu = machine_busy_seconds(), cpu_seconds(self.pids)
        self._start = time.perf_counter()
        return self

    def __exit__(self, *exc):
        self.seconds = time.perf_counter() - self._start
        busy, cpu = machine_busy_seconds(), cpu_seconds(self.pids)
        self.cpu = None if cpu is None or self._cpu is None else cpu - self._cpu
        self.other_load = (None if busy is None or self._busy is None or self.cpu is None
                           else max(0.0, (busy - self._busy - self.cpu) / self.seconds))


# --------------------------------------------------------------------------------------------------
# Physics limit: bare mj_step replays of the batch's episodes.

def _replay_states(env_id, tasks, seeds, actions, lengths):
    """One env and, per episode, its initial integration state and its clipped float64 actions."""
    env = rl.envs.make_raw(env_id)
    spec = mujoco.mjtState.mjSTATE_INTEGRATION
    size = mujoco.mj_stateSize(env.model, spec)
    episodes = []
    for task, seed, acts, n in zip(tasks, seeds, actions, lengths):
        env.set_task(task)
        env.reset(seed=int(seed))  # the episode's initial state
        state = np.empty(size)
        mujoco.mj_getState(env.model, env.data, state, spec)
        acts = np.ascontiguousarray(np.clip(acts[:n], -1.0, 1.0), dtype=np.float64)
        episodes.append((state, acts))
    return env, spec, episodes


def _limit_process(conn, env_id, tasks, seeds, actions, lengths):
    """Replays its episodes (cycling) from a common start time to a deadline, on command."""
    env, spec, episodes = _replay_states(env_id, tasks, seeds, actions, lengths)
    model, data, frame_skip = env.model, env.data, env.frame_skip
    ctrl = data.ctrl
    conn.send("ready")
    while True:
        try:
            command = conn.recv()
        except (EOFError, OSError):
            break
        if command is None:
            break
        start_at, seconds = command
        time.sleep(max(0.0, start_at - time.perf_counter()))
        deadline = start_at + seconds
        steps, start_cpu, now = 0, time.process_time(), time.perf_counter()
        while now < deadline:
            for state, acts in episodes:
                mujoco.mj_setState(model, data, state, spec)
                for a in acts:
                    ctrl[:] = a
                    mujoco.mj_step(model, data, nstep=frame_skip)
                steps += len(acts)
                now = time.perf_counter()
                if now >= deadline:
                    break
        conn.send((steps, now - start_at, time.process_time() - start_cpu))
    env.close()
    conn.close()


class ConcurrentLimit:
    """`n` processes, each replaying an interleaved share of the episodes, measured together."""

    def __init__(self, env_id, episodes, seed, n):
        ctx = mp.get_context("spawn")
        M, R = episodes.lengths.shape
        index = [(m, r) for m in range(M) for r in range(R)]
        self._conns, self._procs = [], []
        try:
            for p in range(n):
                share = index[p::n]
                args = (env_id, [episodes.tasks[m] for m, _ in share],
                        [rollout_seed(seed, m, r) for m, r in share],
                        [episodes.actions[m, r] for m, r in share],
                        [int(episodes.lengths[m, r]) for m, r in share])
                parent, child = ctx.Pipe()
                proc = ctx.Process(target=_limit_process, args=(child, *args), daemon=True)
                proc.start()
                child.close()
                self._conns.append(parent)
                self._procs.append(proc)
            for conn in self._conns:
                if conn.recv() != "ready":
                    raise RuntimeError("A limit process failed to start.")
        except BaseException:
            self.close()
            raise

    @property
    def pids(self):
        return [proc.pid for proc in self._procs]

    def measure(self, seconds):
        """Aggregate steps/s of all processes over `seconds` of wall time, and CPU seconds used."""
        start_at = time.perf_counter() + 0.05
        for conn in self._conns:
            conn.send((start_at, seconds))
        results = [conn.recv() for conn in self._conns]
        steps = sum(r[0] for r in results)
        wall = max(r[1] for r in results)
        return {"steps": steps, "seconds": wall, "cpu": sum(r[2] for r in results),
                "per_process_steps_per_s": [round(r[0] / r[1], 1) for r in results]}

    def close(self):
        for conn in self._conns:
            try:
                conn.send(None)
            except OSError:
                pass
        for proc in self._procs:
            proc.join(timeout=10)
            if proc.is_alive():
                proc.terminate()
                proc.join()
        for conn in self._conns:
            conn.close()
        self._conns, self._procs = [], []


def single_core_limit(env_id, episodes, seed, max_steps):
    """The former limit: single-core steps/s of a serial bare mj_step replay in this process
    (wall clock and CPU time), excluding resets."""
    M, R = episodes.lengths.shape
    steps, seconds, cpu = 0, 0.0, 0.0
    for m, r in np.ndindex(M, R):
        env, spec, [(state, actions)] = _replay_states(
            env_id, [episodes.tasks[m]], [rollout_seed(seed, m, r)], [episodes.actions[m, r]],
            [episodes.lengths[m, r]])
        model, data, frame_skip = env.model, env.data, env.frame_skip
        start, start_cpu = time.perf_counter(), time.process_time()
        for a in actions:
            data.ctrl[:] = a
            mujoco.mj_step(model, data, nstep=frame_skip)
        seconds += time.perf_counter() - start
        cpu += time.process_time() - start_cpu
        steps += len(actions)
        env.close()
        if steps >= max_steps:
            break
    return steps / seconds, steps / cpu


# --------------------------------------------------------------------------------------------------

def benchmark(name):
    env_id = ENV_IDS[name]
    num_tasks = max(1, math.ceil(FLAGS.num_tasks * FLAGS.scale))
    cores = default_num_workers()
    rng = np.random.default_rng(FLAGS.seed)
    load_before = os.getloadavg()
    start = time.perf_counter()
    trials, limit, first = [], None, None
    with Sampler(env_id, num_workers=FLAGS.num_workers, horizon=FLAGS.horizon) as sampler:
        sampler.reserve(num_tasks * FLAGS.rollouts)  # create the envs outside the timed call
        startup = time.perf_counter() - start
        tasks = sampler.sample_tasks(num_tasks, rng)
        policy = random_mlp_policy(sampler.obs_dim, sampler.act_dim, rng)
        policy_seconds = [0.0]

        def timed_policy(obs):
            t = time.perf_counter()
            actions = policy(obs)
            policy_seconds[0] += time.perf_counter() - t
            return actions

        def run_sampler():
            policy_seconds[0] = 0.0
            with _Meter([os.getpid(), *sampler.worker_pids]) as meter:
                episodes = sampler.sample(tasks, timed_policy, FLAGS.rollouts, seed=FLAGS.seed)
            return episodes, {"steps": episodes.num_steps, "seconds": meter.seconds,
                              "cpu": meter.cpu, "other_load": meter.other_load,
                              "policy_seconds": policy_seconds[0]}

        def run_limit(seconds):
            with _Meter(limit.pids) as meter:
                result = limit.measure(seconds)
            result["other_load"] = meter.other_load
            return result

        try:
            for trial in range(FLAGS.trials):
                limit_first = trial % 2 == 1  # S L, L S, S L, ...: linear drift cancels out
                if limit_first:
                    lim = run_limit(FLAGS.limit_seconds or trials[-1]["sampler"]["seconds"])
                episodes, smp = run_sampler()
                if limit is None:
                    first = episodes
                    limit = ConcurrentLimit(env_id, first, FLAGS.seed, cores)  # not timed
                if not limit_first:
                    lim = run_limit(FLAGS.limit_seconds or smp["seconds"])
                trials.append({"sampler": smp, "limit": lim, "loadavg_1min": os.getloadavg()[0]})
        finally:
            if limit is not None:
                limit.close()
        num_workers = sampler.num_workers
    per_core, per_core_cpu = single_core_limit(env_id, first, FLAGS.seed, FLAGS.limit_steps)

    def rate(x):
        return x["steps"] / x["seconds"]

    def cpu_rate(x):
        return None if not x["cpu"] else x["steps"] / x["cpu"]

    def r3(x, digits=3):
        return None if x is None else round(x, digits)

    rows = []
    for t in trials:
        s, l = t["sampler"], t["limit"]
        cpu_ratio = (None if cpu_rate(s) is None or cpu_rate(l) is None
                     else cpu_rate(s) / cpu_rate(l))
        rows.append({
            "sampler_steps_per_s": round(rate(s), 1), "limit_steps_per_s": round(rate(l), 1),
            "ratio": r3(rate(s) / rate(l)), "cpu_ratio": r3(cpu_ratio),
            "sampler_seconds": r3(s["seconds"]), "limit_seconds": r3(l["seconds"]),
            "policy_seconds": r3(s["policy_seconds"]),
            "sampler_cpu_seconds": r3(s["cpu"], 2), "limit_cpu_seconds": r3(l["cpu"], 2),
            "limit_per_process_steps_per_s": l["per_process_steps_per_s"],
            "other_load_cores_sampler": r3(s["other_load"], 2),
            "other_load_cores_limit": r3(l["other_load"], 2),
            "loadavg_1min": round(t["loadavg_1min"], 2)})

    def median(key):
        values = [row[key] for row in rows if row[key] is not None]
        return r3(statistics.median(values), 3) if values else None

    sampler_rate = statistics.median(row["sampler_steps_per_s"] for row in rows)
    return {
        "env": name, "env_id": env_id, "num_tasks": num_tasks, "rollouts": FLAGS.rollouts,
        "horizon": FLAGS.horizon, "env_steps": first.num_steps,
        "mean_episode_length": round(float(first.lengths.mean()), 1),
        "startup_seconds": round(startup, 3), "num_workers": num_workers, "cores": cores,
        "trials": len(rows),
        "sampler_steps_per_s": round(sampler_rate, 1),
        "limit_steps_per_s": round(statistics.median(row["limit_steps_per_s"] for row in rows), 1),
        "ratio": median("ratio"),  # median of the per-pair ratios
        "cpu_ratio": median("cpu_ratio"),
        "sampler_seconds": median("sampler_seconds"), "policy_seconds": median("policy_seconds"),
        "sampler_cpu_seconds": median("sampler_cpu_seconds"),
        "limit_single_core_x_cores_steps_per_s": round(per_core * cores, 1),
        "ratio_vs_single_core_x_cores": round(sampler_rate / (per_core * cores), 3),
        "mj_step_steps_per_s_per_core": round(per_core, 1),
        "mj_step_cpu_steps_per_s_per_core": round(per_core_cpu, 1),
        "loadavg_1min_before": round(load_before[0], 2),
        "loadavg_before": [round(x, 2) for x in load_before],
        "loadavg_after": [round(x, 2) for x in os.getloadavg()],
        "per_trial": rows,
    }


def main(argv):
    del argv
    for name in FLAGS.envs:
        print(json.dumps(benchmark(name)), flush=True)


if __name__ == "__main__":
    app.run(main)
