"""The sinusoid entry point end to end: results file, determinism, bad input, kill and resume."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "experiments" / "sinusoid.py"
SMALL = ["--iterations=40", "--eval_tasks=20", "--eval_steps=3", "--eval_shots=5,10", "--log_every=20",
         "--checkpoint_every=20"]
ENV = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "CUDA_VISIBLE_DEVICES": ""}


def run(*args, timeout=300):
    return subprocess.run([sys.executable, str(SCRIPT), *args], cwd=ROOT, env=ENV, capture_output=True,
                          text=True, timeout=timeout)


def test_small_run_writes_metrics_and_is_deterministic(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    ra = run(*SMALL, f"--logdir={a}")
    assert ra.returncode == 0, ra.stderr[-2000:]
    rb = run(*SMALL, f"--logdir={b}")
    assert rb.returncode == 0, rb.stderr[-2000:]
    ma = json.loads((a / "metrics.json").read_text())
    mb = json.loads((b / "metrics.json").read_text())
    assert {"config", "seed", "iterations", "wall_time_s", "results", "paper"} <= set(ma)
    assert ma["iterations"] == 40
    for method in ("maml", "pretrained", "oracle"):
        for k in ("K=5", "K=10"):
            r = ma["results"][method][k]
            assert len(r["mse"]) == 4 and len(r["ci95"]) == 4
            assert r["mse"] == mb["results"][method][k]["mse"]  # same seed, same numbers
    assert (a / "figure2_fits.png").stat().st_size > 0 and (a / "figure3_mse_vs_steps.png").stat().st_size > 0
    # Re-evaluating the checkpoints prints the same numbers.
    re = run(*SMALL, "--eval_only", f"--logdir={a}")
    assert re.returncode == 0, re.stderr[-2000:]
    assert f"matches {a / 'metrics.json'}" in re.stdout
    # a shorter --iterations does not skip into the run and rewrite its results
    short = run(*SMALL[1:], "--iterations=10", f"--logdir={a}")
    assert short.returncode == 1 and short.stderr.strip().splitlines()[-1].startswith(
        f"error: {a / 'maml'} holds a run at iteration 40, past --iterations=10;")


def test_eval_only_takes_the_runs_own_settings(tmp_path):
    """--eval_only re-evaluates with the inner learning rate (and test protocol) the run was made with."""
    a = tmp_path / "a"
    args = ["--iterations=20", "--eval_steps=1", "--eval_shots=5", "--log_every=20", "--checkpoint_every=20",
            "--methods=maml"]
    ra = run(*args, "--inner_lr=0.02", "--eval_tasks=20", f"--logdir={a}")
    assert ra.returncode == 0, ra.stderr[-2000:]
    re = run(*args, "--eval_only", f"--logdir={a}")
    assert re.returncode == 0, re.stderr[-2000:]
    assert "inner_lr=0.02" in re.stdout and "eval_tasks=20" in re.stdout
    assert f"matches {a / 'metrics.json'}" in re.stdout


@pytest.mark.parametrize("flag,message", [
    ("--inner_lr=-0.1", "--inner_lr must be a finite number > 0."), ("--num_shots=0", "--num_shots must be positive."),
    ("--meta_batch_size=0", "--meta_batch_size must be positive."),
    ("--methods=maml,foo", "--methods takes a comma-separated subset of maml,pretrained,oracle."),
    ("--eval_shots=5,x", "--eval_shots takes positive integers, e.g. 5,10,20.")])
def test_bad_flags_end_with_one_sentence(tmp_path, flag, message):
    r = run(flag, f"--logdir={tmp_path}", timeout=120)
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert message in r.stderr, r.stderr[-1000:]


def test_incompatible_checkpoint_directory_is_refused(tmp_path):
    r = run("--iterations=2", "--methods=oracle", "--eval_tasks=10", "--eval_shots=5", f"--logdir={tmp_path}")
    assert r.returncode == 0, r.stderr[-2000:]
    # Put the oracle's checkpoint (3 inputs) where the MAML network (1 input) would resume from.
    os.rename(tmp_path / "oracle", tmp_path / "maml")
    (tmp_path / "maml" / "config.json").unlink()
    r = run("--iterations=4", "--methods=maml", "--eval_tasks=10", "--eval_shots=5", f"--logdir={tmp_path}")
    assert r.returncode == 1
    assert "Traceback" not in r.stderr
    errors = [line for line in r.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "does not fit this model" in errors[0]
    # Changed settings in a directory of another run: refused too.
    r = run("--iterations=4", "--methods=oracle", "--num_shots=5", "--eval_tasks=10", "--eval_shots=5",
            f"--logdir={tmp_path}/x")
    assert r.returncode == 0, r.stderr[-2000:]
    r = run("--iterations=4", "--methods=oracle", "--num_shots=7", f"--logdir={tmp_path}/x")
    assert r.returncode == 1 and "num_shots=5 but this run asks for num_shots=7" in r.stderr


def test_a_run_resumes_with_its_own_settings(tmp_path):
    common = ["--methods=maml", "--eval_tasks=10", "--eval_shots=5", "--eval_steps=1", f"--logdir={tmp_path}"]
    made = run(*common, "--iterations=2", "--inner_lr=0.02", "--num_shots=5", "--seed=3")
    assert made.returncode == 0, made.stderr[-2000:]
    refused = run(*common, "--iterations=4", "--inner_lr=0.05")
    assert refused.returncode == 1 and "inner_lr=0.02 but this run asks for inner_lr=0.05" in refused.stderr
    resumed = run(*common, "--iterations=4")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "resuming" in resumed.stdout and "inner_lr=0.02" in resumed.stdout
    config = json.loads((tmp_path / "metrics.json").read_text())["config"]
    assert (config["inner_lr"], config["num_shots"], config["seed"], config["iterations"]) == (0.02, 5, 3, 4)


def test_killed_run_resumes_from_last_checkpoint(tmp_path):
    args = ["--iterations=100000", "--methods=maml", "--checkpoint_every=100", "--log_every=100",
            f"--logdir={tmp_path}"]
    p = subprocess.Popen([sys.executable, str(SCRIPT), *args], cwd=ROOT, env=ENV, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)
    index = tmp_path / "maml" / "ckpt" / "checkpoint"
    deadline = time.time() + 240
    while not index.exists() and time.time() < deadline:
        time.sleep(0.5)
    time.sleep(1.0)
    p.send_signal(signal.SIGKILL)
    p.wait()
    assert index.exists(), "no checkpoint was written"
    saved = int(index.read_text().split('"')[1].split("-")[-1])
    assert saved >= 100
    r = run("--iterations=%d" % (saved + 50), "--methods=maml", "--checkpoint_every=100", "--log_every=50",
            "--eval_tasks=10", "--eval_shots=5", "--eval_steps=1", f"--logdir={tmp_path}")
    assert r.returncode == 0, r.stderr[-2000:]
    assert "resumed from" in r.stdout and f"at iteration {saved}" in r.stdout
    assert json.loads((tmp_path / "metrics.json").read_text())["iterations"] == saved + 50
