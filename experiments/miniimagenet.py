"""mini-ImageNet few-shot classification (paper section 5.2, Table 1): 48.70% (1-shot), 63.11% (5-shot).

    python experiments/miniimagenet.py --data_dir=/data/miniImagenet --num_shots=1
    python experiments/miniimagenet.py --data_dir=/data/miniImagenet --num_shots=5
    python experiments/miniimagenet.py --data_dir=/data/miniImagenet --num_shots=1 --first_order
    python experiments/miniimagenet.py --eval_only --logdir=results/miniimagenet/5way1shot --data_dir=...

    # no data? run the whole pipeline on a small synthetic mini-ImageNet in the real on-disk format:
    python experiments/miniimagenet.py --fixture --iterations=20 --eval_tasks=20 --val_tasks=10 \\
        --validate_every=10 --logdir=/tmp/miniimagenet_fixture

Paper settings, filled in for every flag left unset (appendix A.1): conv net with 32 filters and 2x2
max-pooling, 5 inner steps with inner lr 0.01 (10 steps at test time), meta-batch 4 (1-shot) or 2
(5-shot), 15 query images per class in meta-training, 60,000 iterations, Adam 0.001, Ravi & Larochelle
split (64 / 16 / 20 classes), 600 test tasks. Test tasks use K query images per class by default
(--eval_num_query), as the authors' evaluation code; the paper's confidence intervals (±1.84 for
1-shot, ±0.92 for 5-shot over 600 tasks) match that protocol. The best checkpoint on the validation
classes is tested. Batch norm is transductive as in the paper (see --transductive_bn). The inner step
differentiates the support set's mean cross-entropy; --inner_loss_reduction=sum uses the authors' loss
(summed over the support examples and divided by K: 5 times the mean, so lr 0.01 acts as 0.05).

mini-ImageNet cannot be downloaded automatically: see data/miniimagenet.py (MINIIMAGENET_HOWTO) for
how to build <data_dir>/images/*.jpg and the split CSVs.
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

PRESET = dict(num_inner_steps=5, inner_lr=0.01, num_eval_steps=10, num_query=15)
META_BATCH = {1: 4, 5: 2}  # paper: 4 for 1-shot, 2 for 5-shot

FLAGS = flags.FLAGS
fewshot_flags.define_task_flags({
    "num_query": "Query images per class during meta-training (default 15, as the paper).",
    "eval_num_query": "Query images per class in validation and test tasks (default K, as the authors' evaluation).",
    "meta_batch_size": "Tasks per meta-iteration (default: paper, 4 for 1-shot, 2 for 5-shot).",
    "inner_lr": "Inner learning rate (default: paper, 0.01).",
    "num_inner_steps": "Inner steps in meta-training (default: paper, 5).",
    "num_eval_steps": "Inner steps at test time (default: paper, 10).",
    "first_order": "First-order MAML (paper: 48.07% / 63.15%).",
})
flags.DEFINE_string("data_dir", None, "Folder with images/ and train/val/test.csv (default $MAML_TF_DATA_DIR/"
                    "miniimagenet, else ../shared/data/miniimagenet).")
flags.DEFINE_bool("fixture", False, "Write a small synthetic mini-ImageNet (data/fixtures.py) into "
                  "<logdir>/fixture_data and use it as --data_dir: an end-to-end run without the real data.")
flags.DEFINE_string("logdir", None, "Checkpoints, history, metrics.json, figure "
                    "(default results/miniimagenet[_first_order]/<W>way<K>shot).")
fewshot_flags.define_run_flags(eval_batch_size=10)
flags.adopt_module_key_flags(fewshot_flags)  # --help lists them with this module's own
flags.register_multi_flags_validator(
    ["fixture", "data_dir"], lambda f: not (f["fixture"] and f["data_dir"]),
    "--fixture writes its own data; drop --data_dir (or --fixture).")


IMAGES_PER_CLASS = 600  # in the real data; the fixture is made like it


def config_from_flags(stored: dict | None = None):
    """The run's settings: flags, else (in --eval_only or on resume) the stored config, else the paper's preset."""
    import fewshot
    num_shots = FLAGS.num_shots if FLAGS["num_shots"].present or not stored else stored["num_shots"]
    return fewshot.config_from_flags(
        FLAGS, stored, "miniimagenet_first_order" if FLAGS.first_order else "miniimagenet", "conv",
        {**PRESET, "meta_batch_size": META_BATCH.get(num_shots, 2 if num_shots > 1 else 4),
         "eval_num_query": num_shots})


def default_logdir(cfg, fixture: bool = False) -> str:
    """results/<dataset>/<setting>; a run on the synthetic fixture goes to the temporary folder instead, so that
    its numbers never stand in results/ beside the paper's."""
    import fewshot
    import tempfile
    if fixture:
        return os.path.join(tempfile.gettempdir(), "maml_tf_miniimagenet_fixture",
                            cfg.setting + fewshot.variant_suffix(cfg))
    return os.path.join("results", cfg.dataset, cfg.setting + fewshot.variant_suffix(cfg))


def check_classes(record: dict, logdir: str, write: bool = True) -> None:
    """A run resumes and is evaluated on the classes it was made with (its split.json): other data, e.g. the
    fixture's classes or another copy of the split, would make its numbers meaningless."""
    import fewshot
    path = os.path.join(logdir, "split.json")
    if os.path.exists(path) and fewshot.has_checkpoint(logdir):
        old = read_json(path)
        if old.get("classes") != record["classes"] or old.get("fixture", False) != record.get("fixture", False):
            raise ValueError(f"{logdir} holds a run made on other mini-ImageNet classes (its split.json); pass the "
                             f"--data_dir (or --fixture) it was made with, or use another --logdir.")
    if write:
        os.makedirs(logdir, exist_ok=True)
        with open(path, "w") as f:
            json.dump(record, f, indent=1)


def load_samplers(cfg, data_dir, use_cache: bool = True):
    import fewshot

    from data.miniimagenet import load_miniimagenet_splits, split_csv_path
    splits = load_miniimagenet_splits(data_dir, use_cache=use_cache)
    query = {"train": cfg.num_query, "val": cfg.eval_num_query, "test": cfg.eval_num_query}
    samplers = {k: fewshot.episode_sampler(splits[k].sampler(cfg.num_ways, cfg.num_shots, query[k])) for k in splits}

    def images_per_class(images):  # one number where every class has as many (600 in the real data)
        sizes = sorted({len(c) for c in images})
        return sizes[0] if len(sizes) == 1 else {"min": sizes[0], "max": sizes[-1]}

    record = {"classes": {k: list(v.class_names) for k, v in splits.items()},
              "images_per_class": {k: images_per_class(v.images) for k, v in splits.items()},
              "csv_sha256_16": {}}
    for split in splits:  # hash of the split file that defined the classes
        with open(split_csv_path(data_dir, split), "rb") as f:
            record["csv_sha256_16"][split] = hashlib.sha256(f.read()).hexdigest()[:16]
    return samplers, record


@one_sentence_errors
def main(argv):
    import fewshot

    from maml_tf import models, paper
    cfg = fewshot.prepare(FLAGS, config_from_flags)
    logdir = FLAGS.logdir or default_logdir(cfg, FLAGS.fixture)
    if FLAGS.fixture and not FLAGS.logdir:
        print(f"note: a run on the synthetic fixture goes to {logdir} (--logdir to choose)", file=sys.stderr)
    data_dir = FLAGS.data_dir
    need = cfg.num_shots + max(cfg.num_query, cfg.eval_num_query)
    if need > IMAGES_PER_CLASS:
        raise ValueError(f"--num_shots={cfg.num_shots} with {max(cfg.num_query, cfg.eval_num_query)} query images "
                         f"needs {need} images per class, but mini-ImageNet has {IMAGES_PER_CLASS}.")
    if FLAGS.fixture:
        from data.fixtures import make_miniimagenet_fixture
        data_dir = os.path.join(logdir, "fixture_data")
        make_miniimagenet_fixture(data_dir, classes_per_split={"train": max(8, cfg.num_ways), "val": cfg.num_ways,
                                                               "test": cfg.num_ways},
                                  images_per_class=max(12, need), seed=cfg.seed)
    samplers, split = load_samplers(cfg, data_dir, use_cache=not FLAGS.fixture)
    split["fixture"] = FLAGS.fixture
    check_classes(split, logdir, write=not FLAGS.eval_only)
    paper_entry = paper.CLASSIFICATION.get(cfg.dataset, {}).get(cfg.setting)
    if paper_entry and FLAGS.fixture:
        paper_entry = {**paper_entry, "note": "for the real mini-ImageNet; this run is on synthetic fixture data"}
    command = " ".join(["python", "experiments/miniimagenet.py"] + sys.argv[1:])
    build = lambda: models.miniimagenet_conv(cfg.num_ways, output_init=cfg.output_init)  # noqa: E731
    fewshot.run(cfg, build, samplers, logdir, paper_entry, split, command, eval_only=FLAGS.eval_only)
    return 0


if __name__ == "__main__":
    app.run(main)
