"""Shared behaviour of the entry points that is not about flags: expected errors become one clear
sentence on stderr and exit status 1, instead of a traceback.

Importing this module does not import TensorFlow (an entry point can validate its flags first and
fail at once); the wrapped ``main`` does."""

from __future__ import annotations

import functools
import json
import math
import os
import sys
import zipfile

EXPECTED_ERRORS = (ValueError, FileNotFoundError, FileExistsError, NotADirectoryError, PermissionError,
                   zipfile.BadZipFile, FloatingPointError)  # maml_tf.training.CheckpointError is a ValueError


def finite_positive(v) -> bool:
    """Flag validator: ``v`` unset (None), or a finite number > 0 (``inf`` and ``nan`` are refused)."""
    return v is None or (math.isfinite(v) and v > 0)


def finite_non_negative(v) -> bool:
    """Flag validator: ``v`` unset (None), or a finite number >= 0."""
    return v is None or (math.isfinite(v) and v >= 0)


MAX_WORKERS_PER_CORE = 4


def workers_ok(v) -> bool:
    """Flag validator for sampler processes: unset, or 0 (in-process) to MAX_WORKERS_PER_CORE per core."""
    return v is None or 0 <= v <= MAX_WORKERS_PER_CORE * (os.cpu_count() or 1)


WORKERS_MESSAGE = (f"--num_workers must be between 0 (in-process) and {MAX_WORKERS_PER_CORE} per CPU core "
                   f"({MAX_WORKERS_PER_CORE * (os.cpu_count() or 1)} here).")


def check_logdir(path: str, flag: str = "--logdir") -> None:
    """Refuse a log directory that exists as something other than a folder, in one sentence."""
    if os.path.exists(path) and not os.path.isdir(path):
        raise NotADirectoryError(f"{flag}={path} is a file, not a run's folder; give a folder (it is created "
                                 "if missing).")


def one_sentence_errors(main):
    """Wrap an absl ``main(argv)`` so that expected errors end the program with one sentence. Every
    setting of an entry point is a flag: a stray positional argument is such an error too."""

    @functools.wraps(main)
    def wrapped(argv):
        try:
            if len(argv) > 1:
                raise ValueError(f"Unexpected arguments {argv[1:]}; all settings are --flags.")
            quiet_tensorflow()
            return main(argv)
        except EXPECTED_ERRORS as e:
            print(f"error: {e}", file=sys.stderr, flush=True)
            sys.exit(1)
        except KeyboardInterrupt as e:  # 128 + the signal: 130 for Ctrl-C, 143 for SIGTERM
            sys.exit(128 + getattr(e, "signum", 2))

    return wrapped


def quiet_tensorflow() -> None:
    """Keep TensorFlow's and absl's informational chatter out of the progress display."""
    import logging

    import tensorflow as tf
    from absl import logging as absl_logging

    absl_logging.set_verbosity(absl_logging.WARNING)
    tf.get_logger().setLevel(logging.ERROR)


def one_op_at_a_time() -> None:
    """Run TensorFlow's ops one after another (inter-op threads 1; each op still uses every core).

    With ops running concurrently, the RL learner's numbers vary in their last digits from one run of
    the same command to the next (measured on 2D navigation: the first iteration's KL took three
    different values in six runs), and RL amplifies such differences; one op at a time they repeat,
    and the half-cheetah meta-iteration was no slower (benchmarks/maml_trpo.py, README). Call it before
    TensorFlow runs its first op; later it raises RuntimeError."""
    import tensorflow as tf

    tf.config.threading.set_inter_op_parallelism_threads(1)


def without_memory_optimizer() -> None:
    """Turn off Grappler's memory optimizer for this process's compiled functions.

    Where its static estimate of a graph's peak memory exceeds 80% of the device's memory (so far: the
    per-task loop of the 5-shot Omniglot presets, 32 tasks unrolled into one graph), that pass rewrites
    every AddN of more than two inputs live at the peak into additions to a temporary variable in the
    order the inputs arrive. Sums of gradients then vary in their last bits from one run of a command to
    the next, and over training by up to 1.3e-2 (two 20-iteration 5-way 5-shot runs); with the pass off
    they repeat exactly, at the same speed and less memory (README, under `training.train`). TensorFlow 2 has
    no public switch for this pass (``tf.config.optimizer.set_experimental_options`` has no
    ``memory_optimization``), so this sets it in the eager context's base ``ConfigProto``, the one its
    runtime options are applied to. Call it before TensorFlow runs its first op; later it raises
    RuntimeError."""
    from tensorflow.core.protobuf import config_pb2, rewriter_config_pb2
    from tensorflow.python.eager import context

    ctx = context.context()
    if not (hasattr(ctx, "_context_handle") and hasattr(ctx, "_config")):
        import tensorflow as tf
        raise ValueError(f"TensorFlow {tf.__version__} does not keep its configuration where maml_tf turns off "
                         "Grappler's memory optimizer; run with --nodeterministic.")
    if ctx._context_handle is not None:  # as tf.config.threading refuses changes after initialization
        raise RuntimeError("The memory optimizer cannot be turned off after TensorFlow has been initialized.")
    config = config_pb2.ConfigProto()
    if ctx._config is not None:
        config.CopyFrom(ctx._config)
    config.graph_options.rewrite_options.memory_optimization = rewriter_config_pb2.RewriterConfig.NO_MEM_OPT
    ctx._config = config


def read_json(path: str) -> dict:
    """The JSON object in ``path``; a corrupt file is one sentence (a ValueError) naming it."""
    with open(path) as f:
        try:
            return json.load(f)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path} is not valid JSON ({e}); restore it or use another --logdir.") from None


def machine_info() -> dict:
    """The machine and versions a result was measured with, as the results files record them."""
    import os
    import platform

    import keras
    import tensorflow as tf
    return {"platform": platform.platform(), "cpus": os.cpu_count(), "python": sys.version.split()[0],
            "tensorflow": tf.__version__, "keras": keras.__version__}
