r"""Benchmark: milliseconds per Omniglot meta-training iteration, fast layout against the plain loop.

One iteration = the compiled step of the experiments (``maml_tf.training.make_train_step``): forward
pass, second-order meta-gradient through the inner loop, Adam update. Settings (paper, conv net,
K query examples per class as in training):

    5way1shot    meta-batch 32, 1 inner step, inner lr 0.4
    20way1shot   meta-batch 16, 5 inner steps, inner lr 0.1
    5way5shot, 20way5shot   the same with 5 shots (only when named in --settings)

The denominator is the plain reference, ``maml.meta_objective(..., layout="loop")`` under
``tf.function`` with TensorFlow's default threading, measured in the same run. Every variant runs in
its own subprocess (so each has its own peak RSS) that compiles once and then times windows of
``--iters`` iterations on command; the parent interleaves the windows of all variants (rotating the
order) so that changes in background load hit all of them alike, and reports medians. Besides wall
time it reports CPU time per iteration (insensitive to other jobs, but blind to parallelism).

Prints one JSON line per setting::

    {"setting": "5way1shot", "ms_per_iter": ..., "loop_ms_per_iter": ..., "speedup": ...,
     "peak_rss_mb": ..., "loop_peak_rss_mb": ..., "variants": {...}, "load_avg": [...], ...}

``ms_per_iter``/``peak_rss_mb`` describe the first of ``--variants``; ``variants`` holds every
variant's numbers.

The floor (``benchmarks/arithmetic.py``): every worker counts the multiply-adds of its compiled step
(``gmac_per_iter``: the live convolutions and matrix products of the graph), and after the timed
windows a last worker measures this machine's best fp32 rate on a large matrix product and a
large-batch convolution (``peak_gflops``, best of 5). ``floor_ms_per_iter`` = the step's arithmetic at
that rate: no layout that does the same arithmetic can be faster. ``max_speedup`` = the loop's time
over that floor, the most any such layout could gain over the loop on this machine; ``gflops`` per
variant is the rate it reaches. A variant is ``layout[+xla][+eigen][+bf16][+nomemopt][@INTRAxINTER]``, e.g.
``batched``, ``vectorized``, ``batched+bf16`` (convolutions and matrix products in bfloat16, batched layout
only: the same multiply-adds at lower precision, so the fp32 floor does not bound it),
``loop@1x1`` (one intra-op and one inter-op thread), ``batched+xla``, ``loop+eigen`` (TensorFlow's
own CPU kernels instead of oneDNN: ``TF_ENABLE_ONEDNN_OPTS=0``, TensorFlow's default on CPUs without
AVX-512; every other variant runs with oneDNN, which the batched layout's grouped convolutions need
on a CPU), ``loop+nomemopt`` (Grappler's memory optimizer off, as the few-shot entry points run by
default with ``--deterministic``: ``maml_tf.cli.without_memory_optimizer``; the other variants keep
TensorFlow's default).

    python benchmarks/meta_step.py
    python benchmarks/meta_step.py --settings=5way1shot --variants=batched,batched@1x1,loop@1x1 --windows=5
"""

from __future__ import annotations

import json
import os
import re
import resource
import statistics
import subprocess
import sys
import time

from absl import app, flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # this checkout's packages first

SETTINGS = {
    "5way1shot": dict(num_ways=5, num_shots=1, meta_batch_size=32, num_inner_steps=1, inner_lr=0.4),
    "20way1shot": dict(num_ways=20, num_shots=1, meta_batch_size=16, num_inner_steps=5, inner_lr=0.1),
    # Not timed by default: the 5-shot presets, for choosing the layout of those runs.
    "5way5shot": dict(num_ways=5, num_shots=5, meta_batch_size=32, num_inner_steps=1, inner_lr=0.4),
    "20way5shot": dict(num_ways=20, num_shots=5, meta_batch_size=16, num_inner_steps=5, inner_lr=0.1),
}
DEFAULT_SETTINGS = ["5way1shot", "20way1shot"]  # the two the speed target names
LAYOUTS = ("loop", "vectorized", "batched")
VARIANT = re.compile(r"^(?P<layout>[a-z]+)(?P<xla>\+xla)?(?P<eigen>\+eigen)?(?P<bf16>\+bf16)?(?P<nomemopt>\+nomemopt)?"
                     r"(@(?P<intra>\d+)x(?P<inter>\d+))?$")

flags.DEFINE_list("settings", DEFAULT_SETTINGS, f"Settings to run: {', '.join(SETTINGS)}.")
flags.DEFINE_list("variants", ["batched"],
                  "Variants to time against the loop: layout[+xla][+eigen][+bf16][+nomemopt][@INTRAxINTER].")
flags.DEFINE_string("reference", "loop", "The denominator variant.")
flags.DEFINE_integer("iters", 5, "Iterations per timed window.", lower_bound=1)
flags.DEFINE_integer("windows", 3, "Timed windows per variant (interleaved across variants).", lower_bound=1)
flags.DEFINE_integer("warmup", 2, "Untimed iterations after compilation.", lower_bound=0)
flags.DEFINE_integer("seed", 0, "Seed of the weights and of the random episodes.")
flags.DEFINE_string("child", None, "Internal: run one variant as a worker (setting:variant).")
flags.register_validator("settings", lambda v: len(v) > 0 and set(v) <= set(SETTINGS),
                         f"--settings takes a comma-separated subset of {','.join(SETTINGS)}.")
flags.register_validator("variants", lambda v: len(v) > 0 and all(_parse_ok(s) for s in v),
                         "--variants takes specs like batched, loop@1x1, batched+xla, batched+bf16 or loop+eigen "
                         "(+bf16: batched only; layouts: "
                         + ", ".join(LAYOUTS) + ").")
flags.register_validator("reference", lambda s: _parse_ok(s), "--reference takes a spec like loop or loop@1x1.")
FLAGS = flags.FLAGS


def _parse_ok(spec: str) -> bool:
    m = VARIANT.match(spec)
    return bool(m) and m.group("layout") in LAYOUTS and (not m.group("bf16") or m.group("layout") == "batched")


def parse_variant(spec: str) -> dict:
    m = VARIANT.match(spec)
    return {"layout": m.group("layout"), "jit_compile": bool(m.group("xla")), "onednn": not m.group("eigen"),
            "compute_dtype": "bfloat16" if m.group("bf16") else "float32",
            "memory_optimizer": not m.group("nomemopt"),
            "intra_op_threads": int(m.group("intra") or 0), "inter_op_threads": int(m.group("inter") or 0)}


# ----------------------------------------------------------------------------------------------
# Worker: one variant of one setting


def _rss_mb() -> tuple[float, float]:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # KiB on Linux
    current = 0.0
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                current = int(line.split()[1]) / 1024.0
    return peak, current


def run_peak_child() -> None:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from arithmetic import peak_gflops
    print(json.dumps(peak_gflops()), flush=True)


def measure_peak() -> dict:
    """This machine's best fp32 rate, in a fresh process (``arithmetic.peak_gflops``)."""
    here = os.path.dirname(os.path.abspath(__file__))
    out = subprocess.run([sys.executable, os.path.abspath(__file__), "--child=peak"], capture_output=True, text=True,
                         check=True, env={**os.environ, "PYTHONPATH": os.path.dirname(here)})
    return json.loads(out.stdout.strip().splitlines()[-1])


def run_child(setting: str, spec: str) -> None:
    cfg, var = SETTINGS[setting], parse_variant(spec)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    # grouped convolutions on CPUs without AVX-512 (maml_tf/batched.py)
    os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")
    import keras
    import numpy as np
    import tensorflow as tf

    if not var["memory_optimizer"]:  # as the few-shot entry points run by default (--deterministic)
        from maml_tf.cli import without_memory_optimizer
        without_memory_optimizer()
    if var["intra_op_threads"]:
        tf.config.threading.set_intra_op_parallelism_threads(var["intra_op_threads"])
    if var["inter_op_threads"]:
        tf.config.threading.set_inter_op_parallelism_threads(var["inter_op_threads"])
    from maml_tf import batched, maml, models
    from maml_tf.training import make_train_step

    keras.utils.set_random_seed(FLAGS.seed)
    n, k, t = cfg["num_ways"], cfg["num_shots"], cfg["meta_batch_size"]
    model = models.omniglot_conv(n)
    optimizer = keras.optimizers.Adam(1e-3)
    try:
        task_loss = batched.supervised_loss(model, maml.softmax_cross_entropy, compute_dtype=var["compute_dtype"])
    except ValueError as e:  # e.g. bfloat16 grouped convolutions on a CPU without AVX-512: tell the parent why
        print(json.dumps({"error": str(e)}), flush=True)
        sys.exit(1)

    def objective(weights, batch):
        support, query = batch
        return maml.meta_objective(task_loss, weights, support, query, cfg["num_inner_steps"], cfg["inner_lr"],
                                   first_order=False, layout=var["layout"]), {}

    step = make_train_step(model, optimizer, objective, jit_compile=var["jit_compile"])
    rng = np.random.default_rng(FLAGS.seed)
    labels = np.tile(np.repeat(np.arange(n, dtype=np.int32), k), (t, 1))

    def episode():  # binary "strokes" images, as Omniglot after the authors' resize
        return (rng.random((t, n * k, 28, 28, 1)) < 0.2).astype(np.float32), labels

    batches = [(episode(), episode()) for _ in range(4)]
    t0 = time.perf_counter()
    float(step(batches[0])["loss"])
    compile_s = time.perf_counter() - t0
    for i in range(FLAGS.warmup):
        float(step(batches[i % 4])["loss"])
    from arithmetic import count_macs
    try:
        gmac = count_macs(step.get_concrete_function(batches[0]).graph)["total"] / 1e9
    except ValueError:  # e.g. the vectorized layout's while loops: not countable, reported as null
        gmac = None
    print(json.dumps({"ready": True, "compile_s": compile_s, "gmac_per_iter": gmac}), flush=True)
    done = 0
    for line in sys.stdin:
        cmd = line.split()
        if not cmd or cmd[0] == "quit":
            break
        iters = int(cmd[1])
        w0, c0 = time.perf_counter(), time.process_time()
        for _ in range(iters):
            out = step(batches[done % 4])
            done += 1
        float(out["loss"])  # wait for the last step
        wall, cpu = time.perf_counter() - w0, time.process_time() - c0
        print(json.dumps({"wall_ms": 1000 * wall / iters, "cpu_ms": 1000 * cpu / iters,
                          "load": os.getloadavg()[0]}), flush=True)
    peak, current = _rss_mb()
    print(json.dumps({"peak_rss_mb": peak, "rss_mb": current}), flush=True)


# ----------------------------------------------------------------------------------------------
# Parent


class VariantCannotRun(Exception):
    """A worker refused its variant before timing anything (its reason is the message)."""


class Worker:
    def __init__(self, setting: str, spec: str):
        self.spec = spec
        self.proc = subprocess.Popen(
            [sys.executable, os.path.abspath(__file__), f"--child={setting}:{spec}", f"--seed={FLAGS.seed}",
             f"--warmup={FLAGS.warmup}"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1,
            cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
            env={**os.environ, "PYTHONPATH": os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                 "TF_ENABLE_ONEDNN_OPTS": "1" if parse_variant(spec)["onednn"] else "0"})
        self.ready = self._read()
        self.windows: list[dict] = []

    def _read(self) -> dict:
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"the {self.spec} worker ended early (exit status {self.proc.wait()}).")
        out = json.loads(line)
        if "error" in out:
            self.proc.wait()
            raise VariantCannotRun(f"The variant {self.spec} cannot run on this machine: {out['error']}")
        return out

    def run(self, iters: int) -> None:
        self.proc.stdin.write(f"run {iters}\n")
        self.proc.stdin.flush()
        self.windows.append(self._read())

    def finish(self) -> dict:
        self.proc.stdin.write("quit\n")
        self.proc.stdin.flush()
        mem = self._read()
        self.proc.wait()
        wall = [w["wall_ms"] for w in self.windows]
        cpu = [w["cpu_ms"] for w in self.windows]
        ms, gmac = statistics.median(wall), self.ready["gmac_per_iter"]
        return {**parse_variant(self.spec), "ms_per_iter": round(ms, 1),
                "gmac_per_iter": None if gmac is None else round(gmac, 3),
                "gflops": None if gmac is None else round(2 * gmac / ms * 1e3, 1),
                "cpu_ms_per_iter": round(statistics.median(cpu), 1),
                "windows_ms": [round(x, 1) for x in wall], "compile_s": round(self.ready["compile_s"], 1),
                "peak_rss_mb": round(mem["peak_rss_mb"], 1), "rss_mb": round(mem["rss_mb"], 1)}


def bench_setting(setting: str) -> dict:
    specs = [FLAGS.reference] + [v for v in FLAGS.variants if v != FLAGS.reference]
    load_before = os.getloadavg()
    workers = []
    try:
        for spec in specs:  # compile one after another, so that compilations do not overlap timing
            workers.append(Worker(setting, spec))
        for w in range(FLAGS.windows):
            order = workers[w % len(workers):] + workers[:w % len(workers)]
            for worker in order:
                worker.run(FLAGS.iters)
        results = {worker.spec: worker.finish() for worker in workers}
    finally:
        for worker in workers:
            if worker.proc.poll() is None:
                worker.proc.kill()
    peak = measure_peak()
    best = max(peak["matmul_gflops"], peak["conv_gflops"])
    ref, main = results[FLAGS.reference], results[FLAGS.variants[0]]
    # Every layout does the same arithmetic; take the count of one whose graph could be counted.
    gmac = next((r["gmac_per_iter"] for r in results.values() if r["gmac_per_iter"]), None)
    floor_ms = None if gmac is None else 2 * gmac / best * 1e3
    return {
        "setting": setting,
        "ms_per_iter": main["ms_per_iter"],
        "loop_ms_per_iter": ref["ms_per_iter"],
        "speedup": round(ref["ms_per_iter"] / main["ms_per_iter"], 2),
        "peak_rss_mb": main["peak_rss_mb"],
        "loop_peak_rss_mb": ref["peak_rss_mb"],
        "cpu_ms_per_iter": main["cpu_ms_per_iter"],
        "loop_cpu_ms_per_iter": ref["cpu_ms_per_iter"],
        "cpu_speedup": round(ref["cpu_ms_per_iter"] / main["cpu_ms_per_iter"], 2),
        "gmac_per_iter": main["gmac_per_iter"],
        "loop_gmac_per_iter": ref["gmac_per_iter"],
        "peak_gflops": peak,
        "floor_ms_per_iter": None if floor_ms is None else round(floor_ms, 1),
        "max_speedup": None if floor_ms is None else round(ref["ms_per_iter"] / floor_ms, 2),
        "variant": FLAGS.variants[0],
        "reference": FLAGS.reference,
        "variants": results,
        "config": SETTINGS[setting],
        "iters_per_window": FLAGS.iters,
        "windows": FLAGS.windows,
        "load_avg_before": [round(x, 2) for x in load_before],
        "load_avg_after": [round(x, 2) for x in os.getloadavg()],
        "cpus": os.cpu_count(),
    }


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments {argv[1:]}; all settings are --flags.")
    if FLAGS.child == "peak":
        run_peak_child()
        return 0
    if FLAGS.child:
        setting, spec = FLAGS.child.split(":", 1)
        run_child(setting, spec)
        return 0
    for setting in FLAGS.settings:
        try:
            result = bench_setting(setting)
        except VariantCannotRun as e:
            print(e, file=sys.stderr)
            return 1
        print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    app.run(main)
