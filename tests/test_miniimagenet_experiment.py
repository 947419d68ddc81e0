"""experiments/miniimagenet.py end to end on the synthetic mini-ImageNet of data/fixtures.py (--fixture),
and a missing data set ends with one sentence."""

import json
import os
import subprocess
import sys
from pathlib import Path

from data.fixtures import make_miniimagenet_fixture

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "experiments" / "miniimagenet.py"


def run(*args):
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    return subprocess.run([sys.executable, str(SCRIPT), *args], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=600)


def test_end_to_end_on_the_fixture(tmp_path):
    logdir = tmp_path / "run"
    proc = run("--fixture", f"--logdir={logdir}", "--iterations=2", "--num_inner_steps=1", "--num_eval_steps=2",
               "--num_query=2", "--val_tasks=2", "--eval_tasks=4", "--eval_batch_size=2", "--validate_every=2",
               "--log_every=1")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    metrics = json.loads((logdir / "metrics.json").read_text())
    assert {"config", "seed", "iterations", "wall_time_s", "transductive_bn", "test", "validation", "paper",
            "split", "command"} <= set(metrics)
    assert metrics["iterations"] == 2
    assert metrics["test"]["num_tasks"] == 4 and len(metrics["test"]["accuracy"]) == 3
    assert {k: metrics["paper"][k] for k in ("accuracy", "ci95")} == {"accuracy": 48.70, "ci95": 1.84}
    assert "synthetic fixture" in metrics["paper"]["note"] and metrics["split"]["fixture"] is True
    config = metrics["config"]
    assert (config["meta_batch_size"], config["inner_lr"], config["eval_num_query"]) == (4, 0.01, 1)  # paper, 1-shot
    assert len(metrics["split"]["classes"]["test"]) == 5
    # the hash of each split's CSV, found where the loader found it
    assert set(metrics["split"]["csv_sha256_16"]) == {"train", "val", "test"}
    assert all(isinstance(n, int) and n >= 2 for n in metrics["split"]["images_per_class"].values())
    assert (logdir / "learning_curve.png").exists()
    # the run does not resume (or evaluate) on other data: here a fixture passed as if it were real data
    other = make_miniimagenet_fixture(tmp_path / "other", classes_per_split={"train": 8, "val": 5, "test": 5},
                                      images_per_class=12, seed=7)
    proc = run(f"--data_dir={other}", f"--logdir={logdir}", "--iterations=3")
    assert proc.returncode == 1 and "holds a run made on other mini-ImageNet classes" in proc.stderr, proc.stderr


def test_missing_data_is_one_sentence(tmp_path):
    proc = run(f"--data_dir={tmp_path}", f"--logdir={tmp_path / 'run'}", "--iterations=1")
    assert proc.returncode == 1
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("error: mini-ImageNet split file not found")
    assert "Traceback" not in proc.stderr
