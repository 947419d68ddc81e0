"""What the few-shot classification entry points (omniglot.py, miniimagenet.py) share: the settings,
meta-training with validation, the test evaluation, the results file and the learning curve.

Everything here takes explicit arguments; the entry points define the flags (``fewshot_flags``) and own
the paper's presets and the data loading, and :func:`config_from_flags` turns the parsed flags they pass
in into a :class:`Config`. The flow of :func:`run`:

1. meta-train with :func:`maml_tf.training.train` (resumable), logging the post-update query accuracy
   of the training tasks and, every ``validate_every`` iterations, the accuracy on ``val_tasks``
   fixed validation tasks after ``num_eval_steps`` steps; the best validation checkpoint is kept in
   ``<logdir>/best`` and both curves go to ``<logdir>/history.jsonl`` (a resumed run keeps its curve);
2. restore the best checkpoint and evaluate it on ``eval_tasks`` test tasks (and again on the
   validation tasks): accuracy after 0..num_eval_steps inner steps, mean and 95% CI;
3. write ``<logdir>/metrics.json`` and ``<logdir>/learning_curve.png``.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from typing import Callable, Dict, Optional

import keras
import numpy as np
import tensorflow as tf

try:  # the entry points run with experiments/ on sys.path
    from fewshot_flags import DEFAULT_INNER_LOSS_REDUCTION, DEFAULT_OUTPUT_INIT, INNER_LOSS_REDUCTIONS, OUTPUT_INITS
except ModuleNotFoundError:  # imported from the project root as experiments.fewshot
    from experiments.fewshot_flags import (DEFAULT_INNER_LOSS_REDUCTION, DEFAULT_OUTPUT_INIT, INNER_LOSS_REDUCTIONS,
                                           OUTPUT_INITS)
from maml_tf import batched, evaluation, maml
from maml_tf.cli import check_logdir, machine_info, read_json, without_memory_optimizer
from maml_tf.functional import batch_norm_weights, get_weights
from maml_tf.training import (CheckpointError, check_config, check_iterations, exclusive_logdir, has_checkpoint,
                               latest_iteration, make_checkpoint, make_train_step, restore, train)

# Settings that change the trained model: a log directory refuses to resume with others.
MODEL_KEYS = ("dataset", "model", "num_ways", "num_shots", "num_query", "meta_batch_size", "inner_lr",
              "num_inner_steps", "meta_lr", "first_order", "transductive_bn", "adapt_batch_norm",
              "inner_loss_reduction", "output_init", "seed", "distinct_characters", "init_from", "compute_dtype",
              "meta_clip_norm")
# What runs recorded before a setting existed did (their config.json lacks it).
RECORDED_BEFORE = {"adapt_batch_norm": True, "inner_loss_reduction": "mean", "output_init": "glorot",
                   "distinct_characters": False, "init_from": None, "compute_dtype": "float32",
                   "meta_clip_norm": 0.0}


@dataclasses.dataclass(frozen=True)
class Config:
    dataset: str  # results folder and paper key: omniglot, omniglot_mlp, miniimagenet, miniimagenet_first_order
    model: str  # conv or mlp
    num_ways: int
    num_shots: int
    num_query: int  # query examples per class during meta-training
    eval_num_query: int  # query examples per class in validation and test tasks
    meta_batch_size: int
    inner_lr: float
    num_inner_steps: int
    num_eval_steps: int
    iterations: int
    meta_lr: float
    first_order: bool
    transductive_bn: bool
    adapt_batch_norm: bool  # False: batch-norm offsets are meta-learned only, not adapted (authors' code)
    inner_loss_reduction: str  # "mean" or "sum" (authors' code): see inner_step_size
    output_init: str  # the output layer's initial kernel: "glorot" or "normal" (N(0, 1), authors' Omniglot code)
    seed: int
    eval_tasks: int
    eval_seed: int
    val_tasks: int
    validate_every: int
    checkpoint_every: int
    log_every: int
    eval_batch_size: int
    layout: str
    jit_compile: bool
    # Omniglot: a task's N classes are N distinct characters, each at a random rotation (the authors'
    # code), instead of N of the rotated classes drawn independently (two rotations of one character
    # can then meet in a task: in 29% of 20-way test tasks). Training, validation and test alike.
    distinct_characters: bool = False
    # The log directory of an earlier run whose best (else latest) checkpoint's weights this run starts
    # from, with a fresh meta-optimizer (None: the model's own initialisation).
    init_from: Optional[str] = None
    # The precision of the meta-training step's convolutions and matrix products (batched layout only):
    # "float32", or "bfloat16" (weights, batch norm, losses and Adam stay float32). Validation and test
    # always run in float32.
    compute_dtype: str = "float32"
    # The meta-gradient's global norm is clipped to this before Adam sees it (0: no clipping, the paper).
    meta_clip_norm: float = 0.0

    def __post_init__(self):
        if not self.meta_clip_norm >= 0:
            raise ValueError(f"meta_clip_norm must be >= 0 (0: no clipping), not {self.meta_clip_norm!r}.")
        if self.compute_dtype not in batched.COMPUTE_DTYPES:
            raise ValueError(f"compute_dtype must be one of {batched.COMPUTE_DTYPES}, not {self.compute_dtype!r}.")
        if self.compute_dtype != "float32" and self.layout != "batched":
            raise ValueError(f"--compute_dtype={self.compute_dtype} needs --layout=batched, not {self.layout}.")
        if self.inner_loss_reduction not in INNER_LOSS_REDUCTIONS:
            raise ValueError(f"inner_loss_reduction must be one of {INNER_LOSS_REDUCTIONS}, "
                             f"not {self.inner_loss_reduction!r}.")
        if self.output_init not in OUTPUT_INITS:
            raise ValueError(f"output_init must be one of {OUTPUT_INITS}, not {self.output_init!r}.")

    @property
    def inner_step_size(self) -> float:
        """The step size the inner loop applies to the mean cross-entropy of the support set.

        ``"mean"``: ``inner_lr``. ``"sum"``: ``num_ways * inner_lr``, the authors' inner step: their
        support loss (``xent`` in cbfinn/maml's utils.py) is the per-example cross-entropy divided by K,
        which ``tf.gradients`` sums over the N*K support examples, i.e. N times the mean. A plain
        gradient step of ``inner_lr`` on N times the mean is a step of ``N * inner_lr`` on the mean,
        exactly, first and second order alike."""
        return self.inner_lr * (self.num_ways if self.inner_loss_reduction == "sum" else 1)

    @property
    def setting(self) -> str:
        return f"{self.num_ways}way{self.num_shots}shot"

    def to_json(self) -> dict:
        return {**dataclasses.asdict(self), "inner_step_size": self.inner_step_size}


# ----------------------------------------------------------------------------------------------
# Tasks


def episode_sampler(sampler) -> Callable[[int, np.random.Generator], tuple]:
    """``sample(n, rng) -> ((support_x, support_y), (query_x, query_y))`` from an EpisodeSampler."""

    def sample(num_tasks: int, rng: np.random.Generator):
        e = sampler.sample(num_tasks, rng)
        return e.support, e.query

    return sample


# ----------------------------------------------------------------------------------------------
# Training


def task_losses(model: keras.Model, cfg: Config, compute_dtype: str = "float32"):
    """(cross-entropy task loss, accuracy), both usable by every layout (float32) or by the batched one
    (``compute_dtype="bfloat16"``, the training step's precision ``cfg.compute_dtype``)."""
    loss = batched.supervised_loss(model, maml.softmax_cross_entropy, transductive=cfg.transductive_bn,
                                   compute_dtype=compute_dtype)
    return loss, loss.with_loss(maml.accuracy)


def variant_suffix(cfg: Config) -> str:
    """The default log directory's suffix for settings other than the default batch norm, inner loss and
    output layer initialisation."""
    return (("" if cfg.transductive_bn else "_nontransductive") + ("" if cfg.adapt_batch_norm else "_bn_meta_only")
            + ("" if cfg.inner_loss_reduction == DEFAULT_INNER_LOSS_REDUCTION else f"_{cfg.inner_loss_reduction}_loss")
            + ("" if cfg.output_init == DEFAULT_OUTPUT_INIT else f"_{cfg.output_init}_output_init")
            + ("_distinct_characters" if cfg.distinct_characters else "")
            + ("" if cfg.compute_dtype == "float32" else f"_{cfg.compute_dtype}")
            + (f"_clip{cfg.meta_clip_norm:g}" if cfg.meta_clip_norm else ""))


def frozen_weights(model: keras.Model, cfg: Config) -> list:
    """The weights the inner loop leaves alone: none, or the batch-norm offsets (``adapt_batch_norm``)."""
    return [] if cfg.adapt_batch_norm else batch_norm_weights(model)


def make_objective(task_loss, cfg: Config):
    frozen = frozen_weights(task_loss.model, cfg)

    def objective(weights, batch):
        support, query = batch
        loss, metrics = batched.meta_objective_and_metrics(
            task_loss, weights, support, query, cfg.num_inner_steps, cfg.inner_step_size, cfg.first_order,
            metrics={"query_accuracy": maml.accuracy}, layout=cfg.layout, frozen=frozen)
        return loss, metrics
    return objective


def make_curve(model: keras.Model, task_loss, accuracy, cfg: Config):
    """A compiled ``curve(support, query) -> [tasks, num_eval_steps + 1]`` of query accuracies.

    It runs on the batched layout wherever that can run the model, whatever ``cfg.layout`` (the training
    step's): evaluation is first order and batched by 100 tasks, which the per-task loop unrolls into one
    graph (Omniglot 5-way 5-shot, ``--eval_only`` next to a training run: 264 s and 4.1 GB against 43 s and
    2.0 GB batched, the same accuracies). Elsewhere (e.g. oneDNN off) it uses ``cfg.layout``."""
    frozen = frozen_weights(model, cfg)
    layout = "batched" if cfg.layout == "batched" or batched.why_unsupported(model) is None else cfg.layout

    @tf.function  # one trace per batch shape (static task counts, which the batched layout needs)
    def curve(support, query):
        return evaluation.metric_curve(task_loss, accuracy, get_weights(model), support, query, cfg.num_eval_steps,
                                       cfg.inner_step_size, layout=layout, frozen=frozen)

    return curve


def evaluate(curve, sample, num_tasks: int, batch_size: int, seed: int) -> dict:
    """Accuracy (percent) after 0..S steps on ``num_tasks`` tasks: mean, 95% CI, number of tasks."""
    values = evaluation.evaluate(curve, sample, num_tasks, min(batch_size, num_tasks), seed)
    s = evaluation.summarize(100.0 * values)
    return {"accuracy": [round(x, 3) for x in s["mean"]], "ci95": [round(x, 3) for x in s["ci95"]],
            "num_tasks": s["num_tasks"]}


class History:
    """``<logdir>/history.jsonl``: one line per logged training window or validation."""

    def __init__(self, path: str):
        self.path = path

    def truncate_after(self, iteration: int) -> None:
        """Drop entries past ``iteration`` (logged after the checkpoint a resumed run starts from)."""
        rows = self.read()
        kept = [r for r in rows if r["iteration"] <= iteration]
        if len(kept) != len(rows):
            with open(self.path, "w") as f:
                f.writelines(json.dumps(r) + "\n" for r in kept)

    def append(self, row: dict) -> None:
        with open(self.path, "a") as f:
            f.write(json.dumps(row) + "\n")

    def read(self) -> list:
        if not os.path.exists(self.path):
            return []
        with open(self.path) as f:
            return [json.loads(line) for line in f if line.strip()]


def meta_optimizer(cfg: Config) -> keras.optimizers.Optimizer:
    """Adam with the meta learning rate; with ``meta_clip_norm`` it first scales each meta-gradient down to
    that global norm where it is larger (Keras's ``global_clipnorm``)."""
    return keras.optimizers.Adam(cfg.meta_lr, global_clipnorm=cfg.meta_clip_norm or None)


def meta_train(model: keras.Model, cfg: Config, logdir: str, train_sample, val_sample, curve=None,
               verbose: bool = True):
    """Meta-train (or resume) with validation; returns :class:`maml_tf.training.TrainResult`.

    ``curve``: the compiled evaluation (:func:`make_curve`), to share its traces with the test."""
    task_loss, accuracy = task_losses(model, cfg)  # validation (and the test) in float32
    train_loss = task_loss if cfg.compute_dtype == "float32" else task_losses(model, cfg, cfg.compute_dtype)[0]
    optimizer = meta_optimizer(cfg)
    step = make_train_step(model, optimizer, make_objective(train_loss, cfg), jit_compile=cfg.jit_compile)
    history = History(os.path.join(logdir, "history.jsonl"))
    resumed_at = latest_iteration(logdir)
    history.truncate_after(resumed_at)
    if cfg.init_from and not resumed_at:  # a resumed run continues from its own checkpoint
        initialise_from(model, cfg.init_from, logdir, verbose)

    current = {"i": 0}
    window = {"loss": [], "query_accuracy": [], "meta_grad_norm": []}

    def batch_for_iteration(i: int):
        current["i"] = i
        return train_sample(cfg.meta_batch_size, np.random.default_rng([cfg.seed, i]))  # exact resume

    def logged_step(batch):
        out = step(batch)
        window["loss"].append(out["loss"])
        window["query_accuracy"].append(out["query_accuracy"])
        window["meta_grad_norm"].append(out["meta_grad_norm"])
        i = current["i"] + 1
        if i % cfg.log_every == 0 or i == cfg.iterations:
            norms = np.asarray(window["meta_grad_norm"], dtype=np.float64)
            history.append({"iteration": i, "train_loss": float(np.mean(window["loss"])),
                            "train_query_accuracy": 100.0 * float(np.mean(window["query_accuracy"])),
                            # the meta-gradient's global norm before any clipping: median and largest since
                            # the previous entry (rare large ones come from tasks whose inner loop diverges)
                            "train_meta_grad_norm_median": float(np.median(norms)),
                            "train_meta_grad_norm_max": float(norms.max())})
            for values in window.values():
                values.clear()
        return out

    curve = curve or make_curve(model, task_loss, accuracy, cfg)

    def validate(iteration: int, wall_time_s: float) -> float:
        result = evaluate(curve, val_sample, cfg.val_tasks, cfg.eval_batch_size, cfg.eval_seed + 1)
        history.append({"iteration": iteration, "val_accuracy": result["accuracy"], "val_ci95": result["ci95"],
                         "wall_time_s": round(wall_time_s, 1)})
        return result["accuracy"][-1]

    return train(model, optimizer, logged_step, batch_for_iteration, cfg.iterations, logdir,
                 checkpoint_every=cfg.checkpoint_every, log_every=cfg.log_every,
                 validate=validate if cfg.validate_every else None, validate_every=cfg.validate_every,
                 name=f"{cfg.dataset} {cfg.setting}", verbose=verbose)


def initialise_from(model: keras.Model, source: str, logdir: str, verbose: bool = True) -> dict:
    """Start a new run in ``logdir`` from the weights of the run in ``source`` (its best checkpoint, else
    its latest: :func:`load_for_evaluation`); writes what was loaded to ``logdir/init_from.json``."""
    if not os.path.isdir(source):
        raise FileNotFoundError(f"--init_from={source} is not a directory; it takes the log directory of an "
                                "earlier run.")
    if not has_checkpoint(source) and tf.train.latest_checkpoint(os.path.join(source, "best")) is None:
        raise FileNotFoundError(f"--init_from={source} holds no checkpoint (best/ or ckpt/); it takes the log "
                                "directory of a run that has trained.")
    info = {"logdir": source, **load_for_evaluation(model, source)}
    with open(os.path.join(logdir, "init_from.json"), "w") as f:
        json.dump(info, f, indent=1)
    if verbose:
        print(f"initialised from {os.path.join(source, info['checkpoint'])} (iteration {info['iteration']} of "
              f"that run); this run's iterations count from 0 with a fresh meta-optimizer")
    return info


def load_for_evaluation(model: keras.Model, logdir: str) -> dict:
    """Restore the best validation checkpoint (else the latest one) into ``model``."""
    ckpt = make_checkpoint(model, None)
    for which in ("best", "ckpt"):
        directory = os.path.join(logdir, which)
        path = restore(ckpt, directory, what=f"{which} checkpoint")
        if path is not None:
            return {"checkpoint": os.path.relpath(path, logdir), "iteration": int(ckpt.iteration.numpy()),
                    "wall_time_s": float(ckpt.wall_time.numpy())}
    raise FileNotFoundError(f"No checkpoint in {logdir}/best or {logdir}/ckpt; train first (drop --eval_only).")


# ----------------------------------------------------------------------------------------------
# Results


MILESTONES = (90.0, 95.0, 98.0, 99.0)  # validation accuracies (%) whose first crossing is reported


def validation_milestones(rows: list, milestones=MILESTONES) -> dict:
    """The validation curve of a run (accuracy after the test-time steps, training wall time) and, for
    each milestone, the first validation at or above it: ``{"curve": [...], "first_at_or_above":
    {"98.0": {"iteration": ..., "wall_time_s": ...} or None}}``. Rows logged without a wall time
    (runs from before it was recorded) give ``wall_time_s`` None."""
    curve = [{"iteration": r["iteration"], "accuracy": r["val_accuracy"][-1], "wall_time_s": r.get("wall_time_s")}
             for r in rows if "val_accuracy" in r]
    first = {}
    for m in milestones:
        hit = next((c for c in curve if c["accuracy"] >= m), None)
        first[str(m)] = None if hit is None else {"iteration": hit["iteration"], "wall_time_s": hit["wall_time_s"]}
    return {"curve": curve, "first_at_or_above": first}


def print_results(cfg: Config, test: dict, paper: Optional[dict], transductive: bool) -> None:
    steps = list(range(len(test["accuracy"])))
    print(f"\n{cfg.dataset} {cfg.setting}: test accuracy (%) after n inner steps, mean ± 95% CI over "
          f"{test['num_tasks']} tasks ({'transductive' if transductive else 'non-transductive'} batch norm)")
    for n in steps:
        print(f"  n={n:<3d} {test['accuracy'][n]:7.2f} ± {test['ci95'][n]:.2f}")
    if paper:
        note = f"; {paper['note']}" if paper.get("note") else ""
        print(f"  paper (Table 1{note}): {paper['accuracy']} ± {paper['ci95']}")


def learning_curve(history_path: str, png_path: str, title: str, paper: Optional[dict]) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = History(history_path).read()
    train_rows = [r for r in rows if "train_query_accuracy" in r]
    val_rows = [r for r in rows if "val_accuracy" in r]
    fig, ax = plt.subplots(figsize=(7, 4.2))
    if train_rows:
        ax.plot([r["iteration"] for r in train_rows], [r["train_query_accuracy"] for r in train_rows],
                color="tab:blue", lw=1, alpha=0.8, label="meta-train tasks, query accuracy after adaptation")
    if val_rows:
        ax.errorbar([r["iteration"] for r in val_rows], [r["val_accuracy"][-1] for r in val_rows],
                    yerr=[r["val_ci95"][-1] for r in val_rows], color="tab:orange", marker="o", ms=3,
                    capsize=2, label="validation tasks, after the test-time steps")
    if paper:
        ax.axhline(paper["accuracy"], color="k", ls="--", lw=1, label=f"paper, test ({paper['accuracy']}%)")
    ax.set_xlabel("meta-iteration")
    ax.set_ylabel("accuracy (%)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(png_path, dpi=120)
    plt.close(fig)


def run(cfg: Config, build_model: Callable[[], keras.Model], samplers: Dict[str, Callable], logdir: str,
        paper: Optional[dict], split: dict, command: str, eval_only: bool = False, verbose: bool = True) -> dict:
    """Train (unless ``eval_only``), evaluate the best checkpoint, write metrics.json and the figure.

    ``samplers``: {"train", "val", "test"} -> ``sample(n, rng)`` (see :func:`episode_sampler`).
    Returns the metrics dictionary (in ``eval_only`` mode, the freshly computed one; nothing is written).
    """
    keras.utils.set_random_seed(cfg.seed)
    model = build_model()
    curve = make_curve(model, *task_losses(model, cfg), cfg)
    if eval_only:  # reads the folder and writes nothing: needs no lock
        return _evaluate_and_write(cfg, model, curve, None, samplers, logdir, paper, split, command, eval_only)
    with exclusive_logdir(logdir):  # a second run on this folder stops here, before touching its files
        check_iterations(logdir, cfg.iterations)
        check_config(logdir, cfg.to_json(), MODEL_KEYS, RECORDED_BEFORE)
        train_result = meta_train(model, cfg, logdir, samplers["train"], samplers["val"], curve, verbose=verbose)
        return _evaluate_and_write(cfg, model, curve, train_result, samplers, logdir, paper, split, command,
                                   eval_only)


def _evaluate_and_write(cfg: Config, model: keras.Model, curve, train_result, samplers: Dict[str, Callable],
                        logdir: str, paper: Optional[dict], split: dict, command: str, eval_only: bool) -> dict:
    """The evaluation half of :func:`run`: the best checkpoint on the test and validation tasks, then
    metrics.json and the learning curve (``eval_only``: compared with the stored metrics.json, nothing written)."""
    t_eval = time.time()
    restored = load_for_evaluation(model, logdir)
    test = evaluate(curve, samplers["test"], cfg.eval_tasks, cfg.eval_batch_size, cfg.eval_seed)
    validation = evaluate(curve, samplers["val"], cfg.val_tasks, cfg.eval_batch_size, cfg.eval_seed + 1)
    validation["best_iteration"] = restored["iteration"]
    validation.update(validation_milestones(History(os.path.join(logdir, "history.jsonl")).read()))
    print_results(cfg, test, paper, cfg.transductive_bn)
    trained_iterations = (train_result.iterations if train_result
                          else latest_iteration(logdir))
    train_wall = train_result.wall_time_s if train_result else None  # all sessions' training, from the checkpoint
    eval_wall = time.time() - t_eval
    metrics = {
        "config": cfg.to_json(),
        "seed": cfg.seed,
        "iterations": trained_iterations,
        "wall_time_s": round((train_wall or 0.0) + eval_wall, 1),
        "transductive_bn": cfg.transductive_bn,
        "test": test,
        "validation": validation,
        "paper": paper,
        "evaluated_checkpoint": restored,
        "train_wall_time_s": None if train_wall is None else round(train_wall, 1),
        "eval_wall_time_s": round(eval_wall, 1),
        "protocol": (f"{cfg.eval_tasks} random {cfg.num_ways}-way {cfg.num_shots}-shot test tasks "
                     + ("of distinct characters, each at a random rotation, " if cfg.distinct_characters else "")
                     + "with "
                     f"{cfg.eval_num_query} query examples per class (seed {cfg.eval_seed}); accuracy on the query "
                     f"set after 0..{cfg.num_eval_steps} inner steps of lr {cfg.inner_lr} on the support set's "
                     + ("mean cross-entropy; " if cfg.inner_loss_reduction == "mean" else
                        f"summed cross-entropy / K, as the authors' code (lr {cfg.inner_step_size:g} on the mean); ")
                     + "ci95 = 1.96 std / sqrt(tasks); batch norm with "
                     + ("the statistics of the current batch (transductive over the query set), as the paper"
                        if cfg.transductive_bn else "the support set's statistics for query examples "
                        "(non-transductive)")
                     + f"; checkpoint with the best validation accuracy ({cfg.val_tasks} tasks)"),
        "split": split,
        "command": command,
        "machine": machine_info(),
    }
    path = os.path.join(logdir, "metrics.json")
    if eval_only:
        if os.path.exists(path):
            with open(path) as f:
                stored = json.load(f)
            stored_config = {**RECORDED_BEFORE, **stored.get("config", {})}
            same_protocol = (stored.get("test", {}).get("num_tasks") == test["num_tasks"]
                             and stored.get("transductive_bn") == cfg.transductive_bn
                             and stored_config["distinct_characters"] == cfg.distinct_characters
                             and all(stored_config.get(k, getattr(cfg, k)) == getattr(cfg, k)
                                     for k in ("eval_seed", "eval_batch_size", "eval_num_query", "num_shots"))
                             and len(stored.get("test", {}).get("accuracy", [])) == len(test["accuracy"]))
            if same_protocol:
                same = np.allclose(stored["test"]["accuracy"], test["accuracy"], atol=0.02)
                print(f"\n{'matches' if same else 'DIFFERS FROM'} {path}")
            else:
                print(f"\n(another protocol than {path}'s: not compared)")
        print("(--eval_only writes nothing)")
        return metrics
    with open(path, "w") as f:
        json.dump(metrics, f, indent=2)
    learning_curve(os.path.join(logdir, "history.jsonl"), os.path.join(logdir, "learning_curve.png"),
                   f"MAML, {cfg.dataset} {cfg.num_ways}-way {cfg.num_shots}-shot", paper)
    print(f"\nwrote {path} and {os.path.join(logdir, 'learning_curve.png')}")
    return metrics


def config_from_flags(flag_values, stored: Optional[dict], dataset: str, model: str, defaults: dict) -> Config:
    """The run's settings: each flag given on the command line, else the value stored with the run (in
    ``--eval_only`` or on resume: ``stored``), else the flag's value, or ``defaults[name]`` (the paper's
    preset) when the flag is unset. ``dataset`` and ``model`` are used for a new run (a stored run keeps
    its own)."""

    def pick(name):
        if flag_values[name].present or stored is None or name not in stored:
            value = getattr(flag_values, name)
            return defaults.get(name) if value is None else value
        return stored[name]

    # the evaluation protocol (which tasks, also through the batch size: evaluation.evaluate) is the stored
    # run's unless a flag gives it, so that validations compare across sessions and --eval_only reproduces
    # metrics.json; the layout and XLA are this invocation's (speed only)
    run_only = {name: pick(name) for name in ("eval_tasks", "eval_seed", "val_tasks", "eval_batch_size")}
    run_only.update({name: getattr(flag_values, name) for name in ("layout", "jit_compile")})
    compute_dtype = pick("compute_dtype") if "compute_dtype" in flag_values else "float32"
    meta_clip_norm = pick("meta_clip_norm") if "meta_clip_norm" in flag_values else 0.0
    if run_only["layout"] is None:  # the preset's layout; bfloat16 needs the batched one
        run_only["layout"] = defaults.get("layout", "batched") if compute_dtype == "float32" else "batched"
    return Config(
        dataset=stored["dataset"] if stored else dataset, model=stored.get("model", model) if stored else model,
        **{name: pick(name) for name in (
            "num_ways", "num_shots", "num_query", "eval_num_query", "meta_batch_size", "inner_lr",
            "num_inner_steps", "num_eval_steps", "iterations", "meta_lr", "first_order", "transductive_bn",
            "adapt_batch_norm", "inner_loss_reduction", "output_init", "seed", "validate_every", "checkpoint_every",
            "log_every", "init_from")},
        compute_dtype=compute_dtype, meta_clip_norm=meta_clip_norm,
        **({"distinct_characters": pick("distinct_characters")} if "distinct_characters" in flag_values else {}),
        **run_only)


def prepare(flag_values, config_from_flags: Callable[[Optional[dict]], Config]) -> Config:
    """What both entry points do first: TensorFlow threads from the flags, and the run's settings
    (in ``--eval_only`` or when ``--logdir`` holds a run, those stored there)."""
    if flag_values.logdir:
        check_logdir(flag_values.logdir)
    if flag_values.deterministic:
        without_memory_optimizer()
    if flag_values.intra_op_threads:
        tf.config.threading.set_intra_op_parallelism_threads(flag_values.intra_op_threads)
    if flag_values.inter_op_threads:
        tf.config.threading.set_inter_op_parallelism_threads(flag_values.inter_op_threads)
    if flag_values.eval_only:
        if not flag_values.logdir:
            raise ValueError("--eval_only needs --logdir, the folder of a trained run.")
        stored = read_config(flag_values.logdir)
        cfg = config_from_flags(stored)
        # the network's shape is the run's; other settings (shots, steps, batch norm) may differ on purpose
        refuse_contradictions(flag_values, flag_values.logdir, stored, cfg, ("model", "num_ways"))
        return cfg
    if flag_values.logdir and os.path.exists(os.path.join(flag_values.logdir, "config.json")) \
            and has_checkpoint(flag_values.logdir):  # (a config.json without a checkpoint is a failed start)
        return resumed_config(flag_values, config_from_flags)
    return config_from_flags(None)


def refuse_contradictions(flag_values, logdir: str, stored: dict, cfg: Config, keys) -> None:
    """One sentence for a flag given on the command line that contradicts the run stored in ``logdir``."""
    settings = cfg.to_json()
    for k in keys:
        if k not in stored:
            continue
        asked = getattr(flag_values, k) if k in flag_values and flag_values[k].present else settings.get(k, stored[k])
        if asked != stored[k]:
            raise CheckpointError(f"{logdir} holds a run with {k}={stored[k]!r} but this run asks for {k}={asked!r}; "
                                  f"use another log directory (--logdir) or the same settings.")


def resumed_config(flag_values, config_from_flags: Callable[[Optional[dict]], Config]) -> Config:
    """The settings of a run resumed in ``--logdir``: its own (config.json) where no flag is given, so
    that ``--logdir`` alone resumes it; ``--iterations`` (or the preset's) sets how far it goes. A flag that
    contradicts the run is refused later (:func:`maml_tf.training.check_config`), ``--model`` here."""
    logdir = flag_values.logdir
    stored = {k: v for k, v in read_config(logdir).items() if k != "iterations"}
    cfg, fresh = config_from_flags(stored), config_from_flags(None)
    refuse_contradictions(flag_values, logdir, stored, cfg, MODEL_KEYS)  # before saying it resumes
    adopted = {f.name: getattr(cfg, f.name) for f in dataclasses.fields(cfg)
               if getattr(cfg, f.name) != getattr(fresh, f.name)}
    if adopted:
        print(f"resuming {logdir} with the run's own " + ", ".join(f"{k}={v!r}" for k, v in adopted.items()),
              flush=True)
    return cfg


def read_config(logdir: str) -> dict:
    """The settings a log directory was trained with (for ``--eval_only`` and resume)."""
    path = os.path.join(logdir, "config.json")
    if not os.path.exists(path):
        raise FileNotFoundError(f"{logdir} holds no config.json, so there is no trained run to evaluate; "
                                f"check --logdir or train first.")
    return {**RECORDED_BEFORE, **read_json(path)}
