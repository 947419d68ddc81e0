"""One run per log directory: a second run started on a folder that another process is writing to stops with one
sentence before it touches the folder's files; a run that died, however it died, leaves no lock behind."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import pytest

from maml_tf.training import LOCK_NAME, LogdirInUseError, exclusive_logdir

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "CUDA_VISIBLE_DEVICES": "", "PYTHONPATH": str(ROOT)}
HOLD = ("import sys, time\n"
        "from maml_tf.training import exclusive_logdir\n"
        "with exclusive_logdir(sys.argv[1]):\n"
        "    print('held', flush=True)\n"
        "    time.sleep(600)\n")


def hold_in_another_process(logdir):
    """A process holding ``logdir``'s lock, as a running training would."""
    p = subprocess.Popen([sys.executable, "-c", HOLD, str(logdir)], cwd=ROOT, env=ENV, stdout=subprocess.PIPE,
                         text=True)
    assert p.stdout.readline().strip() == "held"
    return p


def test_the_lock_refuses_a_second_holder_and_is_released_with_its_file(tmp_path):
    logdir = tmp_path / "run"
    with exclusive_logdir(str(logdir)):
        assert (logdir / LOCK_NAME).read_text() == str(os.getpid())
        with pytest.raises(LogdirInUseError, match=f"another run \\(process {os.getpid()}\\) is writing to"):
            with exclusive_logdir(str(logdir)):
                pass
    assert not (logdir / LOCK_NAME).exists()
    with exclusive_logdir(str(logdir)):  # free again
        pass


def test_a_killed_holder_leaves_no_lock(tmp_path):
    p = hold_in_another_process(tmp_path)
    with pytest.raises(LogdirInUseError, match=f"process {p.pid}"):
        with exclusive_logdir(str(tmp_path)):
            pass
    p.send_signal(signal.SIGKILL)  # no cleanup runs: the file stays, the operating system drops the lock
    p.wait(timeout=30)
    assert (tmp_path / LOCK_NAME).exists()
    with exclusive_logdir(str(tmp_path)):
        assert (tmp_path / LOCK_NAME).read_text() == str(os.getpid())


def test_an_entry_point_on_a_folder_in_use_stops_before_touching_it(tmp_path):
    (tmp_path / "config.json").write_text("{}")  # stands for the running run's files
    p = hold_in_another_process(tmp_path)
    before = sorted(os.listdir(tmp_path))
    try:
        t0 = time.time()
        r = subprocess.run([sys.executable, str(ROOT / "experiments" / "sinusoid.py"), "--iterations=5",
                            f"--logdir={tmp_path}"], cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=300)
        after = sorted(os.listdir(tmp_path))
    finally:
        p.kill()
        p.wait(timeout=30)
    assert r.returncode == 1, r.stderr[-2000:]
    last = r.stderr.strip().splitlines()[-1]
    assert last == (f"error: another run (process {p.pid}) is writing to {tmp_path}; wait for it to end or stop "
                    f"it, or give another --logdir."), (last, time.time() - t0)
    assert after == before  # nothing written, nothing removed
    assert (tmp_path / "config.json").read_text() == "{}"
