r"""Benchmark: seconds per MAML-TRPO meta-iteration at the paper's half-cheetah settings.

One meta-iteration = pre-update rollouts (40 tasks x 20 rollouts x 200 steps), one inner
policy-gradient step per task, post-update rollouts (the same size again), and the TRPO step on the
meta-parameters (second-order meta-gradient, 10 conjugate-gradient iterations with KL Hessian-vector
products, backtracking line search). Runs ``--warmup`` iterations first (tracing, environment
creation, XLA compilation), then times ``--iterations`` more and prints one JSON line with the means:

    s_per_iter   wall time of a whole meta-iteration (also s_per_iter_median and s_each_iter)
    sampling_s   both batches of rollouts (physics in worker processes + policy evaluation)
    inner_s      advantages and baseline fits of the pre-update batch and the per-task inner step
    trpo_s       advantages of the post-update batch and the TRPO update; split into trpo_gradient_s
                 (loss and meta-gradient), trpo_hvp_s (all conjugate-gradient products) and
                 trpo_line_search_s

    python benchmarks/maml_trpo.py
    python benchmarks/maml_trpo.py --curvature=exact --hvp_subsample=1.0
    python benchmarks/maml_trpo.py --num_tasks=8                      # smaller batch
    python benchmarks/maml_trpo.py --layout=vectorized --nojit_compile  # the settings before 2026-11-23

It runs with the task's training settings (rl/presets.py: for the half-cheetah the loop layout and XLA
for the curvature products; TensorFlow's ops one at a time) and, like rl/train.py, with oneDNN's kernels
unless TF_ENABLE_ONEDNN_OPTS is set.
"""

import json
import os
import sys
import time

from absl import app, flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # this checkout's packages first

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# as rl/train.py (TF_ENABLE_ONEDNN_OPTS=0 in front measures without)
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")

# No TensorFlow at the top: the sampler's worker processes re-import this file (main imports the learner).
from maml_tf.cli import one_op_at_a_time, quiet_tensorflow  # noqa: E402
from rl.presets import CURVATURES, PRESETS, RL_LAYOUTS  # noqa: E402

flags.DEFINE_enum("task", "halfcheetah_vel", sorted(PRESETS), "Environment family (its preset's env id).")
flags.DEFINE_integer("num_tasks", 40, "Meta-batch size (paper: 40).", lower_bound=1)
flags.DEFINE_integer("rollouts", 20, "Rollouts per task (paper: 20).", lower_bound=1)
flags.DEFINE_integer("horizon", 200, "Steps per episode (paper: 200).", lower_bound=1)
flags.DEFINE_integer("iterations", 2, "Timed meta-iterations.", lower_bound=1)
flags.DEFINE_integer("warmup", 1, "Untimed meta-iterations first (tracing).", lower_bound=0)
flags.DEFINE_enum("curvature", "gauss_newton", CURVATURES, "KL Hessian-vector products.")
flags.DEFINE_float("hvp_subsample", 0.2,
                   "Fraction of post-update rollouts used for the Fisher matrix in the curvature.",
                   lower_bound=0.0, upper_bound=1.0)
flags.DEFINE_bool("first_order", False, "First-order MAML.")
flags.DEFINE_enum("layout", None, RL_LAYOUTS, "Per-task layout (default: the task's training default, "
                  "rl/presets.py).")
flags.DEFINE_bool("jit_compile", None, "Compile the curvature products with XLA (default: the task's training "
                  "default, rl/presets.py).")
flags.DEFINE_integer("num_workers", None, "Sampler processes (default: one per core).", lower_bound=0)
flags.DEFINE_integer("seed", 0, "Seed.", lower_bound=0)
flags.DEFINE_bool("deterministic", True, "TensorFlow's ops one at a time, as rl/train.py runs them by default "
                  "(--nodeterministic: concurrently).")
FLAGS = flags.FLAGS

KEYS = ("iteration_s", "sampling_s", "inner_s", "trpo_s", "trpo_gradient_s", "trpo_hvp_s", "trpo_line_search_s",
        "env_steps", "backtracks")


def main(argv):
    del argv
    if FLAGS.deterministic:
        one_op_at_a_time()
    quiet_tensorflow()
    import numpy as np

    from rl import maml_trpo, policies
    from rl.sampler import Sampler, default_num_workers

    preset = PRESETS[FLAGS.task]
    layout = FLAGS.layout or preset.layout
    jit_compile = preset.jit_compile if FLAGS.jit_compile is None else FLAGS.jit_compile
    config = maml_trpo.Config(rollouts_per_task=FLAGS.rollouts, inner_lr=0.1, first_order=FLAGS.first_order,
                              curvature=FLAGS.curvature, hvp_subsample=FLAGS.hvp_subsample, layout=layout,
                              jit_compile=jit_compile)
    load_before = os.getloadavg()[0]
    with Sampler(preset.env_id, num_workers=FLAGS.num_workers, horizon=FLAGS.horizon) as sampler:
        sampler.reserve(FLAGS.num_tasks * FLAGS.rollouts)
        model = policies.gaussian_mlp_policy(sampler.obs_dim, sampler.act_dim, seed=FLAGS.seed)
        learner = maml_trpo.MAMLTRPO(model, sampler, config)
        rng = np.random.default_rng(FLAGS.seed)
        t0 = time.perf_counter()
        for i in range(FLAGS.warmup):
            learner.step(maml_trpo.IterationBatch(sampler.sample_tasks(FLAGS.num_tasks, rng), seed=1000 + 2 * i))
        warmup_s = time.perf_counter() - t0
        runs = []
        for i in range(FLAGS.iterations):
            t = time.perf_counter()
            m = learner.step(maml_trpo.IterationBatch(sampler.sample_tasks(FLAGS.num_tasks, rng), seed=2 * i))
            m["wall_s"] = time.perf_counter() - t
            runs.append(m)
    mean = {k: float(np.mean([r[k] for r in runs])) for k in (*KEYS, "wall_s")}
    out = {
        "benchmark": "maml_trpo", "task": FLAGS.task, "num_tasks": FLAGS.num_tasks, "rollouts": FLAGS.rollouts,
        "horizon": FLAGS.horizon, "curvature": FLAGS.curvature, "hvp_subsample": FLAGS.hvp_subsample,
        "first_order": FLAGS.first_order, "layout": layout, "jit_compile": jit_compile,
        "deterministic": FLAGS.deterministic,
        "s_per_iter": round(mean["wall_s"], 2),
        "s_per_iter_median": round(float(np.median([r["wall_s"] for r in runs])), 2),
        "s_each_iter": [round(r["wall_s"], 2) for r in runs],
        **{k: round(mean[k], 2) for k in ("sampling_s", "inner_s", "trpo_s", "trpo_gradient_s", "trpo_hvp_s",
                                          "trpo_line_search_s")},
        "line_search_backtracks": mean["backtracks"],
        "env_steps_per_iter": int(mean["env_steps"]),
        "sampler_steps_per_s": round(mean["env_steps"] / mean["sampling_s"]),
        "warmup_s": round(warmup_s, 1), "timed_iterations": FLAGS.iterations,
        "num_workers": FLAGS.num_workers if FLAGS.num_workers is not None else default_num_workers(),
        "cores": os.cpu_count(), "loadavg_1min_before": round(load_before, 2),
        "loadavg_1min_after": round(os.getloadavg()[0], 2),
    }
    print(json.dumps(out), flush=True)


if __name__ == "__main__":
    app.run(main)
