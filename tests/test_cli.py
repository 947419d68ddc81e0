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
