"""The Gaussian MLP policy of the MAML RL experiments, and the diagonal-Gaussian formulas around it.

Policy (paper appendix A.2, authors' code where it says more): observation -> 100 ReLU -> 100 ReLU ->
linear mean mu(s); a state-independent, learned log standard deviation (a trainable vector of the
model, initialised to log(1.0)); a ~ N(mu(s), diag(exp(log_std))^2). Hidden and mean kernels use
Glorot-uniform initialisation and zero biases (as the authors' xavier initialiser).

The model is an ordinary Keras model with two outputs, ``[mean, log_std]`` (``log_std`` broadcast to
the batch), so everything in :mod:`maml_tf` runs it with weight dictionaries: :func:`distribution`
evaluates it with given weights through :func:`maml_tf.functional.call`, and ``maml_tf.maml.adapt``
computes fast weights for it like for any other model.

Formulas, for a k-dimensional diagonal Gaussian with mean mu and log standard deviation l:

    log pi(a)          = sum_j [ -(a_j - mu_j)^2 / (2 exp(2 l_j)) - l_j - log(2 pi) / 2 ]
    entropy            = sum_j [ l_j + log(2 pi e) / 2 ]
    KL(p0 || p1)       = sum_j [ l1_j - l0_j + (exp(2 l0_j) + (mu0_j - mu1_j)^2) / (2 exp(2 l1_j)) - 1/2 ]

Acting: :func:`make_policy_fn` builds the ``policy_fn`` that :class:`rl.sampler.Sampler` calls once per
time step with observations ``[M, R, obs_dim]``. Shared weights (one policy for all tasks) run as one
batch; per-task (fast) weights, stacked along a leading task axis, run in ONE compiled call per time
step that vectorizes over the task axis (``tf.vectorized_map``, i.e. batched matrix products). The
Gaussian noise comes from a seeded numpy generator, so rollouts are reproducible.
"""

from __future__ import annotations

import math
from typing import Sequence

import keras
import numpy as np
import tensorflow as tf

from maml_tf.functional import Weights, call

LOG_2PI = math.log(2.0 * math.pi)
MIN_LOG_STD = math.log(1e-6)  # as the authors' policy: the standard deviation never drops below 1e-6


class LogStd(keras.layers.Layer):
    """A state-independent log standard deviation: a trainable vector, broadcast to the batch of its
    input (the mean)."""

    def __init__(self, init_std: float = 1.0, **kwargs):
        super().__init__(**kwargs)
        if not init_std > 0:
            raise ValueError(f"init_std must be positive, got {init_std}.")
        self.init_std = float(init_std)

    def build(self, input_shape):
        self.log_std = self.add_weight(shape=(input_shape[-1],), name="log_std",
                                       initializer=keras.initializers.Constant(math.log(self.init_std)))

    def call(self, mean):
        return keras.ops.zeros_like(mean) + self.log_std

    def get_config(self):
        return {**super().get_config(), "init_std": self.init_std}


def gaussian_mlp_policy(obs_dim: int, act_dim: int, hidden: Sequence[int] = (100, 100), init_std: float = 1.0,
                        seed: int | None = None, dtype: str = "float32", name: str = "policy",
                        activation: str = "relu") -> keras.Model:
    """The paper's policy network: ``model(obs) -> [mean, log_std]``, both ``[batch, act_dim]``.
    ``activation`` of the hidden layers: ReLU as the paper (``"tanh"`` is what the authors' policy class
    defaults to, e.g. for the random initialisation of their 2D-navigation test script)."""
    obs = keras.Input((obs_dim,), name="obs", dtype=dtype)
    h = obs
    for i, units in enumerate(hidden):
        h = keras.layers.Dense(units, activation=activation, dtype=dtype, name=f"hidden{i}",
                               kernel_initializer=keras.initializers.GlorotUniform(
                                   None if seed is None else seed + i))(h)
    mean = keras.layers.Dense(act_dim, dtype=dtype, name="mean",
                              kernel_initializer=keras.initializers.GlorotUniform(
                                  None if seed is None else seed + len(hidden)))(h)
    log_std = LogStd(init_std, dtype=dtype, name="log_std")(mean)
    return keras.Model(obs, [mean, log_std], name=name)


# ------------------------------------------------------------------------------------------------
# Distribution


def distribution(model: keras.Model, weights: Weights, obs) -> tuple[tf.Tensor, tf.Tensor]:
    """``(mean, log_std)`` of the policy with ``weights`` at observations ``[..., obs_dim]``."""
    obs = tf.convert_to_tensor(obs)
    flat = tf.reshape(obs, (-1, obs.shape[-1]))
    mean, log_std = call(model, weights, flat)
    shape = tf.concat([tf.shape(obs)[:-1], tf.shape(mean)[-1:]], 0)
    return tf.reshape(mean, shape), tf.reshape(tf.maximum(log_std, MIN_LOG_STD), shape)


def log_likelihood(actions, mean, log_std) -> tf.Tensor:
    """log pi(a | s) of a diagonal Gaussian, summed over the action dimensions: ``[...]``."""
    z = (tf.cast(actions, mean.dtype) - mean) * tf.exp(-log_std)
    return tf.reduce_sum(-0.5 * tf.square(z) - log_std, axis=-1) - 0.5 * LOG_2PI * mean.shape[-1]


def entropy(log_std) -> tf.Tensor:
    """Entropy of a diagonal Gaussian: ``[...]``."""
    return tf.reduce_sum(log_std, axis=-1) + 0.5 * (LOG_2PI + 1.0) * log_std.shape[-1]


def kl_divergence(mean0, log_std0, mean1, log_std1) -> tf.Tensor:
    """KL(N(mean0, std0) || N(mean1, std1)) of diagonal Gaussians, summed over dimensions: ``[...]``."""
    var0, var1 = tf.exp(2.0 * log_std0), tf.exp(2.0 * log_std1)
    return tf.reduce_sum(log_std1 - log_std0 + (var0 + tf.square(mean0 - mean1)) / (2.0 * var1) - 0.5, axis=-1)


# ------------------------------------------------------------------------------------------------
# Acting


def stack_weights(weights: Weights, num_tasks: int) -> Weights:
    """Shared weights repeated along a new leading task axis (the layout of per-task weights)."""
    return {k: tf.repeat(tf.convert_to_tensor(v)[None], num_tasks, axis=0) for k, v in weights.items()}


def make_policy_fn(model: keras.Model):
    """``policy_fn(weights, rng, per_task) -> fn(obs [M, R, d]) -> actions [M, R, k]`` for the sampler.

    ``per_task=False``: ``weights`` are the model's (shared by all tasks). ``per_task=True``: every
    entry of ``weights`` has a leading task axis of size M (e.g. from ``tf.vectorized_map`` over
    ``adapt``), and task m's rollouts act with slice m. Either way one compiled call per time step
    computes ``mean + exp(log_std) * noise`` for all M * R environments, with the noise drawn from
    ``rng.standard_normal``. The weights are copied into variables that the compiled functions read
    (one set per layout and number of tasks), so a call passes nothing but the observations and the
    noise: the per-step overhead stays well below the physics' time.
    """
    dtype = tf.as_dtype(model.inputs[0].dtype)
    acting: dict = {}  # (per_task, shape of the first weight) -> (variables, compiled function)

    def compiled(weights: Weights, per_task: bool):
        key = (per_task, tuple(next(iter(weights.values())).shape))
        if key not in acting:
            variables = {k: tf.Variable(tf.zeros(v.shape, dtype), trainable=False) for k, v in weights.items()}

            def sample(w, obs, noise):
                mean, log_std = distribution(model, w, obs)
                return mean + tf.exp(log_std) * noise

            if per_task:
                fn = tf.function(lambda obs, noise: tf.vectorized_map(
                    lambda x: sample(x[0], x[1], x[2]),
                    ({k: v.read_value() for k, v in variables.items()}, obs, noise)))
            else:
                fn = tf.function(lambda obs, noise: sample(
                    {k: v.read_value() for k, v in variables.items()}, obs, noise))
            acting[key] = (variables, fn)
        variables, fn = acting[key]
        for k, v in variables.items():
            v.assign(tf.cast(weights[k], dtype))
        return fn

    def policy_fn(weights: Weights, rng: np.random.Generator, per_task: bool = False):
        fn = compiled(weights, per_task)
        concretes = {}
        act_dim = model.outputs[0].shape[-1]
        np_dtype = dtype.as_numpy_dtype

        def act(obs):
            obs = np.asarray(obs, dtype=np_dtype)
            noise = rng.standard_normal(obs.shape[:-1] + (act_dim,)).astype(np_dtype, copy=False)
            concrete = concretes.get(obs.shape)
            if concrete is None:  # calling the traced graph directly skips tf.function's dispatch (~0.6 ms a call)
                concrete = concretes[obs.shape] = fn.get_concrete_function(
                    tf.TensorSpec(obs.shape, dtype), tf.TensorSpec(noise.shape, dtype))
            return concrete(tf.constant(obs), tf.constant(noise)).numpy()

        return act

    return policy_fn
