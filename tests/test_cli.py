"""maml_tf/cli.py: every entry point refuses a stray positional argument in one sentence (exit 1)."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

from maml_tf.cli import one_sentence_errors

ROOT = Path(__file__).resolve().parents[1]


def test_the_wrapper_refuses_positional_arguments_before_main_runs(capsys):
    calls = []
    wrapped = one_sentence_errors(lambda argv: calls.append(argv) or 0)
    with pytest.raises(SystemExit) as stop:
        wrapped(["prog", "5way"])
    assert stop.value.code == 1
    assert calls == []
    err = capsys.readouterr().err
    assert err.strip() == "error: Unexpected arguments ['5way']; all settings are --flags.", err
    assert wrapped(["prog"]) == 0 and calls == [["prog"]]


def test_the_wrapper_turns_an_expected_error_into_one_sentence(capsys):
    def main(argv):
        raise ValueError("The data set is missing.")

    with pytest.raises(SystemExit) as stop:
        one_sentence_errors(main)(["prog"])
    assert stop.value.code == 1
    assert capsys.readouterr().err.strip() == "error: The data set is missing."


@pytest.mark.parametrize("command", [["experiments/omniglot.py", "--num_shots=1"], ["experiments/miniimagenet.py"],
                                     ["experiments/sinusoid.py"], ["rl/train_navigation.py"],
                                     ["rl/evaluate.py", "--task=navigation"]], ids=lambda c: c[0])
def test_each_entry_point_refuses_a_stray_argument(command, tmp_path):
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    out = subprocess.run([sys.executable, *command, f"--logdir={tmp_path / 'run'}", "stray"], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 1, (out.returncode, out.stderr[-2000:])
    assert "error: Unexpected arguments ['stray']; all settings are --flags." in out.stderr, out.stderr[-2000:]
    assert "Traceback" not in out.stderr, out.stderr[-2000:]


BAD_VALUES = [  # (command, the sentence expected on stderr)
    (["experiments/omniglot.py", "--num_ways=1"], "--num_ways must be at least 2"),
    (["experiments/omniglot.py", "--inner_lr=inf"], "--inner_lr must be a finite number > 0."),
    (["experiments/omniglot.py", "--meta_lr=nan"], "--meta_lr must be a finite number > 0."),
    (["experiments/sinusoid.py", "--meta_lr=inf"], "--meta_lr must be a finite number > 0."),
    (["experiments/miniimagenet.py", "--fixture", "--num_shots=400"],
     "--num_shots=400 with 400 query images needs 800 images per class, but mini-ImageNet has 600."),
    (["rl/train_navigation.py", "--max_kl=inf"], "--max_kl must be a finite number > 0."),
    (["rl/train_navigation.py", "--cg_damping=inf"], "--cg_damping must be a finite number >= 0."),
    (["rl/train_navigation.py", f"--num_workers={4 * (os.cpu_count() or 1) + 1}"], "--num_workers must be between 0"),
    (["rl/evaluate.py", "--task=navigation", "--test_lr=inf"], "--test_lr must be a finite number > 0."),
    (["rl/evaluate.py", "--task=navigation", f"--num_workers={4 * (os.cpu_count() or 1) + 1}"],
     "--num_workers must be between 0"),
]


@pytest.mark.parametrize("command,message", BAD_VALUES, ids=lambda c: " ".join(c) if isinstance(c, list) else "")
def test_values_that_cannot_work_are_refused_in_one_sentence(command, message, tmp_path):
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    out = subprocess.run([sys.executable, *command, f"--logdir={tmp_path / 'run'}"], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 1 and message in out.stderr and "Traceback" not in out.stderr, out.stderr[-2000:]
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("command", [["experiments/omniglot.py", "--num_shots=1"], ["experiments/miniimagenet.py",
                                     "--fixture"], ["experiments/sinusoid.py"], ["rl/train_navigation.py"]],
                         ids=lambda c: c[0])
def test_a_logdir_that_is_a_file_is_one_sentence(command, tmp_path):
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    afile = tmp_path / "afile"
    afile.write_text("not a folder")
    out = subprocess.run([sys.executable, *command, f"--logdir={afile}"], cwd=ROOT, env=env, capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 1, out.stderr[-2000:]
    assert f"error: --logdir={afile} is a file, not a run's folder" in out.stderr, out.stderr[-2000:]


MEMORY_PROBE = r"""
import sys
import tensorflow as tf
from tensorflow.core.protobuf import device_properties_pb2
from tensorflow.python.eager import context
from tensorflow.python.grappler import cluster, tf_optimizer

sys.path.insert(0, sys.argv[2])
import collections
import fewshot_flags
from absl import flags
fewshot_flags.define_task_flags(collections.defaultdict(str))
fewshot_flags.define_run_flags(eval_batch_size=100)
flags.DEFINE_string("logdir", None, "")
flags.FLAGS(["prog", sys.argv[1]])
import fewshot
fewshot.prepare(flags.FLAGS, lambda stored: None)  # the entry points' first step: the flag takes effect here

def optimized_ops():
    # an AddN of three 4 MB tensors, optimized by Grappler with the eager context's configuration (the one
    # tf.function graphs get) on a virtual CPU of 1 MiB, so that the sum lies at a memory peak over 80% of it
    g = tf.Graph()
    with g.as_default(), tf.device("/job:localhost/replica:0/task:0/device:CPU:0"):
        x = tf.random.uniform([1024, 1024])
        g.add_to_collection("train_op", tf.add_n([tf.sin(x), tf.cos(x), tf.exp(x)]))
        meta = tf.compat.v1.train.export_meta_graph(graph=g)
    cpu = device_properties_pb2.DeviceProperties(type="CPU", num_cores=2, frequency=2000, bandwidth=10**7,
                                                 memory_size=1 << 20)
    dev = device_properties_pb2.NamedDevice(name="/job:localhost/replica:0/task:0/device:CPU:0", properties=cpu)
    out = tf_optimizer.OptimizeGraph(context.context().config, meta, cluster=cluster.Cluster(devices=[dev]))
    return sorted({n.op for n in out.node})

print("OPS", ",".join(optimized_ops()))
"""


@pytest.mark.parametrize("flag", ["--deterministic", "--nodeterministic"])
def test_deterministic_turns_off_the_memory_optimizers_accumulation_in_arrival_order(flag, tmp_path):
    # Grappler's memory optimizer rewrites an AddN at a memory peak into AssignAdds to a TemporaryVariable, in the
    # order the inputs arrive (what made two runs of the 5-shot loop layout differ); --deterministic (the few-shot
    # entry points' default) must leave the AddN alone, --nodeterministic keeps TensorFlow's default rewrite
    script = tmp_path / "probe.py"
    script.write_text(MEMORY_PROBE)
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONPATH": str(ROOT)}
    out = subprocess.run([sys.executable, str(script), flag, str(ROOT / "experiments")], capture_output=True,
                         text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    ops = next(line[4:].split(",") for line in out.stdout.splitlines() if line.startswith("OPS "))
    if flag == "--deterministic":
        assert "AddN" in ops and "TemporaryVariable" not in ops and "AssignAdd" not in ops, ops
    else:
        assert "AddN" not in ops and {"TemporaryVariable", "AssignAdd", "DestroyTemporaryVariable"} <= set(ops), ops


def test_the_memory_optimizer_cannot_be_turned_off_once_tensorflow_runs():
    code = ("import tensorflow as tf\nfrom maml_tf.cli import without_memory_optimizer\ntf.constant(1.0) + 1\n"
            "try:\n    without_memory_optimizer()\nexcept RuntimeError as e:\n    print('REFUSED', e)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                         env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONPATH": str(ROOT)})
    assert "REFUSED The memory optimizer cannot be turned off after TensorFlow has been initialized." in out.stdout, \
        out.stdout + out.stderr[-2000:]


def test_a_tensorflow_without_the_private_configuration_is_one_sentence(monkeypatch):
    from tensorflow.python.eager import context

    from maml_tf.cli import EXPECTED_ERRORS, without_memory_optimizer
    monkeypatch.setattr(context, "context", lambda: object())  # a context without _context_handle and _config
    with pytest.raises(EXPECTED_ERRORS, match="run with --nodeterministic"):
        without_memory_optimizer()
