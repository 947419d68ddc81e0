"""The one meta-training loop: compiled steps, checkpoints, resume, TensorBoard and progress.

Every experiment, supervised and RL (MAML-TRPO and its baselines), runs through :func:`train`. It is parameterised
by a compiled step (``make_train_step``), a batch source that depends only on the iteration number
(so a resumed run draws the same tasks as an uninterrupted one), and an optional validation that
selects the best checkpoint.

Layout of a log directory::

    <logdir>/config.json     the settings the run was started with (checked on resume)
    <logdir>/ckpt/           latest checkpoints (model, optimizer, iteration, wall time)
    <logdir>/best/           the checkpoint with the best validation score, if validating
    <logdir>/tb/             TensorBoard scalars
    <logdir>/.run.lock       present while a run writes to the folder (:func:`exclusive_logdir`)
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Optional

import keras
import numpy as np
import tensorflow as tf

from maml_tf.functional import Weights, get_weights


class CheckpointError(ValueError):
    """A log directory holds a checkpoint that does not fit the current model or settings."""


class LogdirInUseError(ValueError):
    """Another process is writing to the log directory (see :func:`exclusive_logdir`)."""


LOCK_NAME = ".run.lock"


@contextlib.contextmanager
def exclusive_logdir(logdir: str):
    """Hold ``<logdir>/.run.lock`` for the block, so that a second run started on the same folder (a command
    launched twice, or a resume while the first session is still saving after Ctrl-C) stops with
    :class:`LogdirInUseError` before it touches the folder's files, instead of both writing checkpoints and logs.

    The lock is an advisory ``flock``, which the operating system drops when the holding process ends, however
    it ends: a run killed outright leaves no lock behind, only the file, which the next run reuses. The file
    holds the holder's process id, for the message, and is removed when the block ends. Where ``fcntl`` is
    missing (Windows), runs are not guarded. Creates ``logdir`` if needed.
    """
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not POSIX
        yield
        return
    os.makedirs(logdir, exist_ok=True)
    path = os.path.join(logdir, LOCK_NAME)
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:  # held by another open file: another run
            holder = os.read(fd, 32).decode(errors="replace").strip()
            os.close(fd)
            raise LogdirInUseError(
                f"another run{f' (process {holder})' if holder.isdigit() else ''} is writing to {logdir}; wait for "
                f"it to end or stop it, or give another --logdir.") from None
        try:
            ours = os.path.samestat(os.fstat(fd), os.stat(path))
        except FileNotFoundError:
            ours = False
        if ours:
            break
        os.close(fd)  # its holder removed the file between our open and our lock: take the new one
    try:
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
        yield
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        os.close(fd)


def make_train_step(model: keras.Model, optimizer: keras.optimizers.Optimizer,
                    objective: Callable[[Weights, Any], tuple], jit_compile: bool = False):
    """Compile one meta-training step.

    ``objective(weights, batch) -> (loss, aux)`` with ``aux`` a dict of scalars to log. The step reads
    the model's weights as a dict, differentiates the loss with respect to the model's variables
    (through the inner loop, if the objective adapts) and applies the optimizer. It returns the loss,
    ``aux`` and ``meta_grad_norm``, the global norm of the gradient before the optimizer (and any clipping
    of its own) sees it. ``jit_compile=True`` compiles the step with XLA (measure it: for the paper's
    networks on a CPU it was slower).
    """
    variables = model.trainable_variables

    @tf.function(jit_compile=jit_compile, reduce_retracing=True)
    def step(batch):
        with tf.GradientTape() as tape:
            loss, aux = objective(get_weights(model), batch)
        grads = tape.gradient(loss, variables)
        norm = tf.linalg.global_norm([g for g in grads if g is not None])
        optimizer.apply_gradients(zip(grads, variables))
        return {"loss": loss, **aux, "meta_grad_norm": norm}

    return step


@dataclass
class TrainResult:
    iterations: int
    wall_time_s: float
    last_metrics: Dict[str, float] = field(default_factory=dict)
    best_score: Optional[float] = None
    best_iteration: Optional[int] = None


def _format_duration(seconds: float) -> str:
    seconds = int(max(seconds, 0))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}h{m:02d}m" if h else f"{m}m{s:02d}s"


def _format_rate(iterations_per_second: float) -> str:
    """``"12.3 it/s"``, or ``"7.1 s/it"`` below one iteration per second (where it/s would round away)."""
    if iterations_per_second >= 1.0:
        return f"{iterations_per_second:.1f} it/s"
    return f"{1.0 / max(iterations_per_second, 1e-9):.1f} s/it"


def check_config(logdir: str, config: Dict[str, Any], keys_that_must_match,
                 recorded_before: Optional[Dict[str, Any]] = None) -> None:
    """Write ``config.json`` on a fresh run; on resume, refuse settings that change the model.
    ``recorded_before``: the values of settings that a run's config.json may lack (it predates them).
    A ``config.json`` beside no checkpoint (``<logdir>/ckpt``) is that of a start that failed before its
    first checkpoint: it is replaced."""
    path = os.path.join(logdir, "config.json")
    if os.path.exists(path) and has_checkpoint(logdir):
        with open(path) as f:
            old = {**(recorded_before or {}), **json.load(f)}
        diff = [k for k in keys_that_must_match if k in old and k in config and old[k] != config[k]]
        if diff:
            k = diff[0]
            raise CheckpointError(
                f"{logdir} holds a run with {k}={old[k]!r} but this run asks for {k}={config[k]!r}; "
                f"use another log directory (--logdir) or the same settings.")
    else:
        os.makedirs(logdir, exist_ok=True)
        with open(path, "w") as f:
            json.dump(config, f, indent=2, sort_keys=True)


def make_checkpoint(model: keras.Model, optimizer: Optional[keras.optimizers.Optimizer],
                    extra: Optional[Dict[str, tf.Variable]] = None):
    """A ``tf.train.Checkpoint`` with the model, optimizer, iteration counter and wall time, and the
    ``extra`` variables if any (under ``learner_state``)."""
    state = dict(model=model, iteration=tf.Variable(0, dtype=tf.int64, trainable=False),
                 wall_time=tf.Variable(0.0, dtype=tf.float64, trainable=False))
    if optimizer is not None:
        optimizer.build(model.trainable_variables)
        state["optimizer"] = optimizer
    if extra:
        holder = tf.Module()
        for key, variable in extra.items():
            setattr(holder, key, variable)
        state["learner_state"] = holder
    return tf.train.Checkpoint(**state)


def has_checkpoint(logdir: str) -> bool:
    """Whether ``<logdir>/ckpt`` holds a checkpoint to resume from (a ``config.json`` without one is that of a
    start that failed before its first checkpoint)."""
    return os.path.isdir(logdir) and tf.train.latest_checkpoint(os.path.join(logdir, "ckpt")) is not None


def check_iterations(logdir: str, iterations: int, to_evaluate: str = "--eval_only") -> int:
    """The iteration a run in ``logdir`` resumes from; a CheckpointError (one sentence, naming ``to_evaluate``,
    how the entry point evaluates a run) if ``iterations`` is below it: :func:`train` would skip into the run,
    and an entry point would then rewrite its results."""
    start = latest_iteration(logdir)
    if iterations < start:
        raise CheckpointError(f"{logdir} holds a run at iteration {start}, past --iterations={iterations}; pass a "
                              f"larger --iterations to extend it, another --logdir for a new run, or {to_evaluate} "
                              f"to evaluate it.")
    return start


def latest_iteration(logdir: str) -> int:
    """The iteration of the latest checkpoint in ``<logdir>/ckpt`` that :func:`train` resumes from (0 for a
    fresh run)."""
    path = tf.train.latest_checkpoint(os.path.join(logdir, "ckpt")) if os.path.isdir(logdir) else None
    return int(path.rsplit("-", 1)[1]) if path else 0


def restore(checkpoint: tf.train.Checkpoint, directory: str, what: str = "checkpoint") -> Optional[str]:
    """Restore the latest checkpoint in ``directory`` (if any); a mismatch is one clear sentence."""
    path = tf.train.latest_checkpoint(directory) if os.path.isdir(directory) else None
    if path is None:
        return None
    try:
        status = checkpoint.restore(path)
        status.assert_existing_objects_matched()
        status.expect_partial()  # a model-only restore of a training checkpoint leaves its optimizer out, on purpose
    except (ValueError, AssertionError, tf.errors.OpError) as e:
        first = str(e).strip().splitlines()[0][:200]
        raise CheckpointError(
            f"The {what} in {directory} does not fit this model ({first}); use another log directory (--logdir) or the "
            f"settings it was trained with.") from None
    return path


class Interrupted(KeyboardInterrupt):
    """A run ended by a signal after saving its checkpoint; ``signum`` is that signal (the entry points
    exit with 128 + signum, the shell's convention); ``result`` is the :class:`TrainResult` of the run up
    to the saved iteration (None for a second signal, which does not wait for the iteration to end)."""

    def __init__(self, signum: int = signal.SIGINT, result: Optional["TrainResult"] = None):
        super().__init__(signum)
        self.signum = int(signum)
        self.result = result


class _DeferredInterrupt:
    """Ctrl-C and SIGTERM end a run between iterations, never inside a step (whose optimizer update
    may already be applied), so the checkpoint saved on the way out is exact. A second signal
    interrupts at once. Handlers are only set in the main thread (elsewhere signals are not ours)."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self):
        self.requested = False
        self.signum = signal.SIGINT
        self.previous = {}

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for sig in self.SIGNALS:
                self.previous[sig] = signal.signal(sig, self._handler)
        return self

    def _handler(self, signum, frame):
        if self.requested:
            raise Interrupted(signum)
        self.requested, self.signum = True, signum

    def __exit__(self, *exc):
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)
        return False


def train(model: keras.Model, optimizer: Optional[keras.optimizers.Optimizer], step: Callable[[Any], dict],
          batch_for_iteration: Callable[[int], Any], iterations: int, logdir: str,
          checkpoint_every: int = 1000, log_every: int = 100,
          validate: Optional[Callable[[int, float], float]] = None, validate_every: int = 0,
          name: str = "meta-train", verbose: bool = True,
          extra_state: Optional[Dict[str, tf.Variable]] = None) -> TrainResult:
    """Run (or resume) ``iterations`` steps of ``step(batch_for_iteration(i))``.

    ``step`` is usually a compiled step from :func:`make_train_step`, but any callable returning a dict
    of scalars works (the RL learner's step samples rollouts and applies TRPO; it passes
    ``optimizer=None`` and its baseline's state as ``extra_state``).

    Resumes from the latest checkpoint in ``<logdir>/ckpt``. Saves every ``checkpoint_every``
    iterations, at the end, and when Ctrl-C or SIGTERM ends the run (after the current iteration).
    ``validate(iteration, wall_time_s)`` returns a score (higher is better; ``wall_time_s`` is the
    training time so far, resumed runs included); the best checkpoint so far is kept in
    ``<logdir>/best``. ``extra_state``: variables that ``step`` carries from one iteration to the next
    (besides the model's and the optimizer's), saved and restored with them so that a resume is exact.
    ``log_every``: iterations between progress lines and TensorBoard scalars (and the NaN check);
    ``name`` labels the progress lines; ``verbose=False`` prints no progress (an interruption still says
    where it saved).
    """
    if iterations < 0:
        raise ValueError("iterations must be non-negative.")
    ckpt = make_checkpoint(model, optimizer, extra_state)
    best_score = tf.Variable(-np.inf, dtype=tf.float64, trainable=False)
    best_iteration = tf.Variable(-1, dtype=tf.int64, trainable=False)
    ckpt.best_score, ckpt.best_iteration = best_score, best_iteration
    manager = tf.train.CheckpointManager(ckpt, os.path.join(logdir, "ckpt"), max_to_keep=2)
    best_manager = tf.train.CheckpointManager(ckpt, os.path.join(logdir, "best"), max_to_keep=1)
    restored = restore(ckpt, os.path.join(logdir, "ckpt"))
    start = int(ckpt.iteration.numpy())
    if verbose and restored:
        print(f"[{name}] resumed from {restored} at iteration {start}"
              + (f"; nothing to train (iterations={iterations})" if start >= iterations else ""), flush=True)
    writer = tf.summary.create_file_writer(os.path.join(logdir, "tb"))

    def last_good() -> str:
        latest = manager.latest_checkpoint
        return (f"the last good checkpoint is {latest}" if latest
                else "no checkpoint was saved (check the learning rates)")

    def check_finite(i: int):
        """Never checkpoint weights that are not finite: stop, naming the last good checkpoint."""
        bad = [v.path for v in model.weights
               if tf.as_dtype(v.dtype).is_floating and not bool(tf.reduce_all(tf.math.is_finite(v)))]
        if bad:
            raise FloatingPointError(f"The {name} weights {bad[:3]}{' ...' if len(bad) > 3 else ''} are not finite "
                                     f"after iteration {i}; {last_good()}.")

    def save(i: int, elapsed: float):
        check_finite(i)
        ckpt.iteration.assign(i)
        ckpt.wall_time.assign(elapsed)
        manager.save(checkpoint_number=i)

    wall0 = float(ckpt.wall_time.numpy())
    t0 = time.time()
    window_t, window_i = t0, start
    metrics: Dict[str, float] = {}
    i = start
    with _DeferredInterrupt() as interrupt:
        while i < iterations:
            out = step(batch_for_iteration(i))
            i += 1
            if i % log_every == 0 or i == iterations:
                metrics = {k: float(v) for k, v in out.items()}
                if not all(np.isfinite(v) for v in metrics.values()):
                    raise FloatingPointError(f"The {name} loss became {metrics} at iteration {i}; {last_good()}.")
                with writer.as_default(step=i):
                    for k, v in metrics.items():
                        tf.summary.scalar(f"train/{k}", v)
                if verbose:
                    now = time.time()
                    rate = (i - window_i) / max(now - window_t, 1e-9)
                    window_t, window_i = now, i
                    shown = "  ".join(f"{k} {v:.4g}" for k, v in metrics.items())
                    print(f"[{name}] {i}/{iterations}  {shown}  {_format_rate(rate)}  "
                          f"ETA {_format_duration((iterations - i) / max(rate, 1e-9))}", flush=True)
            if validate is not None and validate_every and (i % validate_every == 0 or i == iterations):
                score = float(validate(i, wall0 + time.time() - t0))
                with writer.as_default(step=i):
                    tf.summary.scalar("validation/score", score)
                improved = score > best_score.numpy()
                if improved:
                    check_finite(i)
                    best_score.assign(score)
                    best_iteration.assign(i)
                    ckpt.iteration.assign(i)
                    ckpt.wall_time.assign(wall0 + time.time() - t0)
                    best_manager.save(checkpoint_number=i)
                if verbose:
                    print(f"[{name}] validation at {i}: {score:.4f}" + ("  (best so far, saved)" if improved else ""),
                          flush=True)
            if interrupt.requested:  # between iterations: the state is exactly that of iteration i
                wall = wall0 + time.time() - t0
                save(i, wall)
                writer.flush()
                print(f"\n[{name}] interrupted at iteration {i}; checkpoint saved, run the same command to resume.",
                      file=sys.stderr, flush=True)
                raise Interrupted(interrupt.signum, _result(i, wall, metrics, best_score, best_iteration))
            if i % checkpoint_every == 0 and i < iterations:
                save(i, wall0 + time.time() - t0)
    wall = wall0 + time.time() - t0
    if start < iterations or restored is None:
        save(i, wall)
    writer.flush()
    return _result(i, wall, metrics, best_score, best_iteration)


def _result(i: int, wall: float, metrics: dict, best_score: tf.Variable, best_iteration: tf.Variable) -> TrainResult:
    return TrainResult(iterations=i, wall_time_s=wall, last_metrics=metrics,
                       best_score=None if best_iteration.numpy() < 0 else float(best_score.numpy()),
                       best_iteration=None if best_iteration.numpy() < 0 else int(best_iteration.numpy()))
