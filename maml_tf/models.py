"""The paper's networks, as ordinary Keras models (any other Keras model works with the library too).

- Sinusoid regression (paper 5.1): MLP 1 -> 40 -> 40 -> 1, ReLU.
- Few-shot classification (paper 5.2, appendix A.1; authors' code where it says more):
  4 blocks of [3x3 conv, batch norm, ReLU]. Omniglot: 64 filters, stride-2 convolutions, final
  feature map averaged. MiniImagenet: 32 filters, stride 1 followed by 2x2 max-pool, flattened.
  Batch norm has a learned offset and no learned scale (``scale=False``, as tf.contrib's default in
  the authors' code) and, used through :func:`maml_tf.functional.call` with ``training=True``,
  normalises with the statistics of the current batch (transductive, as the paper). It is
  :class:`ExactBatchNormalization`, so that second-order meta-gradients through it are exact.
- The "no conv" MLP of Table 1: 256-128-64-64, each hidden layer with batch norm and ReLU.

For users' own models, :class:`ExactLayerNormalization` and :class:`ExactGroupNormalization` do for Keras's
layer and group normalisation what :class:`ExactBatchNormalization` does for its batch norm.

The output layer's kernel starts as Keras's default (Glorot uniform) unless ``output_init="normal"``:
N(0, 1), as the authors' Omniglot conv net (``w5 = tf.Variable(tf.random_normal([64, N]))`` in
cbfinn/maml's ``maml.py``; their mini-ImageNet output layer is Glorot, their MLP truncated N(0, 0.01)).
"""

from __future__ import annotations

from typing import Sequence

import keras
import tensorflow as tf
from keras import layers

OUTPUT_INITS = ("glorot", "normal")


def _check_output_init(output_init: str) -> None:
    if output_init not in OUTPUT_INITS:
        raise ValueError(f"output_init must be one of {OUTPUT_INITS}, not {output_init!r}.")


def _output_layer(num_classes: int, output_init: str) -> layers.Dense:
    """The linear output layer; its kernel starts as Keras's default (Glorot uniform) or N(0, 1).

    Made after the layers before it, so that with the same seed their weights do not depend on
    ``output_init`` (an unseeded Keras initializer draws its seed when it is created)."""
    init = keras.initializers.RandomNormal(mean=0.0, stddev=1.0) if output_init == "normal" else "glorot_uniform"
    return layers.Dense(num_classes, kernel_initializer=init, name="logits")


def exact_moments(x: tf.Tensor, axes, keepdims: bool = True) -> tuple:
    """``mean(x)`` and ``mean((x - mean(x))^2)`` over ``axes``, with no gradient stopped anywhere: what
    ``tf.nn.moments`` (behind ``keras.ops.moments``) computes, minus its stop on the mean inside the variance."""
    mean = tf.reduce_mean(x, axes, keepdims=True)
    variance = tf.reduce_mean(tf.square(x - mean), axes, keepdims=True)
    if not keepdims:
        mean, variance = tf.squeeze(mean, axes), tf.squeeze(variance, axes)
    return mean, variance


@keras.saving.register_keras_serializable(package="maml_tf")
class ExactBatchNormalization(layers.BatchNormalization):
    """``keras.layers.BatchNormalization`` whose batch statistics have exact higher derivatives.

    Keras computes the batch variance with ``tf.nn.moments``, which stops the gradient through the
    mean inside the variance. That leaves values and first derivatives unchanged (the derivative of
    the variance with respect to the mean is zero at the mean) but not second derivatives, so the
    second-order MAML meta-gradient of a network with Keras batch norm is not the gradient of the
    meta-objective (against central finite differences it is off by 2% after one inner step and 14%
    after two on a small network; ``tests/test_maml_core.py``). This layer computes
    ``mean(x)`` and ``mean((x - mean(x))^2)`` without the stop: same values, same weights and
    checkpoints, exact meta-gradients. Use it in place of Keras's layer in models meta-trained with
    second-order MAML.
    """

    def _moments(self, inputs, mask):
        if mask is not None or self.synchronized:  # Keras's masked and synchronized moments: left to Keras
            return super()._moments(inputs, mask)
        return exact_moments(inputs, list(self._reduction_axes), keepdims=False)


def _at_least_float32(x) -> tf.Tensor:
    """Normalisation statistics in float32 at least (half precision overflows), as Keras's layers do."""
    x = tf.convert_to_tensor(x)
    return tf.cast(x, tf.float32) if x.dtype in (tf.float16, tf.bfloat16) else x


@keras.saving.register_keras_serializable(package="maml_tf")
class ExactLayerNormalization(layers.LayerNormalization):
    """``keras.layers.LayerNormalization`` with exact higher derivatives (see
    :class:`ExactBatchNormalization`: Keras computes its variance with ``keras.ops.moments``, i.e.
    ``tf.nn.moments``, which stops the gradient through the mean). Same values, weights and checkpoints;
    the deprecated ``rms_scaling=True`` has no mean to stop and is left to Keras."""

    def call(self, inputs):
        if self.rms_scaling:
            return super().call(inputs)
        x = _at_least_float32(inputs)
        rank = x.shape.rank
        axes = sorted(a % rank for a in self.axis)
        mean, variance = exact_moments(x, axes)
        shape = [x.shape[d] if d in axes else 1 for d in range(rank)]  # gamma and beta over the normalised axes
        scale = tf.math.rsqrt(variance + self.epsilon)
        if self.gamma is not None:
            scale = scale * tf.reshape(tf.cast(self.gamma.value, x.dtype), shape)
        outputs = (x - mean) * scale
        if self.beta is not None:
            outputs = outputs + tf.reshape(tf.cast(self.beta.value, x.dtype), shape)
        return tf.cast(outputs, self.compute_dtype)


@keras.saving.register_keras_serializable(package="maml_tf")
class ExactGroupNormalization(layers.GroupNormalization):
    """``keras.layers.GroupNormalization`` with exact higher derivatives (its statistics come from
    ``keras.ops.moments`` too; see :class:`ExactBatchNormalization`). Same values, weights and checkpoints."""

    def call(self, inputs):
        x = _at_least_float32(inputs)
        rank = x.shape.rank
        axis = self.axis % rank
        channels = x.shape[axis]
        dynamic = tf.shape(x)
        dims = [x.shape[d] if x.shape[d] is not None else dynamic[d] for d in range(rank)]
        # [..., C, ...] -> [..., groups, C / groups, ...]: statistics per example and group
        grouped = tf.reshape(x, dims[:axis] + [self.groups, channels // self.groups] + dims[axis + 1:])
        axes = [d for d in range(1, rank + 1) if d != axis]
        mean, variance = exact_moments(grouped, axes)
        outputs = tf.reshape((grouped - mean) * tf.math.rsqrt(variance + self.epsilon), dynamic)
        shape = [channels if d == axis else 1 for d in range(rank)]  # gamma and beta per channel
        if self.scale:
            outputs = outputs * tf.reshape(tf.cast(self.gamma.value, x.dtype), shape)
        if self.center:
            outputs = outputs + tf.reshape(tf.cast(self.beta.value, x.dtype), shape)
        return tf.cast(outputs, self.compute_dtype)


def mlp_regressor(input_dim: int = 1, hidden: Sequence[int] = (40, 40), output_dim: int = 1,
                  name: str = "mlp") -> keras.Model:
    """The sinusoid network (and, with ``input_dim=3``, the oracle that also sees amplitude and phase)."""
    inputs = keras.Input((input_dim,), name="x")
    h = inputs
    for i, units in enumerate(hidden):
        h = layers.Dense(units, activation="relu", name=f"hidden{i}")(h)
    outputs = layers.Dense(output_dim, name="out")(h)
    return keras.Model(inputs, outputs, name=name)


def conv_classifier(num_classes: int, image_shape=(28, 28, 1), filters: int = 64, blocks: int = 4,
                    downsample: str = "stride", name: str = "convnet", output_init: str = "glorot") -> keras.Model:
    """4 x [conv 3x3, BN, ReLU]; ``downsample="stride"`` (Omniglot: stride-2 convs, global average)
    or ``"maxpool"`` (MiniImagenet: stride 1, 2x2 max-pool, flatten)."""
    if downsample not in ("stride", "maxpool"):
        raise ValueError(f"downsample must be 'stride' or 'maxpool', not {downsample!r}.")
    _check_output_init(output_init)
    inputs = keras.Input(tuple(image_shape), name="image")
    h = inputs
    for i in range(blocks):
        stride = 2 if downsample == "stride" else 1
        h = layers.Conv2D(filters, 3, strides=stride, padding="same", name=f"conv{i}")(h)
        h = ExactBatchNormalization(scale=False, epsilon=1e-3, name=f"bn{i}")(h)
        h = layers.ReLU(name=f"relu{i}")(h)
        if downsample == "maxpool":
            h = layers.MaxPooling2D(2, name=f"pool{i}")(h)
    if downsample == "stride":
        h = layers.GlobalAveragePooling2D(name="avg")(h)
    else:
        h = layers.Flatten(name="flatten")(h)
    outputs = _output_layer(num_classes, output_init)(h)
    return keras.Model(inputs, outputs, name=name)


def omniglot_conv(num_classes: int, output_init: str = "glorot") -> keras.Model:
    """The paper's Omniglot network, for 28x28 grey images (``conv_classifier`` takes other shapes)."""
    return conv_classifier(num_classes, (28, 28, 1), filters=64, downsample="stride", name="omniglot_conv",
                           output_init=output_init)


def miniimagenet_conv(num_classes: int, output_init: str = "glorot") -> keras.Model:
    """The paper's MiniImagenet network, for 84x84 colour images."""
    return conv_classifier(num_classes, (84, 84, 3), filters=32, downsample="maxpool", name="miniimagenet_conv",
                           output_init=output_init)


def mlp_classifier(num_classes: int, image_shape=(28, 28, 1), hidden: Sequence[int] = (256, 128, 64, 64),
                   name: str = "omniglot_mlp", output_init: str = "glorot") -> keras.Model:
    """Table 1's "MAML, no conv": flattened image, hidden layers with BN and ReLU, linear output."""
    _check_output_init(output_init)
    inputs = keras.Input(tuple(image_shape), name="image")
    h = layers.Flatten(name="flatten")(inputs)
    for i, units in enumerate(hidden):
        h = layers.Dense(units, name=f"fc{i}")(h)
        h = ExactBatchNormalization(scale=False, epsilon=1e-3, name=f"bn{i}")(h)
        h = layers.ReLU(name=f"relu{i}")(h)
    outputs = _output_layer(num_classes, output_init)(h)
    return keras.Model(inputs, outputs, name=name)
