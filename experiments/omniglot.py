"""Omniglot few-shot classification (paper section 5.2, Table 1).

    python experiments/omniglot.py                                   # 5-way 1-shot, conv net, paper settings
    python experiments/omniglot.py --num_ways=20 --num_shots=1       # 20-way 1-shot
    python experiments/omniglot.py --model=mlp                       # Table 1's "MAML, no conv"
    python experiments/omniglot.py --eval_only --logdir=results/omniglot/5way1shot

Paper settings, filled in for every flag left unset (appendix A.1; authors' code where it says more):
  5-way:  1 inner step, inner lr 0.4, meta-batch 32, evaluated after 3 steps
  20-way: 5 inner steps, inner lr 0.1, meta-batch 16, evaluated after 5 steps (the paper's text; the
          authors' code computes 10 test-time steps for every Omniglot setting, --num_eval_steps=10)
  all:    K query examples per class (training and test, as the authors' code), 60,000 iterations,
          Adam 0.001; 1200 meta-training characters of which 100 for validation, 423 for testing,
          each rotated by 0/90/180/270 degrees into classes of their own; 600 test tasks.
Batch norm uses the statistics of the current batch (transductive, as the paper); with
--notransductive_bn the query examples are normalised with the support set's statistics instead, in
training and evaluation (each query prediction then depends on the support set and itself only).
The inner loop adapts every weight, batch-norm offsets included; --noadapt_batch_norm leaves those to
the meta-optimizer alone, as the authors' code does (logdir suffix _bn_meta_only). The inner step
differentiates the mean cross-entropy of the support set; --inner_loss_reduction=sum differentiates
the authors' support loss instead, the per-example cross-entropy summed and divided by K, which is N
times the mean: their inner lr 0.4 (5-way) or 0.1 (20-way) is then a step of 2.0 on the mean (logdir
suffix _sum_loss). The output layer's kernel starts as Keras's default (Glorot uniform);
--output_init=normal starts it as N(0, 1), as the authors' code does for this network (logdir suffix
_normal_output_init). A task's classes are N of the rotated classes, drawn independently;
--distinct_characters draws N distinct characters and a random rotation for each instead, as the
authors' code (logdir suffix _distinct_characters; with --eval_only it evaluates a run on such tasks).
--meta_clip_norm=C clips each meta-gradient to global norm C before Adam (not the paper's protocol,
which has no clipping; logdir suffix _clipC). history.jsonl records the meta-gradient's norm (median
and largest over each --log_every window, before any clipping).

Writes <logdir>/metrics.json (default logdir results/omniglot/<W>way<K>shot, results/omniglot_mlp/...
for the MLP), <logdir>/learning_curve.png, <logdir>/split.json (the character lists), <logdir>/config.json
(the run's settings, checked on resume), <logdir>/history.jsonl (training and validation curves),
TensorBoard scalars in <logdir>/tb, checkpoints in <logdir>/ckpt (latest) and <logdir>/best (best
validation accuracy, used for the test). --eval_only writes nothing.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys

from absl import app, flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # this checkout's packages first
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")  # grouped convolutions on CPUs without AVX-512 (maml_tf/batched.py)

import fewshot_flags  # noqa: E402
# TensorFlow is imported in main, once the flags are valid.
from maml_tf.cli import one_sentence_errors, read_json  # noqa: E402

DRAWINGS = 20  # drawings per Omniglot character
PRESETS = {  # paper appendix A.1, by number of ways
    5: dict(num_inner_steps=1, inner_lr=0.4, meta_batch_size=32, num_eval_steps=3),
    20: dict(num_inner_steps=5, inner_lr=0.1, meta_batch_size=16, num_eval_steps=5),
}


def preset_layout(model: str, num_shots: int) -> str:
    """The training step's layout measured fastest here for the preset (``benchmarks/meta_step.py``, lines of
    ``results/benchmarks/meta_step.jsonl``): for the conv net, tasks folded into grouped convolutions at
    1 shot (1.83x the per-task loop at 5-way) and the plain per-task loop from 5 shots, where each task's
    batch is large enough for ordinary convolutions (1.22x and 1.33x the batched layout at 5- and 20-way).
    The MLP (no convolutions; not measured at 5 shots) keeps the batched layout."""
    return "loop" if model == "conv" and num_shots >= 5 else "batched"


FLAGS = flags.FLAGS
fewshot_flags.define_task_flags({
    "num_query": "Query examples per class during meta-training (default K, as the authors).",
    "eval_num_query": "Query examples per class in validation and test tasks (default K).",
    "meta_batch_size": "Tasks per meta-iteration (default: paper, 32 for 5-way, 16 for 20-way).",
    "inner_lr": "Inner learning rate (default: paper, 0.4 for 5-way, 0.1 for 20-way).",
    "num_inner_steps": "Inner steps in meta-training (default: paper, 1 for 5-way, 5 for 20-way).",
    "num_eval_steps": "Inner steps at test time (default: paper, 3 for 5-way, 5 for 20-way).",
    "first_order": "First-order MAML (drop the second-order term).",
})
flags.DEFINE_enum("model", "conv", ["conv", "mlp"], "conv: 4 conv blocks (Table 1 MAML); mlp: 256-128-64-64 (no conv).")
flags.DEFINE_string("data_dir", None, "Folder with images_background.zip and images_evaluation.zip "
                    "(default $MAML_TF_DATA_DIR/omniglot, else ../shared/data/omniglot).")
flags.DEFINE_bool("download", True, "Download the archives from the Omniglot repository if they are missing.")
flags.DEFINE_integer("num_train_characters", 1200, "Meta-training characters, validation included (paper: 1200).")
flags.DEFINE_integer("num_val_characters", 100, "Of those, held out for validation (authors' code: 100).")
flags.DEFINE_bool("distinct_characters", False,
                  "Tasks of N distinct characters, each at a random rotation, as the authors' code; default: N of "
                  "the rotated classes drawn independently (two rotations of one character can meet in a task).")
flags.DEFINE_string("logdir", None,
                    "Checkpoints, history, metrics.json, figure (default results/omniglot[_mlp]/<W>way<K>shot).")
fewshot_flags.define_run_flags(eval_batch_size=100)
flags.adopt_module_key_flags(fewshot_flags)  # --help lists them with this module's own
flags.register_validator("num_train_characters", lambda v: v > 0, "--num_train_characters must be a positive integer.")
flags.register_validator("num_val_characters", lambda v: v >= 0, "--num_val_characters must be >= 0.")
flags.register_multi_flags_validator(
    ["num_shots", "num_query", "eval_num_query"],
    lambda f: all(f["num_shots"] + (q if q is not None else f["num_shots"]) <= DRAWINGS
                  for q in (f["num_query"], f["eval_num_query"])),
    f"--num_shots plus --num_query (and plus --eval_num_query) must be at most {DRAWINGS}, the drawings per "
    f"Omniglot character.")
flags.register_multi_flags_validator(
    ["num_train_characters", "num_val_characters"], lambda f: f["num_val_characters"] < f["num_train_characters"],
    "--num_val_characters must be smaller than --num_train_characters.")


def config_from_flags(stored: dict | None = None):
    """The run's settings: flags, else (in --eval_only or on resume) the stored config, else the paper's preset."""
    import fewshot
    num_ways = FLAGS.num_ways if FLAGS["num_ways"].present or not stored else stored["num_ways"]
    num_shots = FLAGS.num_shots if FLAGS["num_shots"].present or not stored else stored["num_shots"]
    preset = PRESETS.get(num_ways, PRESETS[5] if num_ways < 20 else PRESETS[20])
    model = stored.get("model", FLAGS.model) if stored else FLAGS.model
    return fewshot.config_from_flags(FLAGS, stored, "omniglot_mlp" if model == "mlp" else "omniglot",
                                     FLAGS.model, {**preset, "num_query": num_shots, "eval_num_query": num_shots,
                                                   "layout": preset_layout(model, num_shots)})


def default_logdir(cfg) -> str:
    import fewshot
    return os.path.join("results", cfg.dataset,
                        cfg.setting + ("_first_order" if cfg.first_order else "") + fewshot.variant_suffix(cfg))


def load_splits(cfg):
    import fewshot

    from data.omniglot import load_omniglot_splits
    splits = load_omniglot_splits(FLAGS.data_dir, num_train=FLAGS.num_train_characters,
                                  num_val=FLAGS.num_val_characters, download=FLAGS.download)
    samplers = {
        "train": splits.train.sampler(cfg.num_ways, cfg.num_shots, cfg.num_query,
                                      distinct_groups=cfg.distinct_characters),
        "val": splits.val.sampler(cfg.num_ways, cfg.num_shots, cfg.eval_num_query,
                                  distinct_groups=cfg.distinct_characters),
        "test": splits.test.sampler(cfg.num_ways, cfg.num_shots, cfg.eval_num_query,
                                    distinct_groups=cfg.distinct_characters),
    }
    return splits, {k: fewshot.episode_sampler(s) for k, s in samplers.items()}


def check_split(splits, logdir: str) -> None:
    """A run in ``logdir`` resumes and is evaluated on the character split it was made with (its
    split.json): another split would mix its validation or test characters into training."""
    import fewshot

    path = os.path.join(logdir, "split.json")
    if not os.path.exists(path) or not fewshot.has_checkpoint(logdir):  # none, or a start that failed
        return
    old = read_json(path)
    new = splits.to_json()
    if old.get("characters") != new["characters"] or old.get("rotations") != new["rotations"]:
        sizes = ", ".join(f"{len(v)} {k}" for k, v in old.get("characters", {}).items())
        raise ValueError(f"{logdir} holds a run made on another character split ({sizes} characters in "
                         f"split.json); pass the --num_train_characters and --num_val_characters it was made "
                         f"with, or use another --logdir.")


def split_record(splits, logdir: str) -> dict:
    """Seed, sizes and hashes of the character split; the lists themselves go to <logdir>/split.json."""
    data = splits.to_json()
    digest = {k: hashlib.sha256("\n".join(v).encode()).hexdigest()[:16] for k, v in data["characters"].items()}
    os.makedirs(logdir, exist_ok=True)
    with open(os.path.join(logdir, "split.json"), "w") as f:
        json.dump(data, f, indent=1)
    return {"seed": data["seed"], "rotations": data["rotations"],
            "characters": {k: len(v) for k, v in data["characters"].items()},
            "characters_sha256_16": digest, "lists": "split.json",
            "rule": "sorted character folders permuted with np.random.default_rng(seed); first "
                    "num_train - num_val train, next num_val validation, rest test (data/omniglot.py)"}


@one_sentence_errors
def main(argv):
    import fewshot

    from maml_tf import models, paper
    cfg = fewshot.prepare(FLAGS, config_from_flags)
    logdir = FLAGS.logdir or default_logdir(cfg)
    if cfg.num_ways not in PRESETS:
        print(f"note: the paper has no {cfg.num_ways}-way setting; unset flags take the "
              f"{5 if cfg.num_ways < 20 else 20}-way preset.", file=sys.stderr)
    splits, samplers = load_splits(cfg)
    check_split(splits, logdir)
    if cfg.init_from:  # the weights it starts from must not have seen this run's validation or test characters
        check_split(splits, cfg.init_from)
    build = {"conv": lambda: models.omniglot_conv(cfg.num_ways, output_init=cfg.output_init),
             "mlp": lambda: models.mlp_classifier(cfg.num_ways, output_init=cfg.output_init)}[cfg.model]
    paper_entry = paper.CLASSIFICATION.get(cfg.dataset, {}).get(cfg.setting)
    if paper_entry and cfg.first_order:
        paper_entry = {**paper_entry, "note": "second-order MAML; the paper gives no first-order Omniglot number"}
    command = " ".join(["python", "experiments/omniglot.py"] + sys.argv[1:])
    fewshot.run(cfg, build, samplers, logdir, paper_entry, split_record(splits, logdir) if not FLAGS.eval_only else {},
                command, eval_only=FLAGS.eval_only)
    return 0


if __name__ == "__main__":
    app.run(main)
