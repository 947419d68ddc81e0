"""The RL entry points end to end on 2D navigation (tiny settings): train, resume, evaluate, bad input."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "CUDA_VISIBLE_DEVICES": ""}
TINY = ["--meta_batch_size=2", "--rollouts_per_task=2", "--num_workers=0"]


def run(script, *args, timeout=300):
    return subprocess.run([sys.executable, str(ROOT / script), *args], cwd=ROOT, env=ENV, capture_output=True,
                          text=True, timeout=timeout)


def last_line(text):
    return text.strip().splitlines()[-1]


def test_train_resume_and_evaluate_navigation(tmp_path):
    first = run("rl/train_navigation.py", *TINY, "--iterations=2", f"--logdir={tmp_path / 'maml'}")
    assert first.returncode == 0, first.stderr[-2000:]
    resumed = run("rl/train_navigation.py", *TINY, "--iterations=3", f"--logdir={tmp_path / 'maml'}")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "at iteration 2" in resumed.stdout and "3/3" in resumed.stdout
    assert json.loads((tmp_path / "maml" / "training.json").read_text())["iterations"] == 3
    config = json.loads((tmp_path / "maml" / "config.json").read_text())
    assert config["batch_by"] == "steps" and config["env_id"] == "maml_tf/Navigation2D-v1"

    ev = run("rl/evaluate.py", "--task=navigation", f"--logdir={tmp_path}", "--methods=maml,random",
             "--num_tasks=3", "--rollouts_per_task=2", "--num_workers=0")
    assert ev.returncode == 0, ev.stderr[-2000:]
    m = json.loads((tmp_path / "metrics.json").read_text())
    assert {"config", "seed", "iterations", "wall_time_s", "results", "paper"} <= set(m)
    assert m["iterations"] == 3
    # wall_time_s as for the supervised experiments: the MAML run's training (to its latest checkpoint,
    # as training.json records it) plus this evaluation
    trained_s = json.loads((tmp_path / "maml" / "training.json").read_text())["wall_time_s"]
    assert m["train_wall_time_s"] == pytest.approx(trained_s, abs=0.11)
    assert 0 < m["eval_wall_time_s"] and m["wall_time_s"] == pytest.approx(trained_s + m["eval_wall_time_s"], abs=0.11)
    assert m["training"]["maml"]["trained_wall_time_s"] == pytest.approx(trained_s, abs=0.11)
    for method in ("maml", "random"):
        r = m["results"][method]
        assert r["num_tasks"] == 3 and len(r["returns"]) == 4 and len(r["stderr"]) == 4
        assert all(-1500.0 < x < 0 for x in r["returns"])  # 100 rewards of minus a distance below 0.71 + 14.2
        assert np.allclose(np.mean(r["per_task"], axis=0), r["returns"], atol=1e-3)  # per task, rounded
    assert np.array(m["tasks"]).shape == (3, 2)  # the 2D goals the per-task returns belong to
    # the authors' test protocol: MAML steps with its training inner lr (0.5), then half of it
    assert m["config"]["test_lrs"] == {"maml": [0.5, 0.25, 0.25], "random": [0.5, 0.25, 0.25]}
    assert m["config"]["batch_by"] == "steps"  # the MAML run's setting
    # the random initialisation as the authors' navigation test script builds it: their policy class's default tanh
    assert m["config"]["random_activation"] == "tanh"
    assert (tmp_path / "figure_returns.png").stat().st_size > 0

    # the same evaluation from Python (rl.evaluation, the library behind rl/evaluate.py)
    from rl import evaluation
    again = evaluation.evaluate("navigation", str(tmp_path), ["maml", "random"], num_tasks=3, rollouts_per_task=2,
                                num_workers=0, verbose=False)
    assert again["config"]["test_lrs"] == m["config"]["test_lrs"] and again["tasks"] == m["tasks"]
    for method in ("maml", "random"):
        assert np.allclose(again["results"][method]["returns"], m["results"][method]["returns"], rtol=1e-4, atol=1e-3)
    # by default the authors' test goals (the first 3 of their script's 40); seeded ones on request
    assert np.array_equal(m["tasks"], evaluation.authors_test_tasks("navigation", 40)[:3])
    assert m["config"]["test_tasks"] == "authors" and "the authors' 3 test tasks" in m["protocol"]
    seeded = evaluation.evaluate("navigation", str(tmp_path), ["maml"], num_tasks=3, rollouts_per_task=2,
                                 num_workers=0, verbose=False, test_tasks="seeded")
    assert np.array_equal(seeded["tasks"], np.random.default_rng(1).uniform(-0.5, 0.5, size=(3, 2)))
    assert seeded["config"]["test_tasks"] == "seeded" and "test tasks (seed 1)" in seeded["protocol"]
    with pytest.raises(ValueError, match="test_tasks"):
        evaluation.evaluate("navigation", str(tmp_path), ["maml"], test_tasks="paper")
    # the figure's title says whose test tasks; --figure_only (evaluation.redraw) redraws it from metrics.json alone
    assert evaluation.tasks_label(m) == "the authors' 3 test tasks"
    assert evaluation.tasks_label(seeded) == "3 seeded test tasks (seed 1)"
    assert evaluation.tasks_label({"seed": 1, "config": {}, "results": m["results"]}) == "3 seeded test tasks (seed 1)"
    before = (tmp_path / "metrics.json").read_bytes()
    (tmp_path / "figure_returns.png").unlink()
    assert evaluation.redraw(str(tmp_path)) == str(tmp_path / "figure_returns.png")
    assert (tmp_path / "figure_returns.png").stat().st_size > 0 and (tmp_path / "metrics.json").read_bytes() == before
    with pytest.raises(FileNotFoundError, match="No metrics.json"):
        evaluation.redraw(str(tmp_path / "maml"))
    with pytest.raises(ValueError, match="subset"):
        evaluation.evaluate("navigation", str(tmp_path), ["maml", "walker"])
    with pytest.raises(ValueError, match="Unknown task"):
        evaluation.evaluate("walker", str(tmp_path))

    # one method evaluated again with the same protocol: metrics.json keeps the other's result of the first
    # evaluation and names the command that measured it
    ev = run("rl/evaluate.py", "--task=navigation", f"--logdir={tmp_path}", "--methods=random", "--num_tasks=3",
             "--rollouts_per_task=2", "--num_workers=0")
    assert ev.returncode == 0, ev.stderr[-2000:]
    assert f"kept maml from the previous {tmp_path / 'metrics.json'}" in ev.stdout
    kept = json.loads((tmp_path / "metrics.json").read_text())
    assert list(kept["results"]) == ["maml", "random"] and kept["carried_over"] == {"maml": m["command"]}
    assert kept["results"]["maml"] == m["results"]["maml"]
    assert np.allclose(kept["results"]["random"]["returns"], m["results"]["random"]["returns"], rtol=1e-4, atol=1e-3)
    # another protocol (no steps): the file is replaced, and the output says so
    ev = run("rl/evaluate.py", "--task=navigation", f"--logdir={tmp_path}", "--methods=random", "--num_tasks=3",
             "--rollouts_per_task=2", "--steps=0", "--num_workers=0")
    assert ev.returncode == 0, ev.stderr[-2000:]
    assert "whose maml were measured with another protocol (steps 3 against 0): they are not kept" in ev.stdout
    assert list(json.loads((tmp_path / "metrics.json").read_text())["results"]) == ["random"]
    # --nokeep_previous: this evaluation's methods alone, though the protocol is the same
    ev = run("rl/evaluate.py", "--task=navigation", f"--logdir={tmp_path}", "--methods=maml", "--num_tasks=3",
             "--rollouts_per_task=2", "--steps=0", "--nokeep_previous", "--num_workers=0")
    assert ev.returncode == 0, ev.stderr[-2000:]
    assert list(json.loads((tmp_path / "metrics.json").read_text())["results"]) == ["maml"]


@pytest.mark.parametrize("script", ["rl/evaluate.py", "rl/train_navigation.py", "rl/train_halfcheetah_vel.py",
                                    "rl/train_halfcheetah_dir.py", "rl/train_ant_vel.py", "rl/train_ant_dir.py"])
def test_sampler_workers_reimport_the_entry_point_without_tensorflow(script):
    # a "spawn" worker runs its parent's __main__ file as __mp_main__ before it unpickles its target; the
    # entry points import TensorFlow only in main, so the workers (one per core) do not load it
    probe = ("import runpy, sys; runpy.run_path(sys.argv[1], run_name='__mp_main__'); "
             "print(sorted(m for m in ('tensorflow', 'keras') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", probe, str(ROOT / script)], cwd=ROOT, env=ENV, capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert last_line(out.stdout) == "[]", out.stdout


def test_running_a_finished_run_again_changes_none_of_its_files(tmp_path):
    """The training command of a run that has reached its iterations (e.g. a committed result) trains
    nothing and writes nothing: no training.json, config.json "changes" or TensorBoard file of its own."""
    logdir = tmp_path / "maml"
    assert run("rl/train_navigation.py", *TINY, "--horizon=10", "--iterations=2", f"--logdir={logdir}").returncode == 0
    before = {p: p.read_bytes() for p in logdir.rglob("*") if p.is_file()}
    for extra in ([], ["--iterations=2", "--nodeterministic", "--max_kl=0.02"]):
        again = run("rl/train_navigation.py", *TINY, *extra, f"--logdir={logdir}")
        assert again.returncode == 0, again.stderr[-2000:]
        assert f"{logdir} is at iteration 2 already: nothing to train" in again.stdout
        assert {p: p.read_bytes() for p in logdir.rglob("*") if p.is_file()} == before


@pytest.mark.parametrize("key,flag,refusal,then", [
    ("batch_by", "--batch_by=steps", "sampled by episodes", "episodes"),
    ("stratified_tasks", "--stratified_tasks", "drew each batch's tasks independently", False),
    ("inner_surrogate", "--inner_surrogate=lvc", "adapted with the REINFORCE surrogate", "reinforce"),
])
def test_a_run_from_before_an_option_resumes_as_it_ran(tmp_path, key, flag, refusal, then):
    logdir = tmp_path / "maml"
    assert run("rl/train_navigation.py", *TINY, "--iterations=1", f"--logdir={logdir}").returncode == 0
    config = json.loads((logdir / "config.json").read_text())
    del config[key]  # as written before the option existed
    (logdir / "config.json").write_text(json.dumps(config))
    refused = run("rl/train_navigation.py", *TINY, "--iterations=2", flag, f"--logdir={logdir}")
    assert refused.returncode != 0 and refusal in refused.stderr
    resumed = run("rl/train_navigation.py", *TINY, "--iterations=2", f"--logdir={logdir}")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert json.loads((logdir / "training.json").read_text())["settings"][key] == then


@pytest.mark.parametrize("key,value,then", [("kl_constraint", "both", "post"), ("inner_surrogate", "lvc", "reinforce")])
def test_an_option_is_kept_on_resume_and_runs_from_before_it_resume_as_they_ran(tmp_path, key, value, then):
    logdir = tmp_path / "maml"
    made = run("rl/train_navigation.py", *TINY, "--iterations=1", f"--{key}={value}", f"--logdir={logdir}")
    assert made.returncode == 0, made.stderr[-2000:]
    resumed = run("rl/train_navigation.py", *TINY, "--iterations=2", f"--logdir={logdir}")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert json.loads((logdir / "training.json").read_text())["settings"][key] == value
    config = json.loads((logdir / "config.json").read_text())
    del config[key]  # as written before the option existed
    (logdir / "config.json").write_text(json.dumps(config))
    old = run("rl/train_navigation.py", *TINY, "--iterations=3", f"--logdir={logdir}")
    assert old.returncode == 0, old.stderr[-2000:]
    assert json.loads((logdir / "training.json").read_text())["settings"][key] == then


def test_stratified_tasks_is_part_of_a_run(tmp_path):
    logdir = tmp_path / "maml"
    made = run("rl/train_navigation.py", *TINY, "--iterations=1", "--stratified_tasks", f"--logdir={logdir}")
    assert made.returncode == 0, made.stderr[-2000:]
    assert json.loads((logdir / "config.json").read_text())["stratified_tasks"] is True
    refused = run("rl/train_navigation.py", *TINY, "--iterations=2", "--nostratified_tasks", f"--logdir={logdir}")
    assert refused.returncode != 0 and "stratified_tasks=True" in refused.stderr
    resumed = run("rl/train_navigation.py", *TINY, "--iterations=2", "--stratified_tasks", f"--logdir={logdir}")
    assert resumed.returncode == 0, resumed.stderr[-2000:]  # the same command resumes
    assert json.loads((logdir / "training.json").read_text())["iterations"] == 2


def test_a_run_resumes_with_its_own_settings_from_logdir_alone(tmp_path):
    logdir = tmp_path / "maml"
    own = ["--inner_lr=0.3", "--seed=2", "--horizon=20", "--stratified_tasks"]
    made = run("rl/train_navigation.py", *TINY, *own, "--iterations=1", f"--logdir={logdir}")
    assert made.returncode == 0, made.stderr[-2000:]
    refused = run("rl/train_navigation.py", "--num_workers=0", "--inner_lr=0.5", "--iterations=2", f"--logdir={logdir}")
    assert refused.returncode != 0 and "inner_lr=0.3 but this run asks for inner_lr=0.5" in refused.stderr
    resumed = run("rl/train_navigation.py", "--num_workers=0", "--iterations=2", f"--logdir={logdir}")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "at iteration 1" in resumed.stdout and "2/2" in resumed.stdout
    assert "resuming with the run's own" in resumed.stdout and "inner_lr=0.3" in resumed.stdout
    settings = json.loads((logdir / "training.json").read_text())["settings"]
    expected = {"inner_lr": 0.3, "seed": 2, "horizon": 20, "stratified_tasks": True, "meta_batch_size": 2,
                "rollouts_per_task": 2, "iterations": 2}
    assert {k: settings[k] for k in expected} == expected
    rows = (logdir / "progress.csv").read_text().strip().splitlines()
    header = rows[0].split(",")
    steps = [float(r.split(",")[header.index("env_steps")]) for r in rows[1:]]
    # pre + post batches of 2 tasks, each under (2 + 1) episodes of the run's horizon 20 (at least 800 with 100)
    assert len(steps) == 2 and steps[1] < 2 * 2 * 3 * 20


def test_a_resumed_run_keeps_its_own_trust_region_unless_told(tmp_path):
    logdir = tmp_path / "maml"
    first = run("rl/train_navigation.py", *TINY, "--iterations=1", "--max_kl=0.001", f"--logdir={logdir}")
    assert first.returncode == 0, first.stderr[-2000:]
    kept = run("rl/train_navigation.py", *TINY, "--iterations=2", f"--logdir={logdir}")
    assert kept.returncode == 0, kept.stderr[-2000:]
    settings = json.loads((logdir / "training.json").read_text())["settings"]
    assert settings["max_kl"] == 0.001 and settings["iterations"] == 2
    rows = (logdir / "progress.csv").read_text().strip().splitlines()
    header = rows[0].split(",")
    kls = [float(r.split(",")[header.index("kl")]) for r in rows[1:]]
    assert len(kls) == 2 and all(kl <= 0.001 * 1.0001 for kl in kls)  # the line search holds the run's limit
    config = json.loads((logdir / "config.json").read_text())
    assert "changes" not in config and config["iterations"] == 2

    changed = run("rl/train_navigation.py", *TINY, "--iterations=3", "--max_kl=0.002", f"--logdir={logdir}")
    assert changed.returncode == 0, changed.stderr[-2000:]
    assert "resuming at iteration 2 with max_kl=0.002 (the run so far: 0.001)" in changed.stdout
    config = json.loads((logdir / "config.json").read_text())
    assert config["max_kl"] == 0.001
    assert config["changes"] == [{"from_iteration": 2, "max_kl": 0.002}]
    assert config["iterations"] == 3
    (logdir / "ckpt" / "checkpoint").write_text('model_checkpoint_path: "ckpt-2"\n')  # as if it crashed at 2
    again = run("rl/train_navigation.py", *TINY, f"--logdir={logdir}")  # no flags: the run's own settings
    assert again.returncode == 0, again.stderr[-2000:]
    assert "3/3" in again.stdout
    assert json.loads((logdir / "training.json").read_text())["settings"]["max_kl"] == 0.002
    from rl.train import current_settings
    assert current_settings(json.loads((logdir / "config.json").read_text()))["max_kl"] == 0.002

    copy = tmp_path / "copy" / "maml"  # a copy resumed in another folder records where it went on
    shutil.copytree(logdir, copy)
    moved = run("rl/train_navigation.py", *TINY, "--iterations=4", f"--logdir={copy}")
    assert moved.returncode == 0, moved.stderr[-2000:]
    assert f"resuming at iteration 3 in {copy} (the run so far: {logdir})" in moved.stdout
    config = json.loads((copy / "config.json").read_text())
    assert config["logdir"] == str(logdir) and config["changes"][-1] == {"from_iteration": 3, "logdir": str(copy)}
    assert current_settings(config)["logdir"] == str(copy)


@pytest.mark.parametrize("script,args,message", [
    ("rl/train_navigation.py", ["--meta_batch_size=0"], "--meta_batch_size must be positive"),
    ("rl/train_navigation.py", ["--inner_lr=-1"], "--inner_lr must be a finite number > 0"),
    ("rl/evaluate.py", ["--task=walker"], "flag --task=walker: value should be one of"),
    ("rl/evaluate.py", ["--task=navigation", "--methods=maml,foo"], "--methods takes"),
])
def test_bad_flags_exit_with_one_sentence(script, args, message):
    r = run(script, *args)
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert message in r.stderr, r.stderr[-1000:]


def test_resume_is_exact_with_the_previous_task_baseline(tmp_path):
    """The baseline that rllab's order carries from one batch to the next is checkpointed: a run
    stopped at 2 and resumed to 3 gives the uninterrupted run's third iteration."""
    args = [*TINY, "--baseline=previous_task", "--horizon=30"]
    straight = run("rl/train_navigation.py", *args, "--iterations=3", f"--logdir={tmp_path / 'a'}")
    assert straight.returncode == 0, straight.stderr[-2000:]
    for iterations in (2, 3):
        part = run("rl/train_navigation.py", *args, f"--iterations={iterations}", f"--logdir={tmp_path / 'b'}")
        assert part.returncode == 0, part.stderr[-2000:]

    def rows(name):
        lines = (tmp_path / name / "progress.csv").read_text().strip().splitlines()
        header = lines[0].split(",")
        keys = ["pre_return", "post_return", "surrogate_before", "surrogate_after", "kl"]
        return [[float(line.split(",")[header.index(k)]) for k in keys] for line in lines[1:]]
    a, b = rows("a"), rows("b")
    assert len(a) == len(b) == 3
    assert a == b


def test_a_resumed_run_ends_with_the_uninterrupted_runs_weights_bit_for_bit(tmp_path):
    """The learner traces its functions with the rollouts' step axis unknown from the first call
    (``rl.maml_trpo.StepsRelaxed``) and rl/train.py runs TensorFlow's ops one at a time (``--deterministic``),
    so a run stopped at 2 and resumed to 3 computes what the uninterrupted one did. At these sizes the code
    before either change ended 1.2e-3 apart (largest weight difference)."""
    import tensorflow as tf

    args = ["--meta_batch_size=4", "--rollouts_per_task=5", "--num_workers=0"]
    straight = run("rl/train_navigation.py", *args, "--iterations=3", f"--logdir={tmp_path / 'a'}")
    assert straight.returncode == 0, straight.stderr[-2000:]
    for iterations in (2, 3):
        part = run("rl/train_navigation.py", *args, f"--iterations={iterations}", f"--logdir={tmp_path / 'b'}")
        assert part.returncode == 0, part.stderr[-2000:]
    assert json.loads((tmp_path / "b" / "config.json").read_text())["deterministic"] is True
    a, b = (tf.train.load_checkpoint(tf.train.latest_checkpoint(str(tmp_path / name / "ckpt"))) for name in "ab")
    compared = 0
    for name in a.get_variable_to_shape_map():
        x = a.get_tensor(name)
        if isinstance(x, np.ndarray) and x.dtype.kind == "f" and "wall_time" not in name:
            np.testing.assert_array_equal(x, b.get_tensor(name), err_msg=name)
            compared += x.size
    assert compared > 10_000  # the policy's weights (2 x 100 hidden units)


def test_a_corrupt_config_of_a_run_is_one_sentence(tmp_path):
    (tmp_path / "maml" / "ckpt").mkdir(parents=True)  # a run (without a checkpoint it is a failed start's)
    (tmp_path / "maml" / "ckpt" / "checkpoint").write_text('model_checkpoint_path: "ckpt-1"\n')
    (tmp_path / "maml" / "ckpt" / "ckpt-1.index").write_bytes(b"")
    (tmp_path / "maml" / "config.json").write_text("{oops")
    r = run("rl/train_navigation.py", *TINY, "--iterations=1", f"--logdir={tmp_path / 'maml'}")
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert last_line(r.stderr).startswith("error: ") and "config.json is not valid JSON" in r.stderr


def test_evaluating_a_missing_run_is_one_sentence(tmp_path):
    r = run("rl/evaluate.py", "--task=navigation", f"--logdir={tmp_path}", "--methods=maml", "--num_workers=0")
    assert r.returncode == 1
    assert last_line(r.stderr).startswith("error: No maml checkpoint in")
    # a missing method asked for is found before any other is evaluated, and the message names the real script
    r = run("rl/evaluate.py", "--task=navigation", f"--logdir={tmp_path}", "--methods=random,oracle",
            "--num_workers=0")
    assert r.returncode == 1 and last_line(r.stderr).startswith("error: No oracle checkpoint in")
    assert "rl/train_navigation.py --method=oracle" in r.stderr and "random" not in r.stdout
    # without --methods: no silent random-only evaluation of a folder with no runs
    r = run("rl/evaluate.py", "--task=navigation", f"--logdir={tmp_path / 'typo'}", "--num_workers=0")
    assert r.returncode == 1 and last_line(r.stderr).startswith(f"error: No trained run in {tmp_path / 'typo'}")
    assert not (tmp_path / "typo").exists()


def test_a_corrupt_metrics_json_to_keep_from_is_one_sentence_before_any_evaluation(tmp_path):
    (tmp_path / "metrics.json").write_text("{oops")
    r = run("rl/evaluate.py", "--task=navigation", f"--logdir={tmp_path}", "--methods=random", "--num_tasks=2",
            "--rollouts_per_task=1", "--steps=0", "--num_workers=0")
    assert r.returncode == 1 and "Traceback" not in r.stderr and "random " not in r.stdout
    assert last_line(r.stderr) == (f"error: {tmp_path / 'metrics.json'} is not valid JSON; move it away, or pass "
                                   f"--nokeep_previous to replace it.")
    assert (tmp_path / "metrics.json").read_text() == "{oops"


def test_bad_run_folders_and_flags_are_one_sentence(tmp_path):
    trained = run("rl/train_navigation.py", *TINY, "--iterations=2", "--horizon=10", f"--logdir={tmp_path / 'maml'}")
    assert trained.returncode == 0, trained.stderr[-2000:]
    config = (tmp_path / "maml" / "config.json").read_text()
    cases = [  # (script, args, the error's start)
        ("rl/train_navigation.py", [*TINY, "--iterations=1", f"--logdir={tmp_path / 'maml'}"],
         f"error: {tmp_path / 'maml'} holds a run at iteration 2, past --iterations=1; pass a larger --iterations to "
         f"extend it, another --logdir for a new run, or rl/evaluate.py to evaluate it."),
        ("rl/evaluate.py", ["--task=navigation", f"--logdir={tmp_path / 'maml'}", "--num_workers=0"],
         f"error: {tmp_path / 'maml'} is one maml run; pass its parent folder"),
        ("rl/evaluate.py", ["--task=halfcheetah_vel", f"--logdir={tmp_path}", "--num_workers=0"],
         f"error: {tmp_path / 'maml'} is a 'navigation' run, not 'halfcheetah_vel';"),
        ("rl/train_navigation.py", [*TINY, "--method=pretrained", "--first_order", f"--logdir={tmp_path / 'p'}"],
         "error: --first_order applies to --method=maml only"),
        ("rl/train_navigation.py", [*TINY, "--method=oracle", "--kl_constraint=both", f"--logdir={tmp_path / 'o'}"],
         "error: --kl_constraint applies to --method=maml only"),
        ("rl/train_navigation.py", [*TINY, "--method=pretrained", "--inner_surrogate=lvc", f"--logdir={tmp_path / 'l'}"],
         "error: --inner_surrogate applies to --method=maml only"),
        ("rl/train_navigation.py", [*TINY, "--iterations=3", "--inner_surrogate=lvc", f"--logdir={tmp_path / 'maml'}"],
         f"error: {tmp_path / 'maml'} holds a run with inner_surrogate='reinforce' but this run asks for "
         f"inner_surrogate='lvc';"),
        ("rl/train_navigation.py", [*TINY, "--curvature=exact", "--hvp_subsample=0.5", f"--logdir={tmp_path / 'e'}"],
         "error: --hvp_subsample applies to --curvature=gauss_newton only"),
    ]
    (tmp_path / "afile").write_text("")
    cases.append(("rl/train_navigation.py", [*TINY, f"--logdir={tmp_path / 'afile'}"],
                  f"error: --logdir={tmp_path / 'afile'} is a file"))
    for script, args, message in cases:
        r = run(script, *args)
        assert r.returncode == 1 and last_line(r.stderr).startswith(message), (args, r.stderr[-1500:])
        assert "Traceback" not in r.stderr
    assert (tmp_path / "maml" / "config.json").read_text() == config  # the refused resume changed nothing


def test_half_cheetah_trains_on_the_authors_env_and_evaluate_follows_the_runs_env(tmp_path):
    train = run("rl/train_halfcheetah_vel.py", *TINY, "--iterations=1", "--horizon=20", f"--logdir={tmp_path / 'maml'}")
    assert train.returncode == 0, train.stderr[-2000:]
    config = json.loads((tmp_path / "maml" / "config.json").read_text())
    assert config["env_id"] == "maml_tf/HalfCheetahVel-v1"
    ev = run("rl/evaluate.py", "--task=halfcheetah_vel", f"--logdir={tmp_path}", "--methods=maml,random",
             "--num_tasks=2", "--rollouts_per_task=2", "--steps=1", "--num_workers=0")
    assert ev.returncode == 0, ev.stderr[-2000:]
    m = json.loads((tmp_path / "metrics.json").read_text())
    assert m["config"]["env_ids"] == {"maml": "maml_tf/HalfCheetahVel-v1", "random": "maml_tf/HalfCheetahVel-v1"}

    # a run recorded on gymnasium's conventions (-v0) cannot be evaluated together with a -v1 run
    other = tmp_path / "pretrained"
    other.mkdir()
    (other / "config.json").write_text(json.dumps({**config, "method": "pretrained",
                                                   "env_id": "maml_tf/HalfCheetahVel-v0"}))
    mixed = run("rl/evaluate.py", "--task=halfcheetah_vel", f"--logdir={tmp_path}", "--methods=maml,pretrained",
                "--num_tasks=2", "--rollouts_per_task=2", "--steps=1", "--num_workers=0")
    assert mixed.returncode != 0
    assert "trained on different environments" in mixed.stderr


@pytest.mark.parametrize("key", ["jit_compile", "deterministic"])
def test_a_run_recorded_before_a_setting_resumes_as_it_ran_unless_told(tmp_path, key):
    """Runs recorded before --jit_compile existed had no XLA, and before --deterministic ran TensorFlow's ops
    concurrently: resumed, they keep that, and a flag asking otherwise is recorded as a change (XLA was once
    applied from the preset without a trace)."""
    logdir = tmp_path / "maml"
    assert run("rl/train_navigation.py", *TINY, "--horizon=20", "--iterations=1", f"--logdir={logdir}").returncode == 0
    config = json.loads((logdir / "config.json").read_text())
    del config[key]  # as the config.json of a run from before the flag
    (logdir / "config.json").write_text(json.dumps(config))
    kept = run("rl/train_navigation.py", *TINY, "--iterations=2", f"--logdir={logdir}")
    assert kept.returncode == 0, kept.stderr[-2000:]
    assert json.loads((logdir / "training.json").read_text())["settings"][key] is False
    assert "changes" not in json.loads((logdir / "config.json").read_text())
    told = run("rl/train_navigation.py", *TINY, "--iterations=3", f"--{key}", f"--logdir={logdir}")
    assert told.returncode == 0, told.stderr[-2000:]
    assert f"resuming at iteration 2 with {key}=True (the run so far: False)" in told.stdout
    assert json.loads((logdir / "config.json").read_text())["changes"] == [{"from_iteration": 2, key: True}]
    assert json.loads((logdir / "training.json").read_text())["settings"][key] is True


def test_sigterm_to_the_process_group_saves_like_ctrl_c(tmp_path):
    """Slurm, systemd and ``kill -- -pgid`` signal the whole group, sampler workers included: the run
    finishes its iteration, saves it and exits 128 + 15 (tests/test_sampler.py: the workers outlive it)."""
    import signal
    logdir = tmp_path / "maml"
    proc = subprocess.Popen([sys.executable, str(ROOT / "rl/train_navigation.py"), "--meta_batch_size=2",
                             "--rollouts_per_task=2", "--num_workers=2", "--iterations=1000", "--checkpoint_every=1000",
                             "--log_every=1", f"--logdir={logdir}"], cwd=ROOT, env=ENV, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        for line in proc.stdout:  # until the first iteration is done
            if "1/1000" in line:
                break
        os.killpg(proc.pid, signal.SIGTERM)
        out, err = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 143, err[-2000:]
    assert "interrupted at iteration" in err and "Traceback" not in err
    assert any(p.name.endswith(".index") for p in (logdir / "ckpt").iterdir())
    # training.json says where the run got to, not where an earlier session ended (here: no earlier one)
    reached = int(err.split("interrupted at iteration ")[1].split(";")[0])
    training = json.loads((logdir / "training.json").read_text())
    assert reached >= 1 and training["iterations"] == reached and training["interrupted"] is True
    assert training["settings"]["iterations"] == 1000 and training["best_iteration"] is not None


def test_load_policy_without_a_checkpoint_names_the_tasks_training_script(tmp_path):
    from types import SimpleNamespace
    from rl import evaluation
    sampler = SimpleNamespace(obs_dim=2, act_dim=2)
    with pytest.raises(FileNotFoundError, match=r"rl/train_navigation\.py --method=maml --logdir="):
        evaluation.load_policy(str(tmp_path), "maml", sampler, task="navigation")
    with pytest.raises(FileNotFoundError, match=r"the task's rl/train_<task>\.py --method=oracle"):
        evaluation.load_policy(str(tmp_path), "oracle", sampler)
