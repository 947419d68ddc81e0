"""Sinusoid regression (paper section 5.1, Figures 2-3, appendix Table 2).

    python experiments/sinusoid.py                      # MAML + pretrained + oracle, then evaluate
    python experiments/sinusoid.py --eval_only --logdir=results/sinusoid

Trains three networks (each resumable from its checkpoint in <logdir>/<method>/ckpt; a resumed run takes
its seed, shots, inner steps and learning rates from its config.json where no flag gives them):
  maml        meta-trained: K=10, 1 inner step, inner lr 0.01, meta-batch 25, Adam 0.001, 70,000 its
  pretrained  one network trained by plain regression on all tasks jointly (same batches and budget)
  oracle      a network that also receives amplitude and phase as inputs (not fine-tuned at test time)
then evaluates all three on 600 held-out tasks for K = 5, 10, 20, fine-tuning 0..10 steps on the same
K points (MAML: inner lr; pretrained and oracle: 0.01 for K=5, 0.02 for K=10 and 20, as the paper)
and measuring MSE on 100 held-out points of each sine. Writes <logdir>/metrics.json and two figures.
"""

from __future__ import annotations

import json
import os
import sys
import time

from absl import app, flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # this checkout's packages first

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from data.sinusoid import SinusoidTasks, sine, with_task_inputs  # noqa: E402
from maml_tf import evaluation, maml, models, paper  # noqa: E402
from maml_tf.cli import check_logdir, finite_positive, machine_info, one_sentence_errors, read_json  # noqa: E402
from maml_tf.functional import get_weights, make_forward  # noqa: E402
from maml_tf.training import (check_config, check_iterations, exclusive_logdir, has_checkpoint,  # noqa: E402
                               make_checkpoint, make_train_step, restore, train)

FLAGS = flags.FLAGS
flags.DEFINE_integer("iterations", 70000, "Meta-training iterations (each method gets this many).")
flags.DEFINE_integer("meta_batch_size", 25, "Tasks per meta-iteration.")
flags.DEFINE_integer("num_shots", 10, "K: support points per task during meta-training.")
flags.DEFINE_integer("num_inner_steps", 1, "Inner gradient steps during meta-training.")
flags.DEFINE_float("inner_lr", 0.01, "Inner learning rate (MAML, training and test).")
flags.DEFINE_float("meta_lr", 0.001, "Adam learning rate of the meta-optimizer (and of the baselines).")
flags.DEFINE_bool("first_order", False, "First-order MAML (drop the second-order term).")
flags.DEFINE_enum("layout", "vectorized", maml.LAYOUTS, "How per-task computations are laid out.")
flags.DEFINE_bool("jit_compile", False, "Compile the training step with XLA.")
flags.DEFINE_list("methods", ["maml", "pretrained", "oracle"], "Which networks to train and evaluate.")
flags.DEFINE_list("eval_shots", ["5", "10", "20"], "K values to evaluate.")
flags.DEFINE_integer("eval_tasks", 600, "Number of held-out test tasks.")
flags.DEFINE_integer("eval_steps", 10, "Fine-tuning steps at test time.")
flags.DEFINE_integer("eval_query_points", 100, "Held-out points per test task on which MSE is measured.")
flags.DEFINE_integer("seed", 0, "Seed of initialisation and of the training tasks.",
                     lower_bound=0)
flags.DEFINE_integer("eval_seed", 1234, "Seed of the test tasks (the same for every method).", lower_bound=0)
flags.DEFINE_string("logdir", "results/sinusoid", "Checkpoints, TensorBoard logs, metrics.json, figures.")
flags.DEFINE_bool("eval_only", False, "Only evaluate the checkpoints in --logdir and print the numbers.")
flags.DEFINE_integer("checkpoint_every", 5000, "Iterations between checkpoints.")
flags.DEFINE_integer("log_every", 1000, "Iterations between progress lines.")

for _name in ("iterations",):
    flags.register_validator(_name, lambda v: v >= 0, f"--{_name} must be >= 0.")
for _name in ("meta_batch_size", "num_shots", "num_inner_steps", "eval_tasks", "eval_query_points",
              "checkpoint_every", "log_every"):
    flags.register_validator(_name, lambda v: v > 0, f"--{_name} must be positive.")
flags.register_validator("eval_steps", lambda v: v >= 0, "--eval_steps must be >= 0.")
for _name in ("inner_lr", "meta_lr"):
    flags.register_validator(_name, finite_positive, f"--{_name} must be a finite number > 0.")
flags.register_validator("methods", lambda v: len(v) > 0 and set(v) <= {"maml", "pretrained", "oracle"},
                         "--methods takes a comma-separated subset of maml,pretrained,oracle.")
flags.register_validator("eval_shots", lambda v: len(v) > 0 and all(s.isdigit() and int(s) > 0 for s in v),
                         "--eval_shots takes positive integers, e.g. 5,10,20.")

PRETRAINED_FINETUNE_LR = {5: 0.01}  # paper: 0.01 for K = 5, 0.02 for K = 10 and 20
PRETRAINED_FINETUNE_LR_DEFAULT = 0.02


def finetune_lr(method: str, k: int) -> float:
    if method == "maml":
        return FLAGS.inner_lr
    if method == "oracle":
        return 0.0  # the oracle already sees the task: it is not fine-tuned (a flat line, as in Figure 3)
    return PRETRAINED_FINETUNE_LR.get(k, PRETRAINED_FINETUNE_LR_DEFAULT)


# ---------------------------------------------------------------------------------------------
# Models and objectives


def build_model(method: str) -> keras.Model:
    return models.mlp_regressor(input_dim=3 if method == "oracle" else 1, name=f"sinusoid_{method}")


def method_inputs(method: str, x, amplitude, phase):
    return with_task_inputs(x, amplitude, phase) if method == "oracle" else x


def objective_for(method: str, model: keras.Model):
    """``objective(weights, batch) -> (loss, aux)`` for :func:`maml_tf.training.make_train_step`."""
    task_loss = maml.supervised_loss(make_forward(model), maml.mse)
    if method == "maml":
        def objective(weights, batch):
            support, query = batch
            loss = maml.meta_objective(task_loss, weights, support, query, FLAGS.num_inner_steps,
                                       FLAGS.inner_lr, FLAGS.first_order, layout=FLAGS.layout)
            return loss, {}
    else:
        def objective(weights, batch):
            x, y = batch  # all tasks' points folded into one regression batch
            return task_loss(weights, (tf.reshape(x, (-1, x.shape[-1])), tf.reshape(y, (-1, 1)))), {}
    return objective


def batch_for(method: str, tasks: SinusoidTasks):
    def batch_for_iteration(i: int):
        rng = np.random.default_rng([FLAGS.seed, i])  # depends only on the iteration: exact resume
        b = tasks.sample(FLAGS.meta_batch_size, rng)
        if method == "maml":
            return b.support, b.query
        x = np.concatenate([b.support_x, b.query_x], 1)
        y = np.concatenate([b.support_y, b.query_y], 1)
        return method_inputs(method, x, b.amplitude, b.phase), y
    return batch_for_iteration


def train_method(method: str, logdir: str):
    keras.utils.set_random_seed(FLAGS.seed)
    model = build_model(method)
    optimizer = keras.optimizers.Adam(FLAGS.meta_lr)
    step = make_train_step(model, optimizer, objective_for(method, model), jit_compile=FLAGS.jit_compile)
    tasks = SinusoidTasks(FLAGS.num_shots, FLAGS.num_shots)
    result = train(model, optimizer, step, batch_for(method, tasks), FLAGS.iterations, logdir,
                   checkpoint_every=FLAGS.checkpoint_every, log_every=FLAGS.log_every, name=method)
    return model, result


def load_method(method: str, logdir: str):
    model = build_model(method)
    ckpt = make_checkpoint(model, None)
    if restore(ckpt, os.path.join(logdir, "ckpt"), what=f"{method} checkpoint") is None:
        raise FileNotFoundError(f"No {method} checkpoint in {logdir}/ckpt; train it first (drop --eval_only).")
    return model, int(ckpt.iteration.numpy()), float(ckpt.wall_time.numpy())


# ---------------------------------------------------------------------------------------------
# Evaluation


def test_tasks(k: int):
    """600 test tasks for this K, identical for every method (seeded by --eval_seed and K)."""
    rng = np.random.default_rng([FLAGS.eval_seed, k])
    return SinusoidTasks(k, FLAGS.eval_query_points).sample(FLAGS.eval_tasks, rng)


def evaluate_method(method: str, model: keras.Model, k: int, tasks) -> dict:
    forward = make_forward(model)
    task_loss = maml.supervised_loss(forward, maml.mse)

    @tf.function
    def curve(support, query):
        return evaluation.metric_curve(task_loss, task_loss, get_weights(model), support, query,
                                       FLAGS.eval_steps, finetune_lr(method, k), layout=FLAGS.layout)

    sx = method_inputs(method, tasks.support_x, tasks.amplitude, tasks.phase)
    qx = method_inputs(method, tasks.query_x, tasks.amplitude, tasks.phase)
    batch = 100 if FLAGS.eval_tasks % 100 == 0 else FLAGS.eval_tasks
    values = np.concatenate([np.asarray(curve((sx[i:i + batch], tasks.support_y[i:i + batch]),
                                              (qx[i:i + batch], tasks.query_y[i:i + batch])))
                             for i in range(0, FLAGS.eval_tasks, batch)])
    s = evaluation.summarize(values)
    return {"mse": s["mean"], "ci95": s["ci95"], "num_tasks": s["num_tasks"], "finetune_lr": finetune_lr(method, k)}


def evaluate_all(trained: dict) -> dict:
    results = {m: {} for m in trained}
    for k in [int(s) for s in FLAGS.eval_shots]:
        tasks = test_tasks(k)
        for method, model in trained.items():
            results[method][f"K={k}"] = evaluate_method(method, model, k, tasks)
    return results


def print_table(results: dict) -> None:
    steps = [0, 1, 5, 10] if FLAGS.eval_steps >= 10 else list(range(FLAGS.eval_steps + 1))
    print(f"\nMSE after n fine-tuning steps (mean ± 95% CI over {FLAGS.eval_tasks} test tasks)")
    print(f"{'method':<12}{'K':>4}" + "".join(f"{f'n={n}':>18}" for n in steps))
    for method, per_k in results.items():
        for kk, r in per_k.items():
            print(f"{method:<12}{kk[2:]:>4}" + "".join(f"{r['mse'][n]:>10.3f} ± {r['ci95'][n]:<5.3f}" for n in steps))
    p = paper.SINUSOID_K5
    print(f"paper K=5 ({p['source']}): MAML {p['maml']}, pretrained {p['pretrained']} at steps {p['steps']}")


# ---------------------------------------------------------------------------------------------
# Figures


def figures(trained: dict, results: dict, logdir: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    # Figure 2: one test task, K = 5 points; MAML vs pretrained before and after 1 and 10 steps.
    k = 5
    t = SinusoidTasks(k, 1).sample(1, np.random.default_rng([FLAGS.eval_seed, 999]))
    xs = np.linspace(-5, 5, 200, dtype=np.float32)[None, :, None]
    truth = sine(xs, t.amplitude, t.phase)[0, :, 0]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4), sharey=True)
    for ax, method in zip(axes, [m for m in ("maml", "pretrained") if m in trained]):
        model = trained[method]
        task_loss = maml.supervised_loss(make_forward(model), maml.mse)
        w = get_weights(model)
        ax.plot(xs[0, :, 0], truth, "r-", lw=2, label="ground truth")
        styles = {0: (":", "lightgreen", "pre-update"), 1: ("--", "green", "1 grad step"),
                  10: ("-", "darkgreen", "10 grad steps")}
        fast, done = w, 0
        for n in (0, 1, 10):
            while done < n:
                fast = maml.inner_update(task_loss, fast, (t.support_x[0], t.support_y[0]), finetune_lr(method, k))
                done += 1
            pred = make_forward(model)(fast, xs[0]).numpy()[:, 0]
            ax.plot(xs[0, :, 0], pred, styles[n][0], color=styles[n][1], label=styles[n][2])
        ax.plot(t.support_x[0, :, 0], t.support_y[0, :, 0], "k^", ms=8, label=f"{k} points used for gradient")
        ax.set_title({"maml": "MAML, K=5",
                      "pretrained": "pretrained, K=5, step size %g" % finetune_lr(method, k)}[method])
        ax.set_xlabel("x")
        ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(os.path.join(logdir, "figure2_fits.png"), dpi=120)
    plt.close(fig)

    # Figure 3: MSE against steps, MAML vs pretrained vs oracle, for each K; paper's Table 2 on K=5.
    ks = list(results[next(iter(results))].keys())
    fig, axes = plt.subplots(1, len(ks), figsize=(5 * len(ks), 4), squeeze=False)
    colors = {"maml": "tab:green", "pretrained": "tab:red", "oracle": "tab:blue"}
    for ax, kk in zip(axes[0], ks):
        for method in results:
            r = results[method][kk]
            n = np.arange(len(r["mse"]))
            ax.errorbar(n, r["mse"], yerr=r["ci95"], color=colors[method], marker="o", ms=3, capsize=2,
                        label=f"{method} (ours)")
        if kk == "K=5":
            p = paper.SINUSOID_K5
            ax.plot(p["steps"], p["maml"], "x", color=colors["maml"], ms=10, mew=2, label="MAML (paper Table 2)")
            ax.plot(p["steps"], p["pretrained"], "x", color=colors["pretrained"], ms=10, mew=2,
                    label="pretrained (paper Table 2)")
        ax.set_title(f"k-shot regression, {kk[2:]}-shot")
        ax.set_xlabel("number of gradient steps")
        ax.set_ylabel("mean squared error")
        ax.set_yscale("log")
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(os.path.join(logdir, "figure3_mse_vs_steps.png"), dpi=120)
    plt.close(fig)


# ---------------------------------------------------------------------------------------------


def config_dict() -> dict:
    keys = ("iterations", "meta_batch_size", "num_shots", "num_inner_steps", "inner_lr", "meta_lr", "first_order",
            "layout", "jit_compile", "methods", "eval_shots", "eval_tasks", "eval_steps", "eval_query_points",
            "seed", "eval_seed")
    cfg = {k: getattr(FLAGS, k) for k in keys}
    cfg["pretrained_finetune_lr"] = {"K=5": 0.01, "other K": PRETRAINED_FINETUNE_LR_DEFAULT}
    return cfg


MODEL_KEYS = ("seed", "num_shots", "num_inner_steps", "inner_lr", "meta_lr", "first_order", "meta_batch_size")


# the test protocol, taken from a stored run like MODEL_KEYS so that --eval_only reproduces its metrics.json
PROTOCOL_KEYS = ("eval_tasks", "eval_seed", "eval_query_points")


def adopt_recorded_settings(logdir: str) -> None:
    """Where ``logdir`` holds a run (a method's config.json beside a checkpoint), its MODEL_KEYS and
    PROTOCOL_KEYS that no flag gives are taken from it, so that the same command without them resumes or
    re-evaluates it; a flag that contradicts it is refused (check_config)."""
    for method in FLAGS.methods:
        path = os.path.join(logdir, method, "config.json")
        if not os.path.exists(path) or not has_checkpoint(os.path.join(logdir, method)):
            continue  # no run, or a start that failed before its first checkpoint
        stored = read_json(path)
        adopted = {k: stored[k] for k in MODEL_KEYS + PROTOCOL_KEYS
                   if k in stored and not FLAGS[k].present and getattr(FLAGS, k) != stored[k]}
        for key, value in adopted.items():
            setattr(FLAGS, key, value)
        if adopted:
            print(f"resuming {logdir} with the run's own " + ", ".join(f"{k}={v!r}" for k, v in adopted.items()),
                  flush=True)
        return


@one_sentence_errors
def main(argv):
    check_logdir(FLAGS.logdir)
    if FLAGS.eval_only:  # reads the folder and writes nothing: needs no lock
        return run(FLAGS.logdir)
    with exclusive_logdir(FLAGS.logdir):  # a second run on this folder stops here, before touching its files
        return run(FLAGS.logdir)


def run(logdir: str) -> int:
    """Train (unless --eval_only) and evaluate every method of --methods in ``logdir``."""
    adopt_recorded_settings(logdir)
    if not FLAGS.eval_only:
        for method in FLAGS.methods:  # before training any: a short test run must not skip into an old one
            check_iterations(os.path.join(logdir, method), FLAGS.iterations)
    trained, training = {}, {}
    for method in FLAGS.methods:
        mdir = os.path.join(logdir, method)
        if FLAGS.eval_only:
            model, its, wall = load_method(method, mdir)
        else:
            check_config(mdir, {**config_dict(), "method": method}, MODEL_KEYS)
            model, res = train_method(method, mdir)
            its, wall = res.iterations, res.wall_time_s
        trained[method] = model
        training[method] = {"iterations": its, "wall_time_s": round(wall, 1)}
    t_eval = time.time()
    results = evaluate_all(trained)
    print_table(results)

    path = os.path.join(logdir, "metrics.json")
    if FLAGS.eval_only:
        if os.path.exists(path):
            with open(path) as f:
                stored = json.load(f)["results"]
            same = all(np.allclose(stored[m][k]["mse"], results[m][k]["mse"], rtol=1e-4, atol=1e-6)
                       for m in results for k in results[m] if m in stored and k in stored[m])
            print(f"\n{'matches' if same else 'DIFFERS FROM'} {path}")
        return 0
    metrics = {
        "config": config_dict(),
        "seed": FLAGS.seed,
        "iterations": training.get("maml", next(iter(training.values())))["iterations"],
        # training time of every method (summed over resumed sessions) plus this evaluation
        "wall_time_s": round(sum(t["wall_time_s"] for t in training.values()) + time.time() - t_eval, 1),
        "training": training,
        "machine": machine_info(),
        "command": " ".join(["python", "experiments/sinusoid.py"] + sys.argv[1:]),
        "protocol": (f"{FLAGS.eval_tasks} test tasks per K, fine-tuned 0..{FLAGS.eval_steps} steps on the same K "
                     f"points; MSE on {FLAGS.eval_query_points} held-out points per task; ci95 = 1.96 std/sqrt(n)"),
        "results": results,
        "paper": {"K=5": paper.SINUSOID_K5, "K=10": paper.SINUSOID_K10_FIGURE3},
    }
    with open(path, "w") as f:
        json.dump(metrics, f, indent=2)
    figures(trained, results, logdir)
    print(f"\nwrote {path}, {logdir}/figure2_fits.png, {logdir}/figure3_mse_vs_steps.png")
    return 0


if __name__ == "__main__":
    app.run(main)
