"""The meta-training loop: exact resume, incompatible checkpoints, divergence."""

import json
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras
import numpy as np
import pytest

from data.sinusoid import SinusoidTasks
from maml_tf import functional, maml, models
from maml_tf.training import (CheckpointError, _format_rate, check_config, check_iterations, latest_iteration,
                               make_train_step, train)


def setup(seed=0, hidden=(8,)):
    keras.utils.set_random_seed(seed)
    model = models.mlp_regressor(hidden=hidden)
    opt = keras.optimizers.Adam(1e-3)
    task_loss = maml.supervised_loss(functional.make_forward(model), maml.mse)

    def objective(weights, batch):
        return maml.meta_objective(task_loss, weights, batch[0], batch[1], 1, 0.01), {}

    tasks = SinusoidTasks(5, 5)

    def batch_for(i):
        b = tasks.sample(4, np.random.default_rng([seed, i]))
        return b.support, b.query

    return model, opt, make_train_step(model, opt, objective), batch_for


def weights_of(model):
    return {v.path: v.numpy().copy() for v in model.trainable_variables}


def test_resumed_run_equals_uninterrupted_run(tmp_path):
    model, opt, step, batch_for = setup()
    train(model, opt, step, batch_for, 30, str(tmp_path / "straight"), checkpoint_every=10, verbose=False)
    straight = weights_of(model)

    model, opt, step, batch_for = setup()
    assert latest_iteration(str(tmp_path / "resumed")) == 0  # no such folder yet
    res = train(model, opt, step, batch_for, 17, str(tmp_path / "resumed"), checkpoint_every=10, verbose=False)
    assert res.iterations == 17 and latest_iteration(str(tmp_path / "resumed")) == 17
    assert check_iterations(str(tmp_path / "resumed"), 17) == 17 and check_iterations(str(tmp_path / "new"), 1) == 0
    with pytest.raises(CheckpointError, match="holds a run at iteration 17, past --iterations=16;"):
        check_iterations(str(tmp_path / "resumed"), 16)
    model, opt, step, batch_for = setup()  # a fresh process would rebuild everything
    res = train(model, opt, step, batch_for, 30, str(tmp_path / "resumed"), checkpoint_every=10, verbose=False)
    assert res.iterations == 30
    for k, v in weights_of(model).items():
        np.testing.assert_allclose(v, straight[k], rtol=1e-6, atol=1e-7)


def test_checkpoint_of_another_model_is_refused_in_one_sentence(tmp_path):
    model, opt, step, batch_for = setup(hidden=(8,))
    train(model, opt, step, batch_for, 2, str(tmp_path), verbose=False)
    model, opt, step, batch_for = setup(hidden=(9,))
    with pytest.raises(CheckpointError, match="does not fit this model") as e:
        train(model, opt, step, batch_for, 4, str(tmp_path), verbose=False)
    assert "\n" not in str(e.value)


def test_changed_settings_are_refused(tmp_path):
    check_config(str(tmp_path), {"inner_lr": 0.01, "eval_tasks": 600}, ["inner_lr"])
    # no checkpoint yet: the config.json of a start that failed binds nothing and is replaced
    check_config(str(tmp_path), {"inner_lr": 0.02}, ["inner_lr"])
    assert json.loads((tmp_path / "config.json").read_text()) == {"inner_lr": 0.02}
    model, opt, step, batch_for = setup()  # a run: a checkpoint beside its config.json
    train(model, opt, step, batch_for, 1, str(tmp_path), verbose=False)
    check_config(str(tmp_path), {"inner_lr": 0.02, "eval_tasks": 100}, ["inner_lr"])  # eval settings may change
    with pytest.raises(CheckpointError, match="inner_lr=0.02 but this run asks for inner_lr=0.1"):
        check_config(str(tmp_path), {"inner_lr": 0.1}, ["inner_lr"])


def test_divergence_stops_with_a_clear_error(tmp_path):
    model, opt, step, batch_for = setup()

    def bad_step(batch):
        out = step(batch)
        return {"loss": out["loss"] * np.nan}

    with pytest.raises(FloatingPointError, match="at iteration 1; no checkpoint was saved"):
        train(model, opt, bad_step, batch_for, 5, str(tmp_path), log_every=1, verbose=False)
    assert latest_iteration(str(tmp_path)) == 0


def test_weights_that_are_not_finite_are_never_checkpointed(tmp_path):
    """The loss is checked every log_every iterations only, and it is computed before the update: weights
    made NaN by an update must still not reach a checkpoint, and the error names the last good one."""
    model, opt, step, batch_for = setup()
    calls = []

    def poisoning_step(batch):
        out = step(batch)
        calls.append(1)
        if len(calls) == 3:  # the third update leaves NaN weights behind a finite loss
            v = model.trainable_variables[0]
            v.assign(v * np.nan)
        return out

    with pytest.raises(FloatingPointError, match=r"not finite after iteration 3; the last good checkpoint is .*ckpt-2"):
        train(model, opt, poisoning_step, batch_for, 10, str(tmp_path), checkpoint_every=1, log_every=100,
              verbose=False)
    assert latest_iteration(str(tmp_path)) == 2
    # the best checkpoint is guarded too
    model, opt, step, batch_for = setup()
    calls.clear()
    with pytest.raises(FloatingPointError, match="not finite after iteration 3"):
        train(model, opt, poisoning_step, batch_for, 10, str(tmp_path / "best_too"), checkpoint_every=100,
              log_every=100, validate=lambda i, t: float(i), validate_every=1, verbose=False)
    assert not os.path.exists(tmp_path / "best_too" / "best" / "ckpt-3.index")


def test_sigterm_saves_a_checkpoint_at_the_current_iteration_and_validation_sees_the_clock(tmp_path):
    import signal

    import tensorflow as tf

    model, opt, step, batch_for = setup()
    seen = []

    def step_then_terminate(batch):
        out = step(batch)
        if int(opt.iterations.numpy()) == 13:
            os.kill(os.getpid(), signal.SIGTERM)
        return out

    def validate(iteration, wall_time_s):
        seen.append((iteration, wall_time_s))
        return -float(iteration)

    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(KeyboardInterrupt) as ended:
        train(model, opt, step_then_terminate, batch_for, 100, str(tmp_path), checkpoint_every=10,
              validate=validate, validate_every=5, verbose=False)
    assert ended.value.signum == signal.SIGTERM  # the entry points exit with 128 + 15
    assert ended.value.result.iterations == 13 and ended.value.result.best_iteration == 5  # for the caller's records
    assert signal.getsignal(signal.SIGTERM) is before
    assert tf.train.latest_checkpoint(str(tmp_path / "ckpt")).endswith("ckpt-13")  # after the step it interrupted
    assert [i for i, _ in seen] == [5, 10]
    assert 0 < seen[0][1] <= seen[1][1]

    model, opt, step, batch_for = setup()  # resuming gives exactly the uninterrupted run
    train(model, opt, step, batch_for, 30, str(tmp_path), checkpoint_every=10, verbose=False)
    resumed = weights_of(model)
    model, opt, step, batch_for = setup()
    train(model, opt, step, batch_for, 30, str(tmp_path / "straight"), checkpoint_every=10, verbose=False)
    for k, v in weights_of(model).items():
        np.testing.assert_allclose(resumed[k], v, rtol=1e-6, atol=1e-7)


def test_progress_rate_switches_to_seconds_per_iteration_below_one_per_second():
    assert _format_rate(12.34) == "12.3 it/s"
    assert _format_rate(1.0) == "1.0 it/s"
    assert _format_rate(0.14) == "7.1 s/it"  # it/s would show 0.1
