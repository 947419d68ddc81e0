"""Meta-training for the RL experiments (paper section 5.3): MAML-TRPO and its two trained baselines.

The task-specific entry points (``rl/train_navigation.py``, ``rl/train_halfcheetah_vel.py``, ...) are
thin files that call :func:`run` with their preset; all flags live here:

    python rl/train_navigation.py                           # MAML, paper settings, results/rl/navigation/maml
    python rl/train_navigation.py --method=pretrained       # TRPO on all tasks jointly (no inner step)
    python rl/train_navigation.py --method=oracle           # TRPO on the env that observes the task
    python rl/train_halfcheetah_vel.py --iterations=50 --logdir=/tmp/cheetah

Methods:
  maml        pre-update rollouts, one policy-gradient step per task (inner lr), post-update rollouts,
              TRPO on the meta-parameters (``rl.maml_trpo``)
  pretrained  TRPO on the tasks of each meta-batch jointly (tasks resampled every iteration), no inner step
  oracle      TRPO, no inner step, on the Oracle variant of the environment (task parameter in the observation)

Runs are resumable (the same command, or just ``--logdir``, continues from ``<logdir>/ckpt``, saved every
``--checkpoint_every`` iterations; the run's model and data settings (``--seed``, ``--inner_lr``,
``--meta_batch_size``, ...) come from its ``config.json`` where no flag is given, and a flag that contradicts
one is refused; the meta-optimiser's settings, ``--iterations`` and ``--max_kl`` among them, also default to
the run's own, and a flag that changes one is announced and recorded there under ``"changes"``); the best
iteration by average return (post-update for MAML) is kept in ``<logdir>/best`` (as in rllab, the
checkpoint of iteration i holds the parameters after its TRPO update, the return was measured just before
it). A resumed run computes what the uninterrupted one would have, bit for bit, and two runs of one command
agree (``--deterministic``, the default: TensorFlow's ops run one at a time). TensorBoard scalars are in
``<logdir>/tb``, every iteration's numbers in ``<logdir>/progress.csv``, the iterations reached, the training
clock and the best iteration in ``<logdir>/training.json`` (also when Ctrl-C or SIGTERM ends a session: then
with ``"interrupted": true``, after the checkpoint of the iteration it stopped at). Evaluate with
``rl/evaluate.py``.
"""

from __future__ import annotations

import csv
import json
import os
import sys
import time

from absl import app, flags

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# oneDNN's kernels: TensorFlow's default on CPUs with AVX-512; on CPUs without it they make the TRPO step's
# curvature products about 1.9x faster (benchmarks/maml_trpo.py, README). A user's value wins.
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")

import keras  # noqa: E402
import numpy as np  # noqa: E402

from maml_tf.cli import (WORKERS_MESSAGE, check_logdir, finite_non_negative, finite_positive,  # noqa: E402
                         one_op_at_a_time, one_sentence_errors, workers_ok)
from maml_tf.training import (Interrupted, TrainResult, check_config, check_iterations, exclusive_logdir,  # noqa: E402
                              has_checkpoint, train)
from rl import maml_trpo, policies  # noqa: E402
from rl.presets import (BASELINES, BATCH_BY, CURVATURES, INNER_SURROGATES, KL_CONSTRAINTS, METHODS, PRESETS,  # noqa: E402
                        RL_LAYOUTS, Preset, current_settings, recorded_config)
from rl.sampler import Sampler  # noqa: E402

FLAGS = flags.FLAGS


def define_flags(preset: Preset) -> None:
    """The flags of a task's entry point, with the task's paper settings as defaults (called by
    :func:`run`, so that importing this module defines no flags)."""
    flags.DEFINE_enum("method", "maml", METHODS, "maml, or a baseline: pretrained (TRPO on all tasks) or oracle.")
    flags.DEFINE_integer("iterations", preset.iterations, "Meta-iterations (paper: up to 500; navigation: the "
                         "authors' 100).")
    flags.DEFINE_integer("meta_batch_size", preset.meta_batch_size, "Tasks per meta-iteration.")
    flags.DEFINE_integer("rollouts_per_task", 20, "Episodes per task for the inner step and for the meta-update.")
    flags.DEFINE_integer("horizon", preset.horizon, "Episode length.")
    flags.DEFINE_float("inner_lr", preset.inner_lr, "Inner policy-gradient step size (navigation: see rl/presets.py).")
    flags.DEFINE_bool("first_order", False, "First-order MAML: do not differentiate through the inner gradient.")
    flags.DEFINE_float("max_kl", 0.01, "TRPO trust region: bound on the mean KL of the policies --kl_constraint "
                       "names.")
    flags.DEFINE_enum("kl_constraint", "post", KL_CONSTRAINTS,
                      "Which policies the trust region bounds: post, the post-update policies (the paper's "
                      "meta-objective and the authors' default, kl_constrain_step=-1); pre, the pre-update policy on "
                      "its rollouts (the authors' kl_constrain_step=0; TRPO's curvature of that KL); both, the "
                      "post-update step whose line search also requires the pre-update KL within --max_kl. "
                      "Not the paper's setting unless post; MAML only.")
    flags.DEFINE_enum("inner_surrogate", "reinforce", INNER_SURROGATES,
                      "The inner step's surrogate: reinforce, -mean(log pi A) (the paper's); lvc, -mean(pi / "
                      "stop_gradient(pi) A) (ProMP's low-variance-curvature surrogate: the same inner step, whose "
                      "Jacobian in the meta-gradient then keeps the score-function term the paper drops). lvc is "
                      "not the paper's estimator, a diagnostic; MAML only; fixed for a run.")
    flags.DEFINE_integer("cg_iterations", 10, "Conjugate-gradient iterations.")
    flags.DEFINE_float("cg_damping", 1e-5, "Damping added to the KL Hessian in conjugate gradient.")
    flags.DEFINE_enum("curvature", "gauss_newton", CURVATURES,
                      "How the KL Hessian-vector products are computed: gauss_newton and exact are both exact at "
                      "the current parameters; finite_difference is the authors' (rllab's FiniteDifferenceHvp with "
                      "their effective base_eps of 1: a secant of the meta-KL's gradient over theta +- v/|theta|, "
                      "all rollouts).")
    flags.DEFINE_float("hvp_subsample", 0.2, "Fraction of each task's post-update rollouts used for the KL's "
                       "Fisher matrix in the curvature, but at least 4 of them (or all); the inner step's Jacobian "
                       "always uses all pre-update rollouts.")
    flags.DEFINE_enum("baseline", "per_task", BASELINES,
                      "per_task: the linear baseline is fitted to each task's own episodes (as the authors' final "
                      "code); previous_task: rllab's original predict-then-fit order (each task's values from the "
                      "fit on the task before it).")
    flags.DEFINE_enum("batch_by", "steps", BATCH_BY,
                      "steps: each task's batch is at least rollouts_per_task x horizon environment steps in whole "
                      "episodes, an episode that ends early being followed by a new one (the authors' rllab samplers; "
                      "matters where episodes end early: navigation, ant); episodes: exactly rollouts_per_task "
                      "episodes per task. Runs that predate this flag resume with 'episodes'.")
    flags.DEFINE_bool("stratified_tasks", False, "Spread each meta-batch's tasks evenly over the family (half of "
                      "the directions each way, goal velocities one per bin) instead of independent draws (the "
                      "paper's); the same task distribution, less imbalance within a batch.")
    flags.DEFINE_bool("normalize_advantages", True, "Standardise advantages per task (rllab's center_adv).")
    flags.DEFINE_enum("layout", preset.layout, RL_LAYOUTS, "How per-task computations are laid out "
                      "(speed only: the half-cheetah's default, loop, is the faster one there, "
                      "benchmarks/maml_trpo.py).")
    flags.DEFINE_bool("jit_compile", preset.jit_compile, "Compile the KL curvature products with XLA (speed only; "
                      "the step axes are padded to a few sizes, each compiled once: worth it where the batch shapes "
                      "repeat, as the half-cheetah's do).")
    flags.DEFINE_integer("seed", 0, "Seed of the initial policy, the tasks and the rollouts.", lower_bound=0)
    flags.DEFINE_bool("deterministic", True, "Run TensorFlow's ops one at a time (each still on every core), so "
                      "that the same command repeats its numbers exactly and a resumed run repeats the uninterrupted "
                      "one; --nodeterministic lets independent ops run concurrently (numbers then vary in their last "
                      "digits from run to run, which RL amplifies; it was not faster, benchmarks/maml_trpo.py).")
    flags.DEFINE_integer("num_workers", None, "Sampler processes (default: one per CPU core; 0: in-process).")
    flags.DEFINE_string("logdir", None, "Checkpoints and logs (default: results/rl/<task>/<method>).")
    flags.DEFINE_integer("checkpoint_every", 1, "Iterations between checkpoints (a crash loses at most this many).")
    flags.DEFINE_integer("log_every", 1, "Iterations between progress lines.")

    flags.register_validator("iterations", lambda v: v >= 0, "--iterations must be >= 0.")
    for name in ("meta_batch_size", "horizon", "rollouts_per_task", "cg_iterations", "checkpoint_every", "log_every"):
        flags.register_validator(name, lambda v: v > 0, f"--{name} must be positive.")
    flags.register_validator("inner_lr", finite_positive, "--inner_lr must be a finite number > 0.")
    flags.register_validator("max_kl", finite_positive, "--max_kl must be a finite number > 0.")
    flags.register_validator("cg_damping", finite_non_negative, "--cg_damping must be a finite number >= 0.")
    flags.register_validator("hvp_subsample", lambda v: 0 < v <= 1, "--hvp_subsample must be in (0, 1].")
    flags.register_validator("num_workers", workers_ok, WORKERS_MESSAGE)


# Settings that a resumed run must share with the run in its log directory.
MODEL_KEYS = ("task", "method", "env_id", "seed", "meta_batch_size", "rollouts_per_task", "horizon", "inner_lr",
              "first_order", "normalize_advantages", "baseline", "batch_by", "stratified_tasks", "inner_surrogate")
# What runs made before a setting existed did; they resume with it (a flag asking otherwise is refused).
PREDATING_DEFAULTS = {"batch_by": ("episodes", "sampled by episodes"),
                      "stratified_tasks": (False, "drew each batch's tasks independently"),
                      "inner_surrogate": ("reinforce", "adapted with the REINFORCE surrogate")}
# Settings of the meta-optimiser that a resumed run takes from its config.json unless the flag is given
# again; a changed value is announced and recorded in config.json under "changes" (a new iteration
# count simply replaces the recorded one).
RESUMED_KEYS = ("iterations", "max_kl", "kl_constraint", "cg_iterations", "cg_damping", "curvature",
                "hvp_subsample", "layout", "jit_compile", "deterministic")
# What runs recorded before one of the RESUMED_KEYS existed did (runs before --jit_compile had no XLA, runs
# before --deterministic ran ops concurrently): such a run resumes with it, like any recorded value, and a
# flag asking otherwise is recorded as a change.
RESUMED_PREDATING = {"jit_compile": False, "deterministic": False, "kl_constraint": "post"}
# Settings of the model and its data (MODEL_KEYS set by flags) that a resumed run takes from its config.json
# when the flag is not given: resuming needs only --logdir. A flag given with another value is refused.
ADOPTED_KEYS = ("seed", "meta_batch_size", "rollouts_per_task", "horizon", "inner_lr", "first_order",
                "normalize_advantages", "baseline", "batch_by", "stratified_tasks", "inner_surrogate")


def settings(task: str) -> dict:
    """The run's settings: the flags with the task's preset filled in."""
    p = PRESETS[task]
    method = FLAGS.method
    return {
        "task": task, "method": method,
        "env_id": p.oracle_env_id if method == "oracle" else p.env_id,
        "iterations": FLAGS.iterations,
        "meta_batch_size": FLAGS.meta_batch_size,
        "rollouts_per_task": FLAGS.rollouts_per_task,
        "horizon": FLAGS.horizon,
        "inner_lr": FLAGS.inner_lr,
        "inner_steps": 1 if method == "maml" else 0,
        "first_order": FLAGS.first_order, "max_kl": FLAGS.max_kl, "kl_constraint": FLAGS.kl_constraint,
        "cg_iterations": FLAGS.cg_iterations,
        "cg_damping": FLAGS.cg_damping, "curvature": FLAGS.curvature, "hvp_subsample": FLAGS.hvp_subsample,
        "normalize_advantages": FLAGS.normalize_advantages, "layout": FLAGS.layout,
        "jit_compile": FLAGS.jit_compile, "baseline": FLAGS.baseline,
        "batch_by": FLAGS.batch_by, "stratified_tasks": FLAGS.stratified_tasks,
        "inner_surrogate": FLAGS.inner_surrogate,
        "discount": 0.99, "gae_lambda": 1.0, "hidden": [100, 100], "init_std": 1.0,
        "seed": FLAGS.seed, "deterministic": FLAGS.deterministic,
        "logdir": FLAGS.logdir or os.path.join("results", "rl", task, method),
    }


def build_policy(sampler: Sampler, seed: int) -> keras.Model:
    keras.utils.set_random_seed(seed)
    return policies.gaussian_mlp_policy(sampler.obs_dim, sampler.act_dim, hidden=(100, 100), init_std=1.0, seed=seed)


def iteration_seed(seed: int, iteration: int) -> int:
    return int(np.random.SeedSequence([seed, iteration]).generate_state(1)[0] % (2**31 - 2))


class ProgressCSV:
    """Appends every iteration's metrics to <logdir>/progress.csv (rows past a resumed checkpoint are
    dropped first, so the file matches the checkpointed run)."""

    def __init__(self, path: str, start: int):
        self.path, self.fields = path, None
        if os.path.exists(path):
            with open(path, newline="") as f:
                rows = [r for r in csv.DictReader(f) if int(r["iteration"]) <= start]
            if rows:
                self.fields = list(rows[0].keys())
            with open(path, "w", newline="") as f:
                if self.fields:
                    w = csv.DictWriter(f, self.fields)
                    w.writeheader()
                    w.writerows(rows)

    def append(self, iteration: int, metrics: dict) -> None:
        row = {"iteration": iteration, **{k: f"{v:.6g}" for k, v in metrics.items()}}
        new = self.fields is None
        if new:
            self.fields = list(row)
        with open(self.path, "a", newline="") as f:
            w = csv.DictWriter(f, self.fields, extrasaction="ignore")
            if new:
                w.writeheader()
            w.writerow(row)


def _adopt_recorded(s: dict, recorded: dict) -> dict:
    """Where ``logdir`` holds a run (``recorded``, its config.json), take its ADOPTED_KEYS where no flag
    gives them (so that a run trained with, say, --inner_lr=0.3 resumes with it, not with the preset's
    value); returns those that differ from the flags' defaults, to announce once the resume is accepted."""
    adopted = {}
    for key in ADOPTED_KEYS:
        if key in recorded and not FLAGS[key].present and s[key] != recorded[key]:
            s[key] = adopted[key] = recorded[key]
    return adopted


def _resume_settings(name: str, logdir: str, s: dict, recorded: dict, start: int) -> None:
    """On resume, fill ``s`` with the run's own optimiser settings where no flag was given, and record
    the ones a flag changes (so that e.g. a run trained with --max_kl=0.005 does not silently go on
    with the default 0.01), and a new ``logdir`` when a copy of the run is resumed in another folder."""
    current = {**RESUMED_PREDATING, **current_settings(recorded)}
    changed, rewrite = {}, False
    for key in RESUMED_KEYS:
        if key not in current:
            continue
        if not FLAGS[key].present:
            s[key] = current[key]
        elif key == "iterations":  # extending a run is the usual resume: the new total becomes the run's
            rewrite |= s[key] != recorded[key]
            recorded[key] = s[key]
        elif s[key] != current[key]:
            changed[key] = s[key]
            print(f"[{name}] resuming at iteration {start} with {key}={s[key]!r} (the run so far: "
                  f"{current[key]!r})", flush=True)
    if "logdir" in current and os.path.realpath(current["logdir"]) != os.path.realpath(s["logdir"]):
        changed["logdir"] = s["logdir"]  # a copied run resumed elsewhere: where its later iterations ran
        print(f"[{name}] resuming at iteration {start} in {s['logdir']} (the run so far: {current['logdir']})",
              flush=True)
    if changed:
        recorded.setdefault("changes", []).append({"from_iteration": start, **changed})
    if changed or rewrite:
        with open(os.path.join(logdir, "config.json"), "w") as f:
            json.dump(recorded, f, indent=2, sort_keys=True)


def train_task(task: str) -> dict:
    s = settings(task)
    logdir = s["logdir"]
    check_logdir(logdir)
    if s["method"] != "maml":
        for key in ("first_order", "inner_lr", "kl_constraint", "inner_surrogate"):
            if FLAGS[key].present:
                raise ValueError(f"--{key} applies to --method=maml only (the {s['method']} baseline has no inner "
                                 f"step).")
    if FLAGS["hvp_subsample"].present and s["curvature"] != "gauss_newton":
        raise ValueError(f"--hvp_subsample applies to --curvature=gauss_newton only; --curvature={s['curvature']} "
                         f"uses every rollout.")
    with exclusive_logdir(logdir):  # a second run on this folder stops here, before touching its files
        return _train_in(task, s, logdir)


def _train_in(task: str, s: dict, logdir: str) -> dict:
    """:func:`train_task` once its flags are checked, holding ``logdir``."""
    # a config.json beside no checkpoint is that of a start that failed: it binds nothing
    recorded = recorded_config(logdir) if has_checkpoint(logdir) else {}
    # without --iterations: the run's own
    iterations = s["iterations"] if FLAGS["iterations"].present else current_settings(recorded).get(
        "iterations", s["iterations"])
    start = check_iterations(logdir, iterations, to_evaluate="rl/evaluate.py")
    for key, (then, what) in PREDATING_DEFAULTS.items():
        if recorded and key not in recorded:
            if FLAGS[key].present and FLAGS[key].value != then:
                raise ValueError(f"{logdir} holds a run from before --{key}, which {what}; "
                                 f"resume it without --{key} or use another --logdir.")
            s[key] = then  # what the run was trained with
    name = f"{task}/{s['method']}"
    adopted = _adopt_recorded(s, recorded)
    check_config(logdir, s, MODEL_KEYS)
    if recorded and start == iterations:  # a finished run: leave its files as they are
        print(f"[{name}] {logdir} is at iteration {start} already: nothing to train; pass a larger --iterations to "
              f"extend it, or evaluate it with rl/evaluate.py.", flush=True)
        return {"task": task, "method": s["method"], "iterations": start}
    if adopted:
        said = ", ".join(f"{k}={v!r}" for k, v in adopted.items())
        print(f"[{name}] resuming with the run's own {said} (from {os.path.join(logdir, 'config.json')})", flush=True)
    if recorded:
        _resume_settings(name, logdir, s, recorded, start)
    if s["deterministic"]:  # (before TensorFlow runs its first op: nothing above runs one)
        one_op_at_a_time()
    config = maml_trpo.Config.from_settings(s)
    with Sampler(s["env_id"], num_workers=FLAGS.num_workers, horizon=s["horizon"]) as sampler:
        model = build_policy(sampler, s["seed"])
        learner = maml_trpo.MAMLTRPO(model, sampler, config)
        progress = ProgressCSV(os.path.join(logdir, "progress.csv"), start)
        counter = {"i": start}

        def batch_for_iteration(i: int) -> maml_trpo.IterationBatch:
            counter["i"] = i
            # depends only on the iteration, so a resumed run draws the same tasks and rollout seeds (and with
            # --deterministic and the learner's relaxed traces computes the same values as an uninterrupted run)
            rng = np.random.default_rng([s["seed"], i])
            return maml_trpo.IterationBatch(sampler.sample_tasks(s["meta_batch_size"], rng, s["stratified_tasks"]),
                                           iteration_seed(s["seed"], i))

        def step(batch):
            metrics = learner.step(batch)
            progress.append(counter["i"] + 1, metrics)
            shown = {k: metrics[k] for k in ("pre_return", "post_return", "kl", "step_fraction", "iteration_s")
                     if k in metrics}
            return shown

        t0 = time.time()
        try:
            result = train(model, None, step, batch_for_iteration, s["iterations"], logdir,
                           checkpoint_every=FLAGS.checkpoint_every, log_every=FLAGS.log_every,
                           validate=lambda i, wall: learner.score(), validate_every=1, name=name, verbose=True,
                           extra_state=learner.state)
        except Interrupted as stopped:  # Ctrl-C or SIGTERM: the checkpoint is saved; say where the run got to
            if stopped.result is not None:
                write_training_json(logdir, stopped.result, s, t0, interrupted=True)
            raise
    summary = write_training_json(logdir, result, s, t0)
    print(f"[{name}] done: {json.dumps(summary)}", flush=True)
    return summary


def write_training_json(logdir: str, result: TrainResult, s: dict, t0: float, interrupted: bool = False) -> dict:
    """``<logdir>/training.json``: the iterations reached (``"interrupted": true`` when a signal ended the
    session before ``settings["iterations"]``), the training clock, the best iteration and the settings."""
    summary = {"task": s["task"], "method": s["method"], "iterations": result.iterations,
               "wall_time_s": round(result.wall_time_s, 1), "best_score": result.best_score,
               "best_iteration": result.best_iteration, "session_s": round(time.time() - t0, 1)}
    if interrupted:
        summary["interrupted"] = True
    with open(os.path.join(logdir, "training.json"), "w") as f:
        json.dump({**summary, "settings": s}, f, indent=2)
    return summary


def run(task: str) -> None:
    """The ``__main__`` of a task's entry point."""
    if task not in PRESETS:
        raise ValueError(f"Unknown task {task!r}; choose one of {sorted(PRESETS)}.")
    before = set(FLAGS)
    define_flags(PRESETS[task])
    for name in sorted(set(FLAGS) - before):  # --help of the task's entry point lists them
        FLAGS.register_key_flag_for_module(sys.argv[0], FLAGS[name])

    @one_sentence_errors
    def main(argv):
        train_task(task)
        return 0

    app.run(main)
