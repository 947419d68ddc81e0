"""The README's "Your own image data set" script, run as written (its log directory moved to a temporary
one) in a fresh process: episodes from an array of one's own, batched meta-training with checkpoints, and
an evaluation whose accuracy after one step is far above the untrained 0-step chance level."""
import os
import subprocess
import sys

import numpy as np
import pytest

from readme_blocks import python_block

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir)
LOGDIR = '"/tmp/fewshot_own_data"'


@pytest.mark.slow
def test_readme_fewshot_example_trains_and_evaluates(tmp_path):
    code = python_block("### Your own image data set")
    assert code.count(LOGDIR) == 1
    logdir = tmp_path / "run"
    (tmp_path / "fewshot_own_data.py").write_text(code.replace(LOGDIR, repr(str(logdir))))
    env = {**os.environ, "PYTHONPATH": os.path.abspath(ROOT), "TF_CPP_MIN_LOG_LEVEL": "3"}
    out = subprocess.run([sys.executable, "fewshot_own_data.py"], cwd=tmp_path, env=env, capture_output=True,
                         text=True, timeout=900)
    assert out.returncode == 0, out.stderr[-3000:]
    assert (logdir / "ckpt" / "checkpoint").exists()
    line = [l for l in out.stdout.splitlines() if l.startswith("test accuracy after 0..3 steps:")][-1]
    means = np.array([float(x) for x in line.split("[", 1)[1].split("]", 1)[0].split()])
    # 5-way: about 20% before adaptation; 21.1 and then 100.0 after each step when written.
    assert means.shape == (4,) and means[0] < 40 and min(means[1:]) > 80, means
