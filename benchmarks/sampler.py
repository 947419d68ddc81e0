r"""Benchmark: environment steps per second of rl.sampler.Sampler against the physics limit.

For each model (half-cheetah, ant) this collects one batch at the paper's size (40 tasks x 20
rollouts x 200 steps; --scale shrinks the number of tasks) with a random Gaussian MLP policy
(2 x 100 ReLU, std 1, numpy; its inference is included in the time), then measures the physics
limit on the same workload: it replays episodes of that batch (same initial states and actions)
with nothing but ``data.ctrl[:] = a; mujoco.mj_step(model, data, nstep=frame_skip)`` in a loop on
one core, and multiplies that speed by the number of cores. Prints one JSON line per model.

    python benchmarks/sampler.py                 # paper batch
    python benchmarks/sampler.py --scale=0.1     # 4 tasks x 20 rollouts
"""

import json
import math
import os
import time

import mujoco
import numpy as np
from absl import app, flags

import rl.envs
from rl.sampler import Sampler, default_num_workers, rollout_seed

ENV_IDS = {"halfcheetah": "maml_tf/HalfCheetahVel-v0", "ant": "maml_tf/AntVel-v0"}

flags.DEFINE_list("envs", ["halfcheetah", "ant"], "Models to benchmark: halfcheetah, ant.")
flags.DEFINE_integer("num_tasks", 40, "Tasks per batch (paper: 40).", lower_bound=1)
flags.DEFINE_integer("rollouts", 20, "Rollouts per task (paper: 20).", lower_bound=1)
flags.DEFINE_integer("horizon", 200, "Steps per episode (paper: 200).", lower_bound=1)
flags.DEFINE_float("scale", 1.0, "Fraction of --num_tasks to run (at least one task).",
                   lower_bound=0.0, upper_bound=1.0)
flags.DEFINE_integer("num_workers", None, "Sampler worker processes (default: one per core).",
                     lower_bound=0)
flags.DEFINE_integer("limit_steps", 20000, "Environment steps replayed to measure the limit.",
                     lower_bound=1)
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


def physics_limit(env_id, episodes, seed, max_steps):
    """Single-core env steps/s of a bare mj_step loop replaying the batch's episodes: wall clock
    and CPU time."""
    steps, seconds, cpu = 0, 0.0, 0.0
    for m, r in np.ndindex(episodes.lengths.shape):
        env = rl.envs.make_raw(env_id, task=episodes.tasks[m])
        env.reset(seed=rollout_seed(seed, m, r))  # the episode's initial state
        model, data, frame_skip = env.model, env.data, env.frame_skip
        actions = np.clip(episodes.actions[m, r, :episodes.lengths[m, r]], -1.0, 1.0)
        actions = actions.astype(np.float64)
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


def benchmark(name):
    env_id = ENV_IDS[name]
    num_tasks = max(1, math.ceil(FLAGS.num_tasks * FLAGS.scale))
    rng = np.random.default_rng(FLAGS.seed)
    load = os.getloadavg()[0]
    start = time.perf_counter()
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
        workers_cpu = cpu_seconds(sampler.worker_pids)
        start, start_cpu = time.perf_counter(), time.process_time()
        episodes = sampler.sample(tasks, timed_policy, FLAGS.rollouts, seed=FLAGS.seed)
        seconds, main_cpu = time.perf_counter() - start, time.process_time() - start_cpu
        if workers_cpu is not None:
            workers_cpu = cpu_seconds(sampler.worker_pids) - workers_cpu
        num_workers = sampler.num_workers
    cores = default_num_workers()
    per_core, per_core_cpu = physics_limit(env_id, episodes, FLAGS.seed, FLAGS.limit_steps)
    sampler_rate = episodes.num_steps / seconds
    # CPU-time efficiency: physics CPU per step over the sampler's CPU per step (all processes).
    # Unlike `ratio` it is insensitive to other jobs on the machine (but blind to idle waits).
    sampler_cpu = main_cpu + (workers_cpu or 0.0) if workers_cpu is not None or not num_workers else None
    cpu_ratio = None if sampler_cpu is None else episodes.num_steps / sampler_cpu / per_core_cpu
    return {
        "env": name, "env_id": env_id, "num_tasks": num_tasks, "rollouts": FLAGS.rollouts,
        "horizon": FLAGS.horizon, "env_steps": episodes.num_steps,
        "mean_episode_length": round(float(episodes.lengths.mean()), 1),
        "sampler_seconds": round(seconds, 3), "policy_seconds": round(policy_seconds[0], 3),
        "startup_seconds": round(startup, 3), "num_workers": num_workers, "cores": cores,
        "sampler_steps_per_s": round(sampler_rate, 1),
        "mj_step_steps_per_s_per_core": round(per_core, 1),
        "limit_steps_per_s": round(per_core * cores, 1),
        "ratio": round(sampler_rate / (per_core * cores), 3),
        "sampler_cpu_seconds": sampler_cpu and round(sampler_cpu, 2),
        "cpu_ratio": cpu_ratio and round(cpu_ratio, 3),
        "loadavg_1min_before": round(load, 2),
    }


def main(argv):
    del argv
    for name in FLAGS.envs:
        print(json.dumps(benchmark(name)), flush=True)


if __name__ == "__main__":
    app.run(main)
