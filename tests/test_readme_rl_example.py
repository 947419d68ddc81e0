"""The README's "Your own task family" script, run as written in a fresh process (its Sampler starts
worker processes that import the script again): a task family registered from outside the library must
meta-train through MAMLTRPO and the training loop, and adaptation must raise its returns."""
import os
import subprocess
import sys

import numpy as np
import pytest

import rl.envs
from readme_blocks import python_block
from rl.envs import tasks as rl_tasks

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir)


@pytest.mark.slow
def test_readme_rl_example_trains_and_adapts(tmp_path):
    (tmp_path / "point1d_maml.py").write_text(python_block("### Your own task family"))
    env = {**os.environ, "PYTHONPATH": os.path.abspath(ROOT), "TF_CPP_MIN_LOG_LEVEL": "3"}
    logdir = tmp_path / "run"
    out = subprocess.run([sys.executable, "-c", f"import point1d_maml; point1d_maml.main(logdir={str(logdir)!r})"],
                         cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stderr[-3000:]
    assert (logdir / "ckpt" / "checkpoint").exists()
    line = [l for l in out.stdout.splitlines() if l.startswith("mean return after 0, 1, 2")][-1]
    returns = np.array([float(x) for x in line.split("[", 1)[1].rstrip("]").split()])
    # A policy-gradient step towards the task's goal must help: -9.75, -4.81, -3.40 when written.
    assert returns[1] > returns[0] + 2 and returns[2] > returns[0] + 2, returns


class _NotATaskEnv:
    pass


def test_register_checks_its_arguments():
    with pytest.raises(ValueError, match="lacks sample_tasks, set_task, family.sample, family.validate"):
        rl.envs.register("test/NotATask-v0", _NotATaskEnv, horizon=10)
    nav = rl.envs.env_class("maml_tf/Navigation2D-v1")
    with pytest.raises(ValueError, match="horizon must be a positive integer"):
        rl.envs.register("test/Nav-v0", nav, horizon=0)
    with pytest.raises(ValueError, match="already registered as Navigation2DEnv"):
        rl.envs.register("maml_tf/Navigation2D-v1", nav, horizon=50)
    rl.envs.register("maml_tf/Navigation2D-v1", nav, horizon=100, goal_region="box")  # the same: nothing to do
    with pytest.raises(ValueError,
                       match=r"Navigation2DEnv\(task=None, \*\*\{'foo': 1\}\) does not fit its constructor"):
        rl.envs.register("test/NavFoo-v0", nav, horizon=10, foo=1)
    rl.envs.register("test/NavInt64-v0", nav, horizon=np.int64(10), goal_region="box")  # any integer type
    assert rl.envs.spec("test/NavInt64-v0")[1] == 10
    with pytest.raises(ValueError, match="add your own with rl.envs.register"):
        rl.envs.spec("test/Unknown-v0")
    assert issubclass(nav, rl_tasks.TaskEnvMixin)
