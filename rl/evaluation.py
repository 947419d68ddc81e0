"""Evaluation of RL meta-training runs (paper section 5.3, Figures 4-5): average return after 0, 1, 2, 3
policy-gradient steps on 40 test tasks, for MAML and the baselines, with the authors' test protocol.

:func:`evaluate` fine-tunes each method on the same test tasks with the same seeds and returns the
metrics (the layout of ``results/rl/<task>/metrics.json``); :func:`write` saves them with the figure.
``rl/evaluate.py`` is the command line for both; from Python::

    from rl import evaluation
    metrics = evaluation.evaluate("navigation", "results/rl/navigation", methods=["maml", "random"])

Methods:
  maml        the meta-trained policy (best checkpoint of <logdir>/maml)
  pretrained  the policy trained with TRPO on all tasks jointly (<logdir>/pretrained)
  random      a freshly initialised policy (ReLU, as the paper's policy; tanh for 2D navigation, as the
              authors' test script for that task builds it: ``TestProtocol.random_activation``)
  oracle      the policy trained on the environment that observes the task; evaluated without
              fine-tuning (0 steps), on its own environment
Every trained method runs on the environment id recorded in its run's config.json (the random
initialisation on MAML's), so runs made on the ``-v0`` environments stay re-evaluable; runs of
different environment versions are not evaluated together.
Each step samples fresh rollouts of the current (adapted) policy, reports their average return, and
takes one vanilla policy-gradient step (linear baseline refitted per task, gamma 0.99, GAE lambda 1,
advantages standardised per task; the same loss as the inner step of meta-training).

The test protocol follows the authors' test scripts (maml_examples/test_maml_*.py of their RL code),
whose results the paper reports (``TEST_PROTOCOL``): every step samples 4000 environment steps per
task (40 rollouts of 100 steps for navigation, 20 of 200 for locomotion; 8000 steps, 40 rollouts,
for ant forward/backward); the first step size is per method (MAML: its meta-training inner lr;
pretrained and random: the authors' values, e.g. 0.02 and 0.1 for half-cheetah velocity), later steps
take half of it (a hundredth for ant forward/backward). Like the authors' sampler, a step's batch is
a budget of rollouts x horizon environment steps per task in whole episodes, so where episodes end
early (navigation near the goal, a falling ant) more episodes are sampled (``batch_by``; default:
what the MAML run was trained with, ``episodes`` for runs that predate the option, so committed
results re-evaluate to their numbers). ``rollouts_per_task`` and ``test_lr`` override the protocol
for every method. The metrics hold means and standard errors, and each test task's parameters under
``tasks`` with its returns under ``results.<method>.per_task``.

Test tasks: ``test_tasks="authors"`` (the default since 2026-12-05) takes the ones of the authors' test
scripts, on which the paper's returns were measured: legacy NumPy seeded with ``np.random.seed(1)`` (2 for
ant forward/backward), then ``np.random.uniform(low, high, size=n)``: 2D goals in [-0.5, 0.5]^2, goal
velocities in [0, 2] (half-cheetah) or [0, 3] (ant), and for forward/backward a number in [0, 2] or
[0, 3] whose lower half means backward (their environments' ``goal_direction``); ``TestProtocol.goals``
holds those settings. ``"seeded"`` draws them from the task family with ``np.random.default_rng(seed)``
(evaluations made before 2026-12-05 did that, with seed 1; their metrics.json has no ``config.test_tasks``).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import time
from typing import Sequence

import keras
import numpy as np
import tensorflow as tf

from maml_tf import paper
from maml_tf.cli import machine_info
from maml_tf.training import make_checkpoint, restore
from rl import maml_trpo, policies
from rl.presets import ACTIVATIONS, ALL_METHODS, BATCH_BY, METHODS, PRESETS, recorded_config
from rl.sampler import Sampler

@dataclasses.dataclass(frozen=True)
class TestProtocol:
    """The authors' test settings for one task (their maml_examples/test_maml_*.py)."""

    rollouts: int               # per task and step (their VPG batch_size / horizon)
    first_lr: dict              # method -> first step size (MAML: None = its meta-training inner lr)
    # the test tasks of their script: (legacy NumPy seed, low, high, goal shape, direction threshold or None)
    goals: tuple
    later_factor: float = 0.5   # later steps use first_lr * later_factor
    # hidden activation of the random initialisation: their scripts build it with ReLU, except the 2D-navigation
    # one (test_maml_point.py), which passes no hidden_nonlinearity and so gets their policy class's default, tanh
    random_activation: str = "relu"


TEST_PROTOCOL = {
    "navigation": TestProtocol(40, {"maml": None, "pretrained": 0.5, "random": 0.5},
                               goals=(1, -0.5, 0.5, (2,), None), random_activation="tanh"),
    "halfcheetah_vel": TestProtocol(20, {"maml": None, "pretrained": 0.02, "random": 0.1},
                                    goals=(1, 0.0, 2.0, (), None)),
    "halfcheetah_dir": TestProtocol(20, {"maml": None, "pretrained": 0.2, "random": 1.0},
                                    goals=(1, 0.0, 2.0, (), 1.0)),
    "ant_vel": TestProtocol(20, {"maml": None, "pretrained": 0.2, "random": 1.0},
                            goals=(1, 0.0, 3.0, (), None)),
    "ant_dir": TestProtocol(40, {"maml": None, "pretrained": 0.2, "random": 1.0},
                            goals=(2, 0.0, 3.0, (), 1.5), later_factor=0.01),
}
TEST_TASKS = ("seeded", "authors")


def authors_test_tasks(task: str, num_tasks: int = 40) -> np.ndarray:
    """The test tasks of the authors' test script for ``task`` (the first ``num_tasks`` of its draws; it
    draws 40): goal velocities, directions (+1 / -1) or 2D goals, as ``Sampler.sample_tasks`` returns them."""
    seed, low, high, shape, threshold = TEST_PROTOCOL[task].goals
    draws = np.random.RandomState(seed).uniform(low, high, size=(num_tasks,) + tuple(shape))
    if threshold is None:
        return draws
    return np.where(draws < threshold, -1.0, 1.0)


def step_sizes(task: str, method: str, maml_inner_lr: float, steps: int, test_lr: float | None = None) -> list:
    """The step sizes of ``method``'s ``steps`` test steps (empty for the oracle, which is not fine-tuned);
    ``test_lr`` replaces the protocol's first step size."""
    protocol = TEST_PROTOCOL[task]
    if method == "oracle" or steps == 0:
        return []
    first = test_lr or protocol.first_lr.get(method) or maml_inner_lr
    return [first] + [first * protocol.later_factor] * (steps - 1)


def load_policy(logdir: str, method: str, sampler: Sampler, checkpoint: str = "best", task: str | None = None):
    """The trained policy of ``method`` (its run is ``<logdir>/<method>``; ``checkpoint`` "best", falling
    back to the latest, or "latest") and {checkpoint, its iteration, the iterations trained, wall time}.
    ``task`` only names the training script in the error raised when there is no checkpoint."""
    run = os.path.join(logdir, method)
    model = policies.gaussian_mlp_policy(sampler.obs_dim, sampler.act_dim, name=f"policy_{method}")
    ckpt = make_checkpoint(model, None)
    dirs = _checkpoint_dirs(checkpoint)
    latest = tf.train.latest_checkpoint(os.path.join(run, "ckpt"))
    trained = int(latest.rsplit("-", 1)[1]) if latest else None
    # the run's training time up to its latest checkpoint (the evaluated one may be an earlier, best one)
    trained_s = float(tf.train.load_variable(latest, "wall_time/.ATTRIBUTES/VARIABLE_VALUE")) if latest else None
    for d in dirs:
        if restore(ckpt, os.path.join(run, d), what=f"{method} checkpoint") is not None:
            return model, {"checkpoint": d, "iteration": int(ckpt.iteration.numpy()),
                           "trained_iterations": trained, "wall_time_s": round(float(ckpt.wall_time.numpy()), 1),
                           "trained_wall_time_s": None if trained_s is None else round(trained_s, 1)}
    script = f"rl/train_{task}.py" if task else "the task's rl/train_<task>.py"
    raise FileNotFoundError(f"No {method} checkpoint in {run}; train it first ({script} --method={method} "
                            f"--logdir={run}).")


def summarize(per_task: np.ndarray) -> dict:
    n = per_task.shape[0]
    return {"returns": per_task.mean(axis=0).tolist(),
            "stderr": (per_task.std(axis=0, ddof=1) / np.sqrt(n)).tolist(),
            "num_tasks": int(n)}


def tasks_label(metrics: dict) -> str:
    """Whose test tasks a metrics.json measured on, for figure titles: evaluations before 2026-12-05 record no
    ``config.test_tasks`` and used seeded ones."""
    config = metrics.get("config", {})
    n = config.get("num_tasks") or metrics["results"][next(iter(metrics["results"]))]["num_tasks"]
    if config.get("test_tasks", "seeded") == "authors":
        return f"the authors' {n} test tasks"
    return f"{n} seeded test tasks (seed {metrics.get('seed', '?')})"


def figure(task: str, results: dict, path: str, tasks: str) -> None:
    """The paper's Figure 4/5 style: return after 0..S steps per method, ours with standard errors, the
    paper's points marked; ``tasks`` (``tasks_label``) names the test tasks in the title."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colors = {"maml": "tab:green", "pretrained": "tab:red", "random": "tab:blue", "oracle": "tab:gray"}
    labels = {"maml": "MAML", "pretrained": "pretrained", "random": "random init", "oracle": "oracle"}
    ref = paper.RL[task]
    fig, ax = plt.subplots(figsize=(6, 4.2))
    steps = max(len(r["returns"]) for r in results.values())
    for method, r in results.items():
        c = colors[method]
        if method == "oracle":
            ax.axhline(r["returns"][0], color=c, ls="--", label=f"{labels[method]} (ours)")
            ax.axhline(ref["oracle"]["returns"][0], color=c, ls=":", label=f"{labels[method]} (paper)")
            continue
        n = np.arange(len(r["returns"]))
        ax.errorbar(n, r["returns"], yerr=r["stderr"], color=c, marker="o", ms=4, capsize=3,
                    label=f"{labels[method]} (ours)")
        p = ref[method]["returns"]
        ax.plot(np.arange(len(p)), p, color=c, marker="x", ms=9, mew=2, ls=":", lw=1, label=f"{labels[method]} (paper)")
    ax.set_xticks(range(max(steps, 4)))
    ax.set_xlabel("number of gradient steps")
    ax.set_ylabel("average return")
    ax.set_title(f"{task}: return after fine-tuning\n({tasks})", fontsize=10)
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _check_runs(task: str, logdir: str, methods_given: bool) -> dict:
    """The recorded settings of the runs in ``logdir`` by trained method ({} where there is none), after
    checking that ``logdir`` is the folder of ``task``'s runs."""
    if os.path.isfile(logdir):
        raise NotADirectoryError(f"{logdir} is a file, not the folder of a task's runs.")
    own = recorded_config(logdir)
    if own.get("method"):
        raise ValueError(f"{logdir} is one {own['method']} run; pass its parent folder, which holds the methods' "
                         f"runs as maml/, pretrained/, oracle/.")
    runs = {m: recorded_config(os.path.join(logdir, m)) for m in METHODS}
    for method, settings in runs.items():
        if settings.get("task", task) != task:
            raise ValueError(f"{os.path.join(logdir, method)} is a {settings['task']!r} run, not {task!r}; "
                             f"evaluate it as {settings['task']!r} or pass the folder of {task!r} runs.")
    if not any(runs.values()) and not methods_given:
        raise FileNotFoundError(f"No trained run in {logdir} (it has no maml/, pretrained/ or oracle/ run); "
                                f"pass the folder of a task's runs, or ask for the method random alone to evaluate "
                                f"only a random initialisation.")
    return runs


def _checkpoint_dirs(checkpoint: str) -> tuple:
    """The folders of a run that :func:`load_policy` looks in, in order: "best" falls back to the latest."""
    return ("best", "ckpt") if checkpoint == "best" else ("ckpt",)


def _check_checkpoints(task: str, logdir: str, methods: Sequence[str], checkpoint: str) -> None:
    """Before evaluating anything: every trained method asked for explicitly has a checkpoint to load."""
    for method in methods:
        run = os.path.join(logdir, method)
        if method != "random" and not any(tf.train.latest_checkpoint(os.path.join(run, d))
                                          for d in _checkpoint_dirs(checkpoint)):
            raise FileNotFoundError(f"No {method} checkpoint in {run}; train it first (rl/train_{task}.py "
                                    f"--method={method} --logdir={run}) or leave {method} out of --methods.")


def evaluate(task: str, logdir: str, methods: Sequence[str] | None = None, *, num_tasks: int = 40,
             steps: int = 3, rollouts_per_task: int | None = None, test_lr: float | None = None,
             batch_by: str | None = None, checkpoint: str = "best", seed: int = 1, test_tasks: str = "authors",
             num_workers: int | None = None, command: str | None = None, verbose: bool = True,
             random_activation: str | None = None) -> dict:
    """Returns after 0..``steps`` policy-gradient steps on ``num_tasks`` test tasks (the authors', or with
    ``test_tasks="seeded"`` drawn with ``seed``: module docstring) for each method, as the metrics of
    ``results/rl/<task>/metrics.json``; ``seed`` also seeds the rollouts and the random initialisation.

    ``logdir`` holds the trained runs as ``maml/``, ``pretrained/``, ``oracle/``. ``methods`` None: all four,
    skipping (and listing under "skipped") a trained method without a checkpoint; a given list: each must have
    one. ``rollouts_per_task``, ``test_lr`` and ``batch_by`` override the test protocol (``TEST_PROTOCOL``;
    batches as the MAML run's, else the first trained baseline's). ``command`` is recorded as the metrics'
    "command" (None unless given; rl/evaluate.py gives its command line); ``verbose`` prints each method's
    returns beside the paper's as they come. ``random_activation``: the random initialisation's hidden
    activation (default: the protocol's, ``TestProtocol.random_activation``). TensorFlow's ops may run
    concurrently unless the caller ran ``maml_tf.cli.one_op_at_a_time()`` first, as rl/evaluate.py does (then
    the returns repeat exactly from one evaluation to the next)."""
    if task not in PRESETS:
        raise ValueError(f"Unknown task {task!r}; choose one of {sorted(PRESETS)}.")
    methods_given = methods is not None
    methods = list(ALL_METHODS if methods is None else methods)
    unknown = sorted(set(methods) - set(ALL_METHODS))
    if unknown or not methods:
        raise ValueError(f"methods must be a non-empty subset of {ALL_METHODS}, got {methods}.")
    if num_tasks < 2:
        raise ValueError(f"num_tasks must be at least 2 (a standard error needs two), got {num_tasks}.")
    if steps < 0 or (rollouts_per_task is not None and rollouts_per_task < 1) or (
            test_lr is not None and not (math.isfinite(test_lr) and test_lr > 0)):
        raise ValueError(f"steps must be >= 0, rollouts_per_task positive and test_lr a finite number > 0; got "
                         f"{steps}, {rollouts_per_task}, {test_lr}.")
    if batch_by is not None and batch_by not in BATCH_BY:
        raise ValueError(f"batch_by must be one of {BATCH_BY}, got {batch_by!r}.")
    if checkpoint not in ("best", "latest"):
        raise ValueError(f"checkpoint must be 'best' or 'latest', got {checkpoint!r}.")
    if test_tasks not in TEST_TASKS:
        raise ValueError(f"test_tasks must be one of {TEST_TASKS}, got {test_tasks!r}.")
    if random_activation not in (None,) + ACTIVATIONS:
        raise ValueError(f"random_activation must be one of {ACTIVATIONS}, got {random_activation!r}.")
    preset = PRESETS[task]
    runs = _check_runs(task, logdir, methods_given)
    trained = [m for m in METHODS if runs[m]]
    maml_run = runs["maml"]
    # every method's test batches as the MAML run's were (horizon, batch mode), else the first trained baseline's
    first_run = maml_run or next((runs[m] for m in trained), {})
    maml_lr = maml_run.get("inner_lr", preset.inner_lr)
    horizon = first_run.get("horizon", preset.horizon)
    rollouts = rollouts_per_task or TEST_PROTOCOL[task].rollouts
    batch_by = batch_by or first_run.get("batch_by", "episodes")
    lrs = {m: step_sizes(task, m, maml_lr, steps, test_lr) for m in methods}
    random_activation = random_activation or TEST_PROTOCOL[task].random_activation
    t0 = time.time()
    results, training, skipped = {}, {}, []
    tasks = None
    # Each trained method runs on the env it was trained on (its config.json), the random initialisation
    # on MAML's; the preset's ids where no run says otherwise.
    recorded = {m: runs[m].get("env_id") for m in METHODS}
    recorded["random"] = recorded["maml"] or recorded["pretrained"]
    defaults = {"oracle": preset.oracle_env_id}
    env_ids = {m: e or defaults.get(m, preset.env_id) for m, e in recorded.items()}
    # methods without a run are skipped below; they take no part in the check
    versions = {m: env_ids[m].replace("Oracle", "") for m in methods if recorded[m] or m == "random"}
    if len(set(versions.values())) > 1:
        raise ValueError(f"The runs in {logdir} were trained on different environments ({versions}); evaluate "
                         f"runs of one environment version together.")
    if methods_given:
        _check_checkpoints(task, logdir, methods, checkpoint)
    for method in methods:
        with Sampler(env_ids[method], num_workers=num_workers, horizon=horizon) as sampler:
            if tasks is None and test_tasks == "authors":
                tasks = authors_test_tasks(task, num_tasks)  # the sampler checks them against the family
            elif tasks is None:
                tasks = sampler.sample_tasks(num_tasks, np.random.default_rng(seed))
            if method == "random":
                keras.utils.set_random_seed(seed)
                model = policies.gaussian_mlp_policy(sampler.obs_dim, sampler.act_dim, seed=seed, name="random",
                                                     activation=random_activation)
            else:
                try:
                    model, training[method] = load_policy(logdir, method, sampler, checkpoint, task=task)
                except FileNotFoundError as e:
                    if methods_given:  # asked for explicitly
                        raise
                    if verbose:
                        print(f"skipping {method}: {e}", flush=True)
                    skipped.append(method)
                    continue
            n_steps = 0 if method == "oracle" else steps
            t = time.time()
            per_task = maml_trpo.adaptation_returns(model, sampler, tasks, n_steps, lrs[method] or [0.0], rollouts,
                                                    seed=seed, restart=batch_by == "steps")
        results[method] = summarize(per_task)
        results[method]["per_task"] = np.round(per_task, 3).tolist()  # [task][step], tasks in metrics' "tasks" order
        if verbose:
            shown = "  ".join(f"{v:8.2f} ± {e:.2f}" for v, e in zip(results[method]["returns"],
                                                                   results[method]["stderr"]))
            print(f"{method:<11} {shown}   ({time.time() - t:.0f}s)", flush=True)
            ref = paper.RL[task].get(method, {}).get("returns")
            if ref:
                print(f"{'  paper':<11} " + "  ".join(f"{v:8.2f}       " for v in ref), flush=True)

    if not results:
        raise FileNotFoundError(f"Nothing to evaluate in {logdir}: train a method first.")
    eval_s = time.time() - t0
    batch_text = (f"at least {rollouts} x {horizon} environment steps per task per step, in whole episodes"
                  if batch_by == "steps" else f"{rollouts} rollouts per task per step")
    return {
        "config": {"task": task, "env_id": env_ids["maml"], "oracle_env_id": env_ids["oracle"],
                   "env_ids": {m: env_ids[m] for m in results},
                   "num_tasks": num_tasks, "steps": steps, "rollouts_per_task": rollouts,
                   "batch_by": batch_by,
                   "horizon": horizon, "test_lrs": {m: lrs[m] for m in results},
                   "checkpoint": checkpoint, "methods": methods, "test_tasks": test_tasks,
                   "random_activation": random_activation,
                   "maml_run": {k: maml_run[k] for k in ("inner_lr", "meta_batch_size", "first_order", "seed")
                                if k in maml_run}},
        "seed": seed,
        "tasks": np.asarray(tasks).tolist(),  # the test tasks' parameters (goal velocity, direction, goal)
        **_times(training, eval_s),
        "training": training,
        "machine": machine_info(),
        "command": command,
        "protocol": ((f"{num_tasks} test tasks (seed {seed}); " if test_tasks == "seeded" else
                      f"the authors' {num_tasks} test tasks (their test script's legacy NumPy draws; rollout seed "
                      f"{seed}); ") + f"{batch_text}; "
                     f"return = mean undiscounted return of a task's rollouts, averaged over tasks; "
                     f"stderr = std over tasks / sqrt(num_tasks); step sizes per method in config.test_lrs "
                     f"(the authors' test scripts unless overridden)"),
        "results": results,
        "skipped": skipped,
        "paper": paper.RL[task],
    }


def _times(training: dict, eval_s: float) -> dict:
    """The metrics' "iterations" (those of the MAML run, else of the first trained method; per method in
    "training") and, as for the supervised experiments, that run's training time plus the evaluation's."""
    main_run = training.get("maml") or next(iter(training.values()), {})
    train_s = main_run.get("trained_wall_time_s") or 0.0
    return {"iterations": main_run.get("trained_iterations") or 0, "wall_time_s": round(train_s + eval_s, 1),
            "train_wall_time_s": round(train_s, 1), "eval_wall_time_s": round(eval_s, 1)}


# What two evaluations of one folder must share for their methods' results to stand in one metrics.json
# (with the seed and the test tasks themselves); evaluations made before a key existed count as its default.
SHARED_PROTOCOL = {"task": None, "env_id": None, "num_tasks": None, "steps": None, "rollouts_per_task": None,
                   "batch_by": "episodes", "horizon": None, "checkpoint": "best", "test_tasks": "seeded",
                   "random_activation": None}


def protocol_difference(previous: dict, metrics: dict) -> str | None:
    """None if the two metrics were measured with the same protocol on the same test tasks, else what differs
    (one phrase)."""
    old, new = previous.get("config", {}), metrics["config"]
    for key, default in SHARED_PROTOCOL.items():
        if old.get(key, default) != new.get(key, default):
            return f"{key} {old.get(key, default)!r} against {new.get(key, default)!r}"
    if previous.get("seed") != metrics["seed"]:
        return f"seed {previous.get('seed')!r} against {metrics['seed']!r}"
    old_tasks, new_tasks = np.asarray(previous.get("tasks", [])), np.asarray(metrics["tasks"])
    if old_tasks.shape != new_tasks.shape or not np.allclose(old_tasks, new_tasks):
        return "other test tasks"
    return None


def keep_previous(metrics: dict, previous: dict) -> tuple:
    """``metrics`` completed with the methods of ``previous`` (an earlier metrics.json of the same folder) that
    it did not evaluate, if both were measured with the same protocol (:func:`protocol_difference`): their
    results, step sizes, environment ids and training records are taken over, and "carried_over" names the
    command that measured each. Returns (metrics, the methods kept, why the others were not kept or None)."""
    others = [m for m in ALL_METHODS if m in previous.get("results", {}) and m not in metrics["results"]]
    if not others:
        return metrics, [], None
    why = protocol_difference(previous, metrics)
    if why:
        return metrics, [], why
    old_config = previous["config"]
    merged = json.loads(json.dumps(metrics))  # a deep copy
    config, training = merged["config"], merged["training"]
    carried = merged.setdefault("carried_over", {})
    for m in others:
        merged["results"][m] = previous["results"][m]
        for key in ("test_lrs", "env_ids"):
            if m in old_config.get(key, {}):
                config[key][m] = old_config[key][m]
        if m in previous.get("training", {}):
            training[m] = previous["training"][m]
        carried[m] = previous.get("carried_over", {}).get(m) or previous.get("command")
    if "maml" in others:
        config["maml_run"] = old_config.get("maml_run", {})
    merged["results"] = {m: merged["results"][m] for m in ALL_METHODS if m in merged["results"]}
    config["methods"] = list(merged["results"])
    merged.update(_times(training, metrics["eval_wall_time_s"]))
    return merged, others, None


def write(metrics: dict, logdir: str) -> tuple:
    """Saves ``metrics`` as ``<logdir>/metrics.json`` and its figure as ``<logdir>/figure_returns.png``;
    returns both paths."""
    os.makedirs(logdir, exist_ok=True)
    path = os.path.join(logdir, "metrics.json")
    with open(path, "w") as f:
        json.dump(metrics, f, indent=2)
    return path, draw(metrics, logdir)


def draw(metrics: dict, logdir: str) -> str:
    """(Re)draws ``<logdir>/figure_returns.png`` from ``metrics``; returns its path."""
    fig_path = os.path.join(logdir, "figure_returns.png")
    figure(metrics["config"]["task"], metrics["results"], fig_path, tasks_label(metrics))
    return fig_path


def redraw(logdir: str) -> str:
    """Redraws the figure of an existing evaluation (``<logdir>/metrics.json``) without evaluating again."""
    path = os.path.join(logdir, "metrics.json")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"No metrics.json in {logdir}: evaluate first (rl/evaluate.py without --figure_only).")
    with open(path) as f:
        metrics = json.load(f)
    return draw(metrics, logdir)
