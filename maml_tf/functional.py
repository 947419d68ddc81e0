"""Run any Keras 3 model with a given dictionary of weights.

This is what makes the library model-agnostic: MAML never touches a model's variables during the
inner loop. It takes the weights once as a ``dict[str, tf.Tensor]`` keyed by the Keras variable
path, computes fast weights as plain tensors, and evaluates the model on them through
``keras.Model.stateless_call``, which is differentiable under nested ``tf.GradientTape``s. A user's
own ``keras.Model`` (Sequential, functional or subclassed) works unchanged.

Non-trainable state (batch-norm moving averages) is read from the model and any update that a
forward pass in training mode computes is discarded: like the paper, the library normalises with
the statistics of the current batch (see ``call(..., training=True)``). The one exception is the
state of Keras's random-number generators (``keras.random.SeedGenerator``, held by ``Dropout``,
``GaussianNoise`` and the like): discarding its update would replay the same random numbers on every
call, so every call draws a fresh state instead (from TensorFlow's global generator, so
``keras.utils.set_random_seed`` makes runs repeatable), and each task of a ``tf.vectorized_map`` draws
its own. Dropout is on whenever ``training=True``, evaluation included.
"""

from __future__ import annotations

import inspect
import warnings
from typing import Callable, Dict

import keras
import tensorflow as tf

Weights = Dict[str, tf.Tensor]


def weight_names(model: keras.Model) -> list[str]:
    """The keys of a model's weight dictionary, in the order of ``model.trainable_variables``."""
    names = [v.path for v in model.trainable_variables]
    if len(set(names)) != len(names):
        raise ValueError(
            "The model has trainable variables with duplicate paths, so they cannot be keyed by name; "
            "give its layers unique names.")
    return names


def batch_norm_weights(model: keras.Model) -> list[str]:
    """The keys of the trainable weights of every batch-norm layer of ``model`` (offsets and scales):
    the weights that the authors' few-shot code meta-learns but leaves out of its inner loop
    (pass them as ``frozen`` to :func:`maml_tf.maml.adapt`)."""
    return [v.path for layer in model._flatten_layers(include_self=False, recursive=True)
            if isinstance(layer, keras.layers.BatchNormalization) for v in layer.trainable_variables]


def get_weights(model: keras.Model) -> Weights:
    """The model's trainable weights as a dict of tensors (read now; differentiable w.r.t. the
    model's variables when read inside a ``tf.GradientTape``)."""
    if not model.built:
        raise ValueError("The model is not built; call it once on an input (or give it an Input) first.")
    return {v.path: tf.convert_to_tensor(v) for v in model.trainable_variables}


def call(model: keras.Model, weights: Weights, inputs, training: bool = True):
    """Run ``model`` on ``inputs`` with ``weights`` in place of its trainable variables.

    ``training=True`` (the default, as in the paper) makes batch norm use the statistics of the
    current batch; the moving averages are neither used nor updated. ``training=False`` uses the
    model's stored moving averages (non-transductive evaluation).
    """
    try:
        trainable = [weights[v.path] for v in model.trainable_variables]
    except KeyError as e:
        raise KeyError(f"The weight dictionary has no entry {e}, which the model needs.") from None
    kwargs = {"training": training} if _accepts_training(model) else {}
    non_trainable = [_fresh_seed_state(v) if _is_seed_state(v) else v for v in model.non_trainable_variables]
    outputs, _ = model.stateless_call(trainable, non_trainable, inputs, **kwargs)
    return outputs


def _is_seed_state(variable) -> bool:
    """Whether ``variable`` is the state of a ``keras.random.SeedGenerator`` (Dropout's and the like)."""
    return variable.path.endswith("seed_generator_state")


def _fresh_seed_state(variable) -> tf.Tensor:
    """A new random state for a seed generator: ``stateless_call`` reads its random numbers from this value
    and returns the advanced state, which :func:`call` discards; so without a new state per call, every
    call would draw the same dropout mask."""
    dtype = tf.as_dtype(variable.dtype)
    if dtype in (tf.int32, tf.int64):
        return tf.random.uniform(variable.shape, minval=dtype.min, maxval=dtype.max, dtype=dtype)
    return tf.cast(tf.random.uniform(variable.shape, minval=0, maxval=2 ** 31 - 1, dtype=tf.int64), dtype)


def _accepts_training(model: keras.Model) -> bool:
    """Keras passes ``training`` only to models whose ``call`` takes it; so do we."""
    params = inspect.signature(model.call).parameters.values()
    return any(p.name == "training" or p.kind is inspect.Parameter.VAR_KEYWORD for p in params)


# Keras layers whose statistics come from ``keras.ops.moments`` (``tf.nn.moments``), and their exact
# drop-in replacements in :mod:`maml_tf.models`.
_INEXACT_NORMALIZATION = {
    keras.layers.BatchNormalization: "ExactBatchNormalization",
    keras.layers.LayerNormalization: "ExactLayerNormalization",
    keras.layers.GroupNormalization: "ExactGroupNormalization",
}


def warn_if_inexact_normalization(model: keras.Model) -> None:
    """Warn (once per model) when ``model`` holds ``keras.layers.BatchNormalization``,
    ``LayerNormalization`` or ``GroupNormalization``: their variance stops the gradient through the
    mean, so second-order meta-gradients through them are not exact; :mod:`maml_tf.models` has a
    drop-in replacement for each (``ExactBatchNormalization``, ...)."""
    if getattr(model, "_maml_tf_bn_checked", False):
        return
    found: Dict[type, list] = {}
    for layer in model._flatten_layers(include_self=False, recursive=True):
        if type(layer) in _INEXACT_NORMALIZATION:
            found.setdefault(type(layer), []).append(layer.name)
    for cls, names in found.items():
        exact = _INEXACT_NORMALIZATION[cls]
        warnings.warn(
            f"{model.name} uses keras.layers.{cls.__name__} ({', '.join(names)}), whose variance stops the "
            f"gradient through the mean: second-order meta-gradients through it are approximate. "
            f"maml_tf.models.{exact} is a drop-in replacement with exact ones.", stacklevel=3)
    try:
        model._maml_tf_bn_checked = True
    except AttributeError:
        pass


def make_forward(model: keras.Model, training: bool = True) -> Callable[[Weights, tf.Tensor], tf.Tensor]:
    """``forward(weights, inputs) -> outputs`` bound to ``model``: the usual argument of the loss
    builders in :mod:`maml_tf.maml`."""
    weight_names(model)  # fail early on unusable models
    warn_if_inexact_normalization(model)

    def forward(weights: Weights, inputs):
        return call(model, weights, inputs, training=training)

    return forward
