"""Evaluation of the RL experiments (paper section 5.3, Figures 4-5): average return after 0, 1, 2, 3
policy-gradient steps on 40 test tasks, for MAML, the pretrained policy, a random initialisation and
the oracle; the command line of :mod:`rl.evaluation`, whose docstring gives the test protocol.

    python rl/evaluate.py --task=navigation                  # reads results/rl/navigation/<method>/
    python rl/evaluate.py --task=halfcheetah_vel --methods=maml,random
    python rl/evaluate.py --task=navigation --figure_only    # redraws the figure from metrics.json

Writes <logdir>/metrics.json (means and standard errors, each test task's parameters and returns) and
<logdir>/figure_returns.png, the paper's numbers beside ours. With --methods, the other methods' results of an
existing metrics.json stay in it if they were measured with the same protocol on the same test tasks
(rl.evaluation.keep_previous; --nokeep_previous writes this evaluation's methods alone).
"""

from __future__ import annotations

import contextlib
import json
import os
import sys

from absl import app, flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # this checkout's packages first

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")  # as rl/train.py, before TensorFlow (a user's value wins)

# No TensorFlow at the top: the sampler's worker processes re-import this file (rl.evaluation, imported
# in main, brings it).
from maml_tf.cli import (WORKERS_MESSAGE, finite_positive, one_op_at_a_time, one_sentence_errors,  # noqa: E402
                         workers_ok)
from rl.presets import ACTIVATIONS, ALL_METHODS, BATCH_BY, PRESETS  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_enum("task", None, sorted(PRESETS), "Which RL experiment to evaluate.")
flags.DEFINE_string("logdir", None, "The folder holding the methods' runs as maml/, pretrained/, oracle/ (the "
                    "parent of a training run's --logdir; default: results/rl/<task>).")
flags.DEFINE_list("methods", list(ALL_METHODS), "Methods to evaluate: a subset of maml,pretrained,random,oracle.")
flags.DEFINE_integer("num_tasks", 40, "Test tasks.")
flags.DEFINE_integer("steps", 3, "Policy-gradient steps at test time.")
flags.DEFINE_integer("rollouts_per_task", None, "Rollouts per task for each step (default: the authors' test "
                     "protocol: 40 for navigation and ant direction, 20 for the other locomotion tasks).")
flags.DEFINE_float("test_lr", None, "First test step size for every method (default: per method, "
                   "rl.evaluation.TEST_PROTOCOL); later steps use the protocol's fraction of it.")
flags.DEFINE_enum("batch_by", None, BATCH_BY, "steps: each step's batch is at least rollouts x horizon "
                  "environment steps per task in whole episodes (the authors' test scripts); episodes: exactly "
                  "rollouts_per_task episodes. Default: the MAML run's setting (episodes if it has none).")
flags.DEFINE_enum("checkpoint", "best", ("best", "latest"), "Which checkpoint of each trained method to evaluate.")
flags.DEFINE_integer("seed", 1, "Seed of the rollouts, the random initialisation and (--test_tasks=seeded) the "
                     "test tasks.",
                     lower_bound=0)
flags.DEFINE_enum("test_tasks", "authors", ("authors", "seeded"), "authors: the 40 test tasks of the authors' test "
                  "scripts, on which the paper's returns were measured (rl.evaluation); seeded: drawn with --seed "
                  "(evaluations before 2026-12-05).")
flags.DEFINE_enum("random_activation", None, ACTIVATIONS, "Hidden activation of the random initialisation "
                  "(default: the authors' test script's: tanh for navigation, ReLU for the locomotion tasks).")
flags.DEFINE_integer("num_workers", None, "Sampler processes (default: one per CPU core).")
flags.DEFINE_bool("figure_only", False, "Only redraw <logdir>/figure_returns.png from the existing "
                  "<logdir>/metrics.json; evaluates nothing and leaves metrics.json as it is.")
flags.DEFINE_bool("keep_previous", True, "With --methods: keep the other methods' results of an existing "
                  "<logdir>/metrics.json measured with the same protocol on the same test tasks (metrics.json then "
                  "names the command behind each under carried_over); --nokeep_previous: write this evaluation's "
                  "methods alone.")
flags.DEFINE_bool("deterministic", True, "Run TensorFlow's ops one at a time, as rl/train.py does, so that an "
                  "evaluation repeats its numbers exactly (--nodeterministic: concurrently).")
flags.mark_flag_as_required("task")
flags.register_validator("methods", lambda v: len(v) > 0 and set(v) <= set(ALL_METHODS),
                         "--methods takes a comma-separated subset of maml,pretrained,random,oracle.")
flags.register_validator("num_tasks", lambda v: v > 1, "--num_tasks must be at least 2 (a standard error needs two).")
flags.register_validator("rollouts_per_task", lambda v: v is None or v > 0, "--rollouts_per_task must be positive.")
flags.register_validator("steps", lambda v: v >= 0, "--steps must be >= 0.")
flags.register_validator("test_lr", finite_positive, "--test_lr must be a finite number > 0.")
flags.register_validator("num_workers", workers_ok, WORKERS_MESSAGE)


@one_sentence_errors
def main(argv):
    if FLAGS.deterministic:
        one_op_at_a_time()
    from rl import evaluation

    logdir = FLAGS.logdir or os.path.join("results", "rl", FLAGS.task)
    if FLAGS.figure_only:
        print(f"wrote {evaluation.redraw(logdir)}")
        return 0
    from maml_tf.training import exclusive_logdir

    # two evaluations writing to one folder at once would each drop the other's methods from metrics.json
    with exclusive_logdir(logdir) if os.path.isdir(logdir) else contextlib.nullcontext():
        return evaluate_into(logdir)


def evaluate_into(logdir: str) -> int:
    """Evaluate --methods of the runs in ``logdir`` and write its metrics.json and figure."""
    from rl import evaluation

    previous, previous_path = None, os.path.join(logdir, "metrics.json")
    if FLAGS["methods"].present and FLAGS.keep_previous and os.path.isfile(previous_path):
        try:  # read before evaluating, so that a corrupt file costs no evaluation
            with open(previous_path) as f:
                previous = json.load(f)
        except ValueError:
            raise ValueError(f"{previous_path} is not valid JSON; move it away, or pass --nokeep_previous to replace "
                             f"it.") from None
    metrics = evaluation.evaluate(
        FLAGS.task, logdir, FLAGS.methods if FLAGS["methods"].present else None, num_tasks=FLAGS.num_tasks,
        steps=FLAGS.steps, rollouts_per_task=FLAGS.rollouts_per_task, test_lr=FLAGS.test_lr,
        batch_by=FLAGS.batch_by, checkpoint=FLAGS.checkpoint, seed=FLAGS.seed, test_tasks=FLAGS.test_tasks,
        num_workers=FLAGS.num_workers, random_activation=FLAGS.random_activation,
        command=" ".join(["python", "rl/evaluate.py"] + sys.argv[1:]))
    if previous is not None:
        metrics, kept, why = evaluation.keep_previous(metrics, previous)
        if kept:
            print(f"kept {', '.join(kept)} from the previous {previous_path} (same protocol and test tasks)")
        elif why:
            dropped = [m for m in previous.get("results", {}) if m not in metrics["results"]]
            print(f"replacing {previous_path}, whose {', '.join(dropped)} were measured with another protocol "
                  f"({why}): they are not kept")
    path, figure = evaluation.write(metrics, logdir)
    print(f"wrote {path} and {figure}")
    return 0


if __name__ == "__main__":
    app.run(main)
