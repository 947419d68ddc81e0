"""benchmarks/meta_step.py: a variant this machine cannot run is refused in one sentence.

The benchmark's workers run in their own processes, and the module defines absl flags at import, so
these tests drive it in fresh subprocesses.
"""
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "benchmarks" / "meta_step.py"


def _python(code: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{ROOT / 'benchmarks'}", "TF_CPP_MIN_LOG_LEVEL": "2"}
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, cwd=ROOT,
                          env=env, timeout=600)


def test_a_worker_whose_variant_cannot_run_says_why_and_exits_nonzero():
    """As on a CPU without AVX-512, where bfloat16 grouped convolutions have no gradients: the worker
    prints the reason as JSON instead of a traceback, and stops with status 1."""
    out = _python(f"""
        import sys, runpy
        from maml_tf import batched
        for device in ("CPU", "GPU"):
            batched._grouped_conv_problem[(device, "bfloat16")] = "no bfloat16 grouped convolutions here"
        sys.argv = ["meta_step.py", "--child=5way1shot:batched+bf16"]
        runpy.run_path({str(BENCH)!r}, run_name="__main__")
    """)
    assert out.returncode == 1, (out.returncode, out.stderr[-2000:])
    reply = json.loads(out.stdout.strip().splitlines()[-1])
    assert "no bfloat16 grouped convolutions here" in reply["error"], reply
    assert "Traceback" not in out.stderr, out.stderr[-2000:]


def test_the_parent_turns_a_refusal_into_one_sentence():
    """The parent reads a worker's refusal as VariantCannotRun, which names the variant and the reason
    (``main`` prints it to stderr and returns 1); a worker's ordinary reply passes through."""
    out = _python(f"""
        import io, json, sys
        sys.argv = ["meta_step.py"]
        import runpy
        ns = runpy.run_path({str(BENCH)!r}, run_name="meta_step")

        class Proc:
            def __init__(self, line):
                self.stdout = io.StringIO(line)
            def wait(self):
                return 1

        worker = ns["Worker"].__new__(ns["Worker"])
        worker.spec = "batched+bf16"
        worker.proc = Proc(json.dumps({{"error": "no bfloat16 here"}}) + "\\n")
        try:
            worker._read()
        except ns["VariantCannotRun"] as e:
            print("REFUSED:", e)
        worker.proc = Proc(json.dumps({{"ready": True}}) + "\\n")
        print("READ:", json.dumps(worker._read()))
    """)
    assert out.returncode == 0, out.stderr[-2000:]
    lines = out.stdout.strip().splitlines()
    assert lines[0] == "REFUSED: The variant batched+bf16 cannot run on this machine: no bfloat16 here", lines
    assert lines[1] == 'READ: {"ready": true}', lines
