"""experiments/omniglot.py end to end on the synthetic Omniglot of data/fixtures.py: training with
validation and resume, metrics.json, figure, --eval_only; bad input ends with one sentence."""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from data.fixtures import make_omniglot_fixture

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "experiments" / "omniglot.py"
# 9 fixture characters: 4 train + 2 validation + 3 test, x 4 rotations
TINY = ["--num_train_characters=6", "--num_val_characters=2", "--nodownload", "--meta_batch_size=4",
        "--val_tasks=6", "--eval_tasks=10", "--eval_batch_size=5", "--log_every=2", "--validate_every=2",
        "--checkpoint_every=2"]
REQUIRED_KEYS = {"config", "seed", "iterations", "wall_time_s", "transductive_bn", "test", "validation", "paper",
                 "split", "command"}


def run(*args, check=True):
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    proc = subprocess.run([sys.executable, str(SCRIPT), *args], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=600)
    if check and proc.returncode != 0:
        raise AssertionError(f"exit {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}")
    return proc


def last_line(text):
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return lines[-1] if lines else ""


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return make_omniglot_fixture(tmp_path_factory.mktemp("omniglot"))


def test_train_resume_evaluate(data_dir, tmp_path):
    logdir = tmp_path / "run"
    common = [f"--data_dir={data_dir}", f"--logdir={logdir}", *TINY]
    t0 = time.time()
    first = run(*common, "--iterations=4")
    assert "test accuracy" in first.stdout
    t1 = time.time()
    second = run(*common, "--iterations=6")  # resumes from the checkpoint at 4
    t2 = time.time()
    assert "resumed" in second.stdout

    metrics = json.loads((logdir / "metrics.json").read_text())
    assert REQUIRED_KEYS <= set(metrics)
    assert metrics["iterations"] == 6 and metrics["seed"] == 0 and metrics["transductive_bn"] is True
    assert metrics["test"]["num_tasks"] == 10
    assert len(metrics["test"]["accuracy"]) == len(metrics["test"]["ci95"]) == 4  # 0..3 steps (5-way preset)
    assert all(0.0 <= a <= 100.0 for a in metrics["test"]["accuracy"])
    assert metrics["paper"] == {"accuracy": 98.7, "ci95": 0.4}
    assert metrics["config"]["inner_lr"] == 0.4 and metrics["config"]["num_inner_steps"] == 1
    assert metrics["config"]["layout"] == "batched"  # the 1-shot preset's
    assert metrics["split"]["characters"] == {"train": 4, "val": 2, "test": 3}
    assert metrics["validation"]["best_iteration"] in (2, 4, 6)
    assert metrics["command"].startswith("python experiments/omniglot.py")
    # wall time = training over both sessions (from the checkpoint) + this session's evaluation, each once
    assert metrics["wall_time_s"] == pytest.approx(metrics["train_wall_time_s"] + metrics["eval_wall_time_s"], abs=0.11)
    assert 0 < metrics["eval_wall_time_s"] <= t2 - t1 and metrics["wall_time_s"] <= t2 - t0
    for name in ("learning_curve.png", "split.json", "history.jsonl", "config.json"):
        assert (logdir / name).exists(), name
    history = [json.loads(line) for line in (logdir / "history.jsonl").read_text().splitlines()]
    train_its = [h["iteration"] for h in history if "train_query_accuracy" in h]
    assert train_its == [2, 4, 6]  # the resumed run continues the curve
    assert [h["iteration"] for h in history if "val_accuracy" in h] == [2, 4, 6]
    curve = metrics["validation"]["curve"]
    assert [c["iteration"] for c in curve] == [2, 4, 6]
    assert [c["accuracy"] for c in curve] == [h["val_accuracy"][-1] for h in history if "val_accuracy" in h]
    assert all(c["wall_time_s"] > 0 for c in curve)
    assert curve[0]["wall_time_s"] <= curve[1]["wall_time_s"] <= curve[2]["wall_time_s"]  # resumed clock
    for milestone, first in metrics["validation"]["first_at_or_above"].items():
        reached = [c for c in curve if c["accuracy"] >= float(milestone)]
        assert first == (None if not reached else {k: reached[0][k] for k in ("iteration", "wall_time_s")})

    again = run("--eval_only", f"--logdir={logdir}", f"--data_dir={data_dir}", *TINY[:3], "--val_tasks=6",
                "--eval_tasks=10", "--eval_batch_size=5")
    assert "matches" in again.stdout
    # the evaluation protocol (tasks, seed, batch size, which draws the tasks) is the run's own by default
    alone = run("--eval_only", f"--logdir={logdir}", f"--data_dir={data_dir}", *TINY[:3])
    assert "matches" in alone.stdout
    # a shorter --iterations does not skip into the run and rewrite its results: one sentence
    before = (logdir / "metrics.json").read_text()
    short = run(*common, "--iterations=2", check=False)
    assert short.returncode == 1 and last_line(short.stderr) == (
        f"error: {logdir} holds a run at iteration 6, past --iterations=2; pass a larger --iterations to extend "
        f"it, another --logdir for a new run, or --eval_only to evaluate it.")
    assert (logdir / "metrics.json").read_text() == before
    # --eval_only refuses a network of another shape in one sentence (not a shape error from TensorFlow)
    other = run("--eval_only", f"--logdir={logdir}", f"--data_dir={data_dir}", *TINY[:3], "--num_ways=3",
                check=False)
    assert other.returncode == 1 and "holds a run with num_ways=5 but this run asks for num_ways=3" in other.stderr
    assert "Traceback" not in other.stderr


def test_a_start_that_failed_before_its_first_checkpoint_does_not_bind_the_next(data_dir, tmp_path):
    logdir = tmp_path / "run"
    failed = run(f"--data_dir={data_dir}", f"--logdir={logdir}", *TINY, "--iterations=2",
                 f"--init_from={tmp_path / 'nowhere'}", check=False)
    assert failed.returncode == 1 and (logdir / "config.json").exists()  # written before init_from was read
    fixed = run(f"--data_dir={data_dir}", f"--logdir={logdir}", *TINY, "--iterations=2")
    assert "test accuracy" in fixed.stdout
    assert json.loads((logdir / "config.json").read_text())["init_from"] is None


def test_logdir_alone_resumes_a_run_with_its_own_settings(data_dir, tmp_path):
    logdir = tmp_path / "run"
    data = [f"--data_dir={data_dir}", f"--logdir={logdir}", *TINY[:3], "--eval_tasks=10", "--eval_batch_size=5"]
    run(*data, *TINY[3:], "--inner_lr=0.3", "--meta_batch_size=3", "--seed=1", "--iterations=2")
    refused = run(*data, "--inner_lr=0.5", "--iterations=4", check=False)
    assert refused.returncode != 0 and "Traceback" not in refused.stderr
    assert "inner_lr=0.3 but this run asks for inner_lr=0.5" in refused.stderr
    refused = run(*data, "--model=mlp", "--iterations=4", check=False)
    assert refused.returncode != 0 and "model='conv' but this run asks for model='mlp'" in refused.stderr
    other_split = [a if a != "--num_val_characters=2" else "--num_val_characters=3" for a in data]
    for args in (other_split + ["--iterations=4"], other_split + ["--eval_only"]):
        refused = run(*args, check=False)
        assert refused.returncode != 0 and "Traceback" not in refused.stderr
        assert "another character split (4 train, 2 val, 3 test characters" in refused.stderr, refused.stderr
    resumed = run(*data, "--iterations=4")
    assert "resuming" in resumed.stdout and "inner_lr=0.3" in resumed.stdout and "meta_batch_size=3" in resumed.stdout
    metrics = json.loads((logdir / "metrics.json").read_text())
    assert metrics["iterations"] == 4 and metrics["seed"] == 1
    assert {k: metrics["config"][k] for k in ("inner_lr", "meta_batch_size", "val_tasks", "validate_every")} == {
        "inner_lr": 0.3, "meta_batch_size": 3, "val_tasks": 6, "validate_every": 2}
    history = [json.loads(line) for line in (logdir / "history.jsonl").read_text().splitlines()]
    assert [h["iteration"] for h in history if "val_accuracy" in h] == [2, 4]  # the run's own validate_every


# (flag of the run, flag that contradicts it, config key, its value in the run, the value of runs
# recorded before the flag existed)
RECORDED_SETTINGS = [
    ("--noadapt_batch_norm", "--adapt_batch_norm", "adapt_batch_norm", False, True),  # authors' inner loop
    ("--inner_loss_reduction=sum", "--inner_loss_reduction=mean", "inner_loss_reduction", "sum", "mean"),
    ("--output_init=normal", "--output_init=glorot", "output_init", "normal", "glorot"),  # authors' output layer
    ("--compute_dtype=bfloat16", "--compute_dtype=float32", "compute_dtype", "bfloat16", "float32"),
    ("--meta_clip_norm=3", "--meta_clip_norm=0", "meta_clip_norm", 3.0, 0.0),  # not the paper's: no clipping
]


@pytest.mark.parametrize("flag,other,key,value,before", RECORDED_SETTINGS)
def test_a_recorded_setting_is_part_of_the_run(request, data_dir, tmp_path, flag, other, key, value, before):
    """The authors' inner-loop and initialisation settings are recorded and cannot change on resume; a run
    recorded before such a flag existed had the old behaviour."""
    if key == "compute_dtype":
        request.getfixturevalue("needs_bfloat16_convolutions")
    logdir = tmp_path / "run"
    data = [f"--data_dir={data_dir}", f"--logdir={logdir}", *TINY]
    run(*data, flag, "--iterations=1")
    config = json.loads((logdir / "config.json").read_text())
    metrics = json.loads((logdir / "metrics.json").read_text())
    assert config[key] == value and metrics["config"][key] == value
    if key == "inner_loss_reduction":  # 5-way: lr 0.4 on N times the mean is a step of 2.0 on the mean
        assert config["inner_step_size"] == pytest.approx(5 * 0.4) and "lr 2 on the mean" in metrics["protocol"]
    refused = run(*data, other, "--iterations=2", check=False)
    assert refused.returncode != 0 and "Traceback" not in refused.stderr
    assert f"{key}={value!r} but this run asks for {key}={before!r}" in refused.stderr
    del config[key]  # as a run made before the flag
    (logdir / "config.json").write_text(json.dumps(config))
    refused = run(*data, flag, "--iterations=2", check=False)
    assert f"{key}={before!r} but this run asks for {key}={value!r}" in refused.stderr


@pytest.mark.parametrize("args,layout", [
    (["--num_shots=5"], "loop"),                                # the conv net's 5-shot preset: the per-task loop
    (["--num_shots=5", "--layout=batched"], "batched"),         # a flag overrides the preset
    (["--num_shots=5", "--compute_dtype=bfloat16"], "batched"),  # bfloat16 runs on the batched layout only
    (["--num_shots=5", "--model=mlp"], "batched"),              # no convolutions: batched
])
def test_the_training_layout_defaults_to_the_presets(request, data_dir, tmp_path, args, layout):
    """Without --layout, the training step takes the layout measured fastest for the preset (batched at
    1 shot: test_train_resume_evaluate; the loop from 5 shots), recorded in metrics.json; a run resumed
    with another layout is not refused (it is not a setting of the run)."""
    if "--compute_dtype=bfloat16" in args:
        request.getfixturevalue("needs_bfloat16_convolutions")
    logdir = tmp_path / "run"
    data = [f"--data_dir={data_dir}", f"--logdir={logdir}", *TINY, "--validate_every=0"]
    run(*data, *args, "--iterations=1")
    assert json.loads((logdir / "metrics.json").read_text())["config"]["layout"] == layout
    if layout == "loop":
        run(*data, *args, "--layout=batched", "--iterations=2")
        assert json.loads((logdir / "metrics.json").read_text())["config"]["layout"] == "batched"


def test_distinct_characters_is_part_of_the_run(data_dir, tmp_path):
    """The authors' tasks (distinct characters at random rotations): recorded, refused on resume with the
    other sampling, usable with --eval_only on a run trained either way, and impossible with more ways
    than characters in a split (one sentence)."""
    logdir = tmp_path / "run"
    data = [f"--data_dir={data_dir}", f"--logdir={logdir}", *TINY, "--num_ways=2"]
    run(*data, "--distinct_characters", "--iterations=1")
    config = json.loads((logdir / "config.json").read_text())
    metrics = json.loads((logdir / "metrics.json").read_text())
    assert config["distinct_characters"] is True and "of distinct characters" in metrics["protocol"]
    refused = run(*data, "--nodistinct_characters", "--iterations=2", check=False)
    assert refused.returncode != 0 and "Traceback" not in refused.stderr
    assert "distinct_characters=True but this run asks for distinct_characters=False" in refused.stderr
    evaluated = run(*data, "--eval_only", "--nodistinct_characters")
    assert "DIFFERS" not in evaluated.stdout and "matches" not in evaluated.stdout  # another protocol: not compared
    assert "matches" in run(*data, "--eval_only").stdout
    too_many = run(f"--data_dir={data_dir}", f"--logdir={tmp_path / 'five'}", *TINY, "--distinct_characters",
                   "--iterations=1", check=False)
    assert too_many.returncode != 0 and "Traceback" not in too_many.stderr
    assert "5-way tasks of distinct characters need 5 characters but Omniglot (train) has only 4." in too_many.stderr


@pytest.mark.parametrize("mode", [["--eval_only"], ["--iterations=2"]])
def test_a_corrupt_config_of_a_run_is_one_sentence(data_dir, tmp_path, mode):
    (tmp_path / "config.json").write_text('{"num_ways": 5,')
    (tmp_path / "ckpt").mkdir()  # a run: a checkpoint beside it (without one, a config.json is a failed start's)
    (tmp_path / "ckpt" / "checkpoint").write_text('model_checkpoint_path: "ckpt-1"\n')
    (tmp_path / "ckpt" / "ckpt-1.index").write_bytes(b"")
    proc = run(f"--data_dir={data_dir}", f"--logdir={tmp_path}", *TINY[:3], *mode, check=False)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert last_line(proc.stderr).startswith("error: ") and "config.json is not valid JSON" in proc.stderr


@pytest.mark.parametrize("args, message", [
    (["--num_shots=15", "--num_query=10"], "at most 20"),
    (["--num_ways=0"], "--num_ways must be at least 2"),
    (["--inner_lr=-1"], "--inner_lr must be a finite number > 0"),
    (["--compute_dtype=bfloat16", "--layout=loop"], "--compute_dtype=bfloat16 needs --layout=batched, not loop."),
])
def test_bad_flags_exit_with_one_sentence(args, message):
    proc = run(*args, "--iterations=1", check=False)
    assert proc.returncode != 0
    assert message in proc.stderr
    assert "Traceback" not in proc.stderr


def test_bad_data_exits_with_one_sentence(data_dir, tmp_path):
    missing = run(f"--data_dir={tmp_path / 'nothing'}", "--nodownload", f"--logdir={tmp_path / 'a'}", check=False)
    assert missing.returncode == 1
    assert last_line(missing.stderr).startswith("error: Omniglot not found")
    too_many = run(f"--data_dir={data_dir}", *TINY, "--num_ways=20", f"--logdir={tmp_path / 'b'}", check=False)
    assert too_many.returncode == 1
    assert last_line(too_many.stderr) == ("error: 20-way tasks need 20 character classes but Omniglot (train) "
                                          "has only 16.")
    corrupt = tmp_path / "corrupt"
    corrupt.mkdir()
    for name in ("images_background.zip", "images_evaluation.zip"):
        (corrupt / name).write_bytes(b"not a zip archive")
    bad = run(f"--data_dir={corrupt}", "--nodownload", f"--logdir={tmp_path / 'c'}", check=False)
    assert bad.returncode == 1
    assert "is not a readable zip archive" in last_line(bad.stderr)
    assert "Traceback" not in missing.stderr + too_many.stderr + bad.stderr


def _weights(checkpoint_dir):
    """The model weights (not the optimizer's slots) of the latest checkpoint in a directory."""
    import tensorflow as tf
    reader = tf.train.load_checkpoint(str(checkpoint_dir))
    return {name: reader.get_tensor(name) for name in reader.get_variable_to_shape_map()
            if "_trainable_variables/" in name or "moving_" in name}


def test_init_from_starts_a_new_run_from_another_runs_weights(data_dir, tmp_path):
    import numpy as np
    source, new, scratch = tmp_path / "source", tmp_path / "new", tmp_path / "scratch"
    data = [f"--data_dir={data_dir}", *TINY]
    run(*data, f"--logdir={source}", "--iterations=2")
    # A meta-learning rate far below float32's resolution leaves the weights where they start.
    still = ["--iterations=2", "--meta_lr=1e-30"]
    started = run(*data, f"--logdir={new}", f"--init_from={source}", *still)
    assert f"initialised from {source}/best/ckpt-2 (iteration 2 of that run)" in started.stdout
    run(*data, f"--logdir={scratch}", *still)
    loaded, own, fresh = _weights(source / "best"), _weights(new / "best"), _weights(scratch / "best")
    assert loaded.keys() == own.keys() == fresh.keys() and len(loaded) > 0
    assert all(np.array_equal(loaded[k], own[k]) for k in loaded)
    assert not all(np.array_equal(loaded[k], fresh[k]) for k in loaded)  # the check can tell them apart
    assert json.loads((new / "init_from.json").read_text())["iteration"] == 2
    assert json.loads((new / "config.json").read_text())["init_from"] == str(source)
    history = [json.loads(line) for line in (new / "history.jsonl").read_text().splitlines()]
    assert [h["iteration"] for h in history if "val_accuracy" in h] == [2]  # its own count, from 0
    # Resuming the new run keeps its setting; another architecture or a missing folder is one sentence.
    assert "resumed" in run(*data, f"--logdir={new}", "--iterations=4").stdout
    other = run(*data, f"--logdir={tmp_path / 'two_way'}", f"--init_from={source}", "--num_ways=2",
                "--iterations=1", check=False)
    assert other.returncode != 0 and "Traceback" not in other.stderr
    assert "does not fit this model" in last_line(other.stderr)
    missing = run(*data, f"--logdir={tmp_path / 'x'}", f"--init_from={tmp_path / 'nowhere'}", "--iterations=1",
                  check=False)
    assert missing.returncode != 0 and "Traceback" not in missing.stderr
    assert last_line(missing.stderr).endswith("it takes the log directory of an earlier run.")
