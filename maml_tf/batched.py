"""The batched layout: tasks folded into one batch, each with its own (fast) weights.

The reference layouts (:func:`maml_tf.maml.per_task`) run the inner loop once per task, through the
Keras model: ``"loop"`` unrolls the tasks into one graph (hundreds of small ops per task, and a graph
that grows with tasks x inner steps: minutes to compile for the Omniglot settings), and
``"vectorized"`` cannot help with convolutions: ``tf.vectorized_map``'s converter for
``Conv2DBackpropFilter`` with per-task inputs falls back to a ``while_loop`` (slower than the loop).
This module instead runs *all* tasks of a meta-batch as one network whose weights carry a task axis:

- convolutions become **grouped convolutions**: activations are kept as ``[N, H, W, T*C]`` (the
  examples of one task along the batch axis, the tasks side by side along the channels), the kernel
  of every task is packed into ``[kh, kw, C, T*O]``, and ``tf.nn.conv2d`` with ``C`` input channels
  per group computes the T convolutions in one op (its gradients, and theirs, are grouped
  convolutions again, so the second-order meta-gradient stays batched);
- batch norm over ``[N, H, W, T*C]`` normalises each task's channels with that task's own batch
  statistics, exactly as the per-task model does;
- dense layers are batched matrix products ``[T, N, D] @ [T, D, O]``.

The per-task losses are independent, so the gradient of their *sum* with respect to the packed weights
is every task's own inner gradient; one ``GradientTape`` serves all tasks, and the meta-gradient flows
back to the shared weights through the packing (a ``tile``, whose gradient sums over tasks).

The fast path interprets the model layer by layer and supports chains of Conv2D, Dense,
BatchNormalization, ReLU/Activation (element-wise), Max/AveragePooling2D, GlobalAverage/MaxPooling2D
and Flatten, which covers every network of the paper (:mod:`maml_tf.models`). Anything else (or a
task loss not built by :func:`supervised_loss`) runs on the model-agnostic ``vectorized`` layout.
``tests/test_batched.py`` checks that both give the same loss and meta-gradient.

The computation follows the Keras layers op for op, so values *and* second-order gradients agree
with the reference layouts. This matters for batch norm: Keras's ``BatchNormalization`` computes the
statistics with ``tf.nn.moments``, whose variance holds a ``stop_gradient`` on the mean. First
derivatives are unaffected, but second derivatives taken through it are not those of the function
(so the second-order meta-gradient is approximate, and details that are exact no-ops in value, like a
convolution bias feeding batch norm, still change it). The paper's networks use
:class:`maml_tf.models.ExactBatchNormalization`, whose statistics are exact; the batched layout computes
each layer's statistics the way the layer does.

Speed (``benchmarks/meta_step.py``; its measurements, with date, machine and commit, are in
``results/benchmarks/meta_step.jsonl``, and the README's results table has the current ratios): at
Omniglot 5-way 1-shot (32 tasks, 1 inner step, second order) the batched layout is faster than the plain
per-task loop (1.83x on 2026-12-01), compiles in seconds instead of a minute and peaks at about half its
memory; at 20-way 1-shot (16 tasks, 5 inner steps) it is about as fast as the loop (0.94x) but compiles
in 15 s instead of about 3 min and needs less memory; from 5 shots the loop is faster (the entry points'
presets take it there). Batching does not reduce the arithmetic (about 5.0 GMAC per 5-way 1-shot
iteration: forward, inner gradient, query pass and the second-order backward pass;
``benchmarks/arithmetic.py`` counts it), and the step runs it well below the rate a large matrix
product reaches on the same two cores (``benchmarks/meta_step.py`` measures both in one run and reports
the floor they imply). What is left is the efficiency of oneDNN's grouped convolutions and their gradients
at these small per-task shapes (about 70% of the op time in a profile; batch norm's reductions and
element-wise ops most of the rest). Formulations by image patches and batched matrix products were
slower (the patch extraction and its gradient are memory-bound ops in TensorFlow), with or without XLA;
XLA on the grouped convolutions is 30x slower.

Batch norm without transduction: ``supervised_loss(..., transductive=False)`` normalises every query
example with the statistics of the task's *support* batch (computed with the same fast weights) instead
of the query batch, so each query prediction depends only on the support set and on that example.

bfloat16: ``supervised_loss(..., compute_dtype="bfloat16")`` runs the convolutions and matrix products
(and their gradients of every order) on bfloat16 copies of their inputs and weights, everything else in
float32. The meta-gradient is then a noisy estimate of float32's (``tests/test_bfloat16.py``); on a
machine with AVX512_BF16 it made the whole step only 3-8% faster (README), so float32 is the default; on
CPUs without AVX-512, where oneDNN runs no bfloat16 grouped convolutions, it is refused
(:func:`grouped_conv_problem`).
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import logging
from typing import Callable, Collection, Dict, List, Optional, Tuple

import keras
import tensorflow as tf

from maml_tf.functional import Weights, call, warn_if_inexact_normalization
from maml_tf.maml import LearningRate, TaskLoss, inner_update, step_size
from maml_tf.models import ExactBatchNormalization, exact_moments

log = logging.getLogger(__name__)

# Element-wise activations: they act on any layout.
_ELEMENTWISE = {
    "linear": lambda x: x, "relu": tf.nn.relu, "tanh": tf.tanh, "sigmoid": tf.sigmoid, "elu": tf.nn.elu,
    "selu": tf.nn.selu, "softplus": tf.nn.softplus, "softsign": tf.nn.softsign, "swish": tf.nn.silu,
    "silu": tf.nn.silu, "relu6": tf.nn.relu6, "exponential": tf.exp,
}


class Unsupported(ValueError):
    """The model cannot run on the fast path (the reason is the message)."""


# ----------------------------------------------------------------------------------------------
# Interpreting a model


@dataclasses.dataclass(frozen=True)
class _Op:
    kind: str  # conv, dense, bn, act, pool, gpool, flatten
    name: str
    config: dict
    weights: dict  # role -> weight path (kernel, bias, gamma, beta)
    state: dict = dataclasses.field(default_factory=dict)  # role -> non-trainable variable (moving stats)


def _chain(model: keras.Model) -> List[keras.layers.Layer]:
    """The model's layers in order, if it is a plain chain (one input, each layer feeding the next)."""
    if isinstance(model, keras.Sequential):
        return [layer for layer in model.layers if not isinstance(layer, keras.layers.InputLayer)]
    if not isinstance(getattr(model, "inputs", None), list) or len(model.inputs) != 1 or len(model.outputs) != 1:
        raise Unsupported(f"{model.name} is not a single-input, single-output functional or Sequential model")
    layers = list(model.layers)
    if not layers or not isinstance(layers[0], keras.layers.InputLayer):
        raise Unsupported(f"{model.name} does not start with its Input")
    try:
        previous = layers[0]._inbound_nodes[0].output_tensors[0]
        for layer in layers[1:]:
            nodes = layer._inbound_nodes
            if len(nodes) != 1 or len(nodes[0].input_tensors) != 1 or nodes[0].input_tensors[0] is not previous:
                raise Unsupported(f"{model.name} is not a plain chain of layers (at {layer.name})")
            previous = nodes[0].output_tensors[0]
        if previous is not model.outputs[0]:
            raise Unsupported(f"{model.name}'s output is not its last layer's")
    except (AttributeError, IndexError) as e:
        raise Unsupported(f"cannot read the layer graph of {model.name} ({e})") from None
    return layers[1:]


def _activation(layer, fn) -> str:
    name = getattr(fn, "__name__", None)
    if name not in _ELEMENTWISE:
        raise Unsupported(f"{layer.name}: activation {name!r} is not element-wise-supported")
    return name


_grouped_conv_problem: Dict[Tuple[str, str], Optional[str]] = {}


def grouped_conv_problem(dtype: str = "float32") -> Optional[str]:
    """None if TensorFlow runs grouped convolutions and their second derivatives here in ``dtype``, else why not.

    The batched layout's convolutions are grouped (one group per task). On CPUs, TensorFlow runs them
    only through oneDNN, which it turns on by default only on some processors (with AVX-512, say);
    elsewhere ``TF_ENABLE_ONEDNN_OPTS=1`` must be set before TensorFlow is imported (the experiments and
    benchmarks set it). In bfloat16, oneDNN runs their gradients only on some processors even then (not
    on one without AVX-512). This probes a tiny grouped convolution with a bias and ReLU, first and
    second derivatives, inside ``tf.function`` (where graph rewrites fuse the bias), once per device and dtype.
    """
    device = "GPU" if tf.config.list_logical_devices("GPU") else "CPU"  # where the convolutions would run
    key = (device, dtype)
    if key not in _grouped_conv_problem:
        if tf.executing_eagerly():
            _grouped_conv_problem[key] = _probe_grouped_conv(device, dtype)
        else:  # called while a tf.function is traced: probe eagerly in a thread of its own (not under init_scope,
            # which pauses gradient tapes)
            with concurrent.futures.ThreadPoolExecutor(1) as pool:
                _grouped_conv_problem[key] = pool.submit(_probe_grouped_conv, device, dtype).result()
    return _grouped_conv_problem[key]


def _probe_grouped_conv(device: str, dtype: str) -> Optional[str]:
    """The message of :func:`grouped_conv_problem` (run eagerly)."""
    x = tf.cast(tf.reshape(tf.range(2 * 5 * 5 * 4, dtype=tf.float32) / 100.0, [2, 5, 5, 4]), dtype)
    k = tf.cast(tf.reshape(tf.cos(tf.range(3 * 3 * 2 * 4, dtype=tf.float32)), [3, 3, 2, 4]), dtype)
    b = tf.fill([4], tf.constant(0.1, dtype))

    @tf.function
    def second_derivatives(x, k, b):
        with tf.GradientTape() as outer:
            outer.watch([x, k, b])
            with tf.GradientTape() as inner:
                inner.watch([k, b])
                h = tf.nn.relu(tf.nn.bias_add(tf.nn.conv2d(x, k, 1, "SAME"), b))
                loss = tf.reduce_sum(tf.square(tf.nn.conv2d(h, k, 2, "SAME")))
            gk, gb = inner.gradient(loss, [k, b])
            norm = tf.reduce_sum(tf.square(gk)) + tf.reduce_sum(tf.square(gb))
        return outer.gradient(norm, [x, k, b])

    try:
        second_derivatives(x, k, b)
        return None
    except tf.errors.OpError as e:
        lines = [ln.strip() for ln in e.message.splitlines()
                 if ln.strip() and not ln.strip().startswith(("[[", "File"))]
        said = next((ln for ln in lines if "group" in ln.lower()), lines[-1] if lines else type(e).__name__)
        if dtype != "float32" and grouped_conv_problem("float32") is None:
            return (f"this TensorFlow cannot run grouped convolutions and their gradients in {dtype} on this {device} "
                    f"({said}); use float32 here")
        return (f"this TensorFlow cannot run grouped convolutions and their gradients on {device} ({said}); on a "
                f"CPU, set TF_ENABLE_ONEDNN_OPTS=1 before TensorFlow is imported")


def _parse(model: keras.Model, compute_dtype: str = "float32") -> List[_Op]:
    if model.dtype_policy.compute_dtype != "float32":
        raise Unsupported(f"{model.name} does not compute in float32")
    ops: List[_Op] = []
    L = keras.layers
    for layer in _chain(model):
        cfg = layer.get_config()
        if isinstance(layer, L.Conv2D) and type(layer) is L.Conv2D:
            if cfg["data_format"] != "channels_last" or tuple(cfg["dilation_rate"]) != (1, 1) or cfg["groups"] != 1:
                raise Unsupported(f"{layer.name}: only channels_last, undilated, ungrouped convolutions")
            problem = grouped_conv_problem(compute_dtype)
            if problem:
                raise Unsupported(f"{layer.name}: {problem}")
            weights = {"kernel": layer.kernel.path}
            if cfg["use_bias"]:
                weights["bias"] = layer.bias.path
            ops.append(_Op("conv", layer.name, {"strides": tuple(cfg["strides"]), "padding": cfg["padding"].upper(),
                                                "activation": _activation(layer, layer.activation)}, weights))
        elif type(layer) is L.Dense:
            weights = {"kernel": layer.kernel.path}
            if cfg["use_bias"]:
                weights["bias"] = layer.bias.path
            ops.append(_Op("dense", layer.name, {"activation": _activation(layer, layer.activation)}, weights))
        elif type(layer) in (L.BatchNormalization, ExactBatchNormalization):
            axis = cfg["axis"] if isinstance(cfg["axis"], int) else (cfg["axis"][0] if len(cfg["axis"]) == 1 else None)
            if axis not in (-1, len(layer.input.shape) - 1) or cfg["renorm"] or cfg["synchronized"]:
                raise Unsupported(f"{layer.name}: only batch norm over the last axis, without renorm")
            weights = {}
            if cfg["scale"]:
                weights["gamma"] = layer.gamma.path
            if cfg["center"]:
                weights["beta"] = layer.beta.path
            ops.append(_Op("bn", layer.name, {"epsilon": float(cfg["epsilon"]),
                                              "exact": type(layer) is ExactBatchNormalization}, weights,
                           {"moving_mean": layer.moving_mean, "moving_variance": layer.moving_variance}))
        elif type(layer) is L.ReLU:
            if cfg["max_value"] is not None or cfg["negative_slope"] or cfg["threshold"]:
                raise Unsupported(f"{layer.name}: only the plain ReLU")
            ops.append(_Op("act", layer.name, {"activation": "relu"}, {}))
        elif type(layer) is L.Activation:
            ops.append(_Op("act", layer.name, {"activation": _activation(layer, layer.activation)}, {}))
        elif type(layer) in (L.MaxPooling2D, L.AveragePooling2D):
            if cfg["data_format"] != "channels_last":
                raise Unsupported(f"{layer.name}: only channels_last pooling")
            ops.append(_Op("pool", layer.name, {"max": type(layer) is L.MaxPooling2D,
                                                "size": tuple(cfg["pool_size"]), "strides": tuple(cfg["strides"]),
                                                "padding": cfg["padding"].upper()}, {}))
        elif type(layer) in (L.GlobalAveragePooling2D, L.GlobalMaxPooling2D):
            if cfg["data_format"] != "channels_last" or cfg.get("keepdims"):
                raise Unsupported(f"{layer.name}: only channels_last global pooling without keepdims")
            ops.append(_Op("gpool", layer.name, {"max": type(layer) is L.GlobalMaxPooling2D}, {}))
        elif type(layer) is L.Flatten:
            ops.append(_Op("flatten", layer.name, {}, {}))
        else:
            raise Unsupported(f"layer {layer.name} ({type(layer).__name__}) is not supported by the batched layout")
    return ops


def why_unsupported(model: keras.Model) -> Optional[str]:
    """None if :class:`BatchedNet` can run ``model``, else the reason."""
    try:
        BatchedNet(model)
    except Unsupported as e:
        return str(e)
    return None


COMPUTE_DTYPES = ("float32", "bfloat16")


class BatchedNet:
    """Runs a supported Keras model on ``T`` tasks at once, each with its own weights.

    ``pack(weights, T)`` turns the shared weight dict into packed per-task weights (all tasks equal);
    ``forward(packed, x)`` maps inputs ``[T, N, ...]`` to outputs ``[T, N, ...]``; ``unpack`` gives
    ``{path: [T, ...]}`` for inspection. Packed weights are plain tensors in a layout private to this
    class (grouped-convolution kernels ``[kh, kw, C, T*O]``, channel vectors ``[T*C]``, dense kernels
    ``[T, D, O]``); gradients with respect to them are per-task gradients in the same layout.
    """

    def __init__(self, model: keras.Model, training: bool = True, compute_dtype: str = "float32"):
        self.model = model
        self.training = training
        if compute_dtype not in COMPUTE_DTYPES:
            raise ValueError(f"compute_dtype must be one of {COMPUTE_DTYPES}, got {compute_dtype!r}.")
        self.compute_dtype = tf.as_dtype(compute_dtype)
        self.ops = _parse(model, compute_dtype)
        inputs = getattr(model, "inputs", None)
        self.input_shape = tuple(inputs[0].shape[1:]) if inputs else None
        self._shapes = {v.path: tuple(v.shape) for v in model.trainable_variables}
        # Which packing each weight needs: "channels" for weights of layers acting on image
        # activations [N, H, W, T*C] (tiled along their last axis), "tasks" for those acting on
        # [T, N, D] (a leading task axis, broadcast to [T, 1, D] for vectors).
        self._packing: Dict[str, str] = {}
        spatial = self.input_shape is not None and len(self.input_shape) == 3
        for op in self.ops:
            if op.kind == "flatten" or op.kind == "gpool":
                spatial = False
            if op.kind == "conv" and not spatial:
                raise Unsupported(f"{op.name}: a convolution needs image inputs [H, W, C]")
            if op.kind == "dense" and spatial:
                raise Unsupported(f"{op.name}: a dense layer on image activations is not supported; flatten first")
            if op.kind == "pool" and not spatial:
                raise Unsupported(f"{op.name}: pooling needs image activations")
            for path in op.weights.values():
                self._packing[path] = "channels" if spatial else "tasks"
        for path in self._shapes:
            if path not in self._packing:
                raise Unsupported(f"{model.name} has a trainable weight {path} outside the supported layers")

    # -- weights ---------------------------------------------------------------------------------

    def pack(self, weights: Weights, num_tasks: int) -> Weights:
        out = {}
        for path, kind in self._packing.items():
            w = tf.convert_to_tensor(weights[path])
            if kind == "channels":
                out[path] = tf.tile(w, [1] * (w.shape.rank - 1) + [num_tasks])
            elif w.shape.rank == 1:
                out[path] = tf.tile(w[None, None, :], [num_tasks, 1, 1])
            else:
                out[path] = tf.tile(w[None], [num_tasks] + [1] * w.shape.rank)
        return out

    def unpack(self, packed: Weights, num_tasks: int) -> Weights:
        out = {}
        for path, kind in self._packing.items():
            w = packed[path]
            if kind == "channels":
                shape = w.shape.as_list()
                w = tf.reshape(w, shape[:-1] + [num_tasks, shape[-1] // num_tasks])
                w = tf.transpose(w, [w.shape.rank - 2] + list(range(w.shape.rank - 2)) + [w.shape.rank - 1])
            elif len(self._shapes[path]) == 1:
                w = w[:, 0, :]
            out[path] = w
        return out

    # -- forward ---------------------------------------------------------------------------------

    def forward(self, packed: Weights, x, stats_examples: Optional[int] = None):
        """Outputs ``[T, N, ...]`` for inputs ``x`` ``[T, N, ...]`` with per-task packed weights.

        ``stats_examples``: batch norm normalises with the statistics of the first
        ``stats_examples`` examples of each task (the support set, when ``x`` is support and query
        concatenated) instead of all ``N`` (in training mode; ignored with ``training=False``).
        """
        x = tf.convert_to_tensor(x)
        if x.dtype != tf.float32:
            x = tf.cast(x, tf.float32)
        num_tasks, n = x.shape[0], x.shape[1]
        if num_tasks is None or n is None:
            raise ValueError("The batched layout needs static numbers of tasks and examples per task.")
        # layouts: "input" [T, N, H, W, C] (not yet grouped), "image" [N, H, W, T*C], "flat" [T, N, D]
        if x.shape.rank == 5:
            h, layout = x, "input"
        elif x.shape.rank == 3:
            h, layout = x, "flat"
        else:
            raise ValueError(f"The batched layout takes inputs [tasks, examples, ...] of rank 3 or 5, got {x.shape}.")
        expected = self.input_shape
        if expected is not None and any(e is not None and e != d for e, d in zip(expected, x.shape[2:])):
            raise ValueError(f"{self.model.name} takes examples of shape {expected}, got {tuple(x.shape[2:])} "
                             f"(inputs [tasks, examples, ...] of shape {tuple(x.shape)}).")
        for op in self.ops:
            if op.kind == "conv":
                if layout == "input":
                    h = tf.reshape(tf.transpose(h, [1, 2, 3, 0, 4]), [n, h.shape[2], h.shape[3], -1])
                    layout = "image"
                h = self._product(lambda a, k: tf.nn.conv2d(a, k, op.config["strides"], op.config["padding"]),
                                  h, packed[op.weights["kernel"]])
                if "bias" in op.weights:
                    h = tf.nn.bias_add(h, packed[op.weights["bias"]])
                h = _ELEMENTWISE[op.config["activation"]](h)
            elif op.kind == "dense":
                if layout == "input":
                    raise ValueError(f"{op.name}: a dense layer on image inputs; flatten first")
                h = self._product(tf.matmul, h, packed[op.weights["kernel"]])
                if "bias" in op.weights:
                    h = h + packed[op.weights["bias"]]
                h = _ELEMENTWISE[op.config["activation"]](h)
            elif op.kind == "bn":
                h = self._batch_norm(op, packed, h, layout, num_tasks, stats_examples)
            elif op.kind == "act":
                h = _ELEMENTWISE[op.config["activation"]](h)
            elif op.kind == "pool":
                if layout == "input":
                    h = tf.reshape(tf.transpose(h, [1, 2, 3, 0, 4]), [n, h.shape[2], h.shape[3], -1])
                    layout = "image"
                pool = tf.nn.max_pool2d if op.config["max"] else tf.nn.avg_pool2d
                h = pool(h, op.config["size"], op.config["strides"], op.config["padding"])
            elif op.kind == "gpool":
                reduce = tf.reduce_max if op.config["max"] else tf.reduce_mean
                if layout == "input":
                    h = reduce(h, [2, 3])
                else:
                    h = reduce(h, [1, 2])  # [N, T*C]
                    h = tf.transpose(tf.reshape(h, [n, num_tasks, -1]), [1, 0, 2])
                layout = "flat"
            elif op.kind == "flatten":
                if layout == "image":
                    _, hh, ww, tc = h.shape
                    h = tf.reshape(h, [n, hh, ww, num_tasks, tc // num_tasks])
                    h = tf.reshape(tf.transpose(h, [3, 0, 1, 2, 4]), [num_tasks, n, -1])
                elif layout == "input":
                    h = tf.reshape(h, [num_tasks, n, -1])
                layout = "flat"
        if layout == "image":  # a model ending on image activations: back to [T, N, H, W, C]
            _, hh, ww, tc = h.shape
            h = tf.transpose(tf.reshape(h, [n, hh, ww, num_tasks, tc // num_tasks]), [3, 0, 1, 2, 4])
        return h

    def _product(self, fn, h, kernel):
        """A convolution or matrix product on ``compute_dtype`` copies of its operands, its result cast back
        to float32: everything else (bias, batch norm, loss) stays float32."""
        if self.compute_dtype == tf.float32:
            return fn(h, kernel)
        return tf.cast(fn(tf.cast(h, self.compute_dtype), tf.cast(kernel, self.compute_dtype)), tf.float32)

    def _batch_norm(self, op: _Op, packed: Weights, h, layout: str, num_tasks: int, stats_examples: Optional[int]):
        eps = op.config["epsilon"]
        if layout == "input":
            raise ValueError(f"{op.name}: batch norm directly on the inputs is not supported")
        if self.training:
            if layout == "image":  # [N, H, W, T*C]: statistics per task and channel
                src = h if stats_examples is None else h[:stats_examples]
                mean, var = _moments(src, [0, 1, 2], op.config["exact"])
            else:  # [T, N, D]
                src = h if stats_examples is None else h[:, :stats_examples]
                mean, var = _moments(src, [1], op.config["exact"], keepdims=True)
        else:  # the model's moving averages, shared by all tasks
            mean = tf.convert_to_tensor(op.state["moving_mean"])
            var = tf.convert_to_tensor(op.state["moving_variance"])
            if layout == "image":
                mean, var = tf.tile(mean, [num_tasks]), tf.tile(var, [num_tasks])
        gamma = packed[op.weights["gamma"]] if "gamma" in op.weights else None
        beta = packed[op.weights["beta"]] if "beta" in op.weights else None
        return tf.nn.batch_normalization(h, mean, var, beta, gamma, eps)

    __call__ = forward


def _moments(x, axes, exact: bool, keepdims: bool = False):
    """Batch mean and variance as the layer computes them: exactly (:class:`ExactBatchNormalization`)
    or as ``tf.nn.moments`` (Keras's layer), whose variance stops the gradient through the mean."""
    if not exact:
        return tf.nn.moments(x, axes, keepdims=keepdims)
    return exact_moments(x, axes, keepdims=keepdims)


# ----------------------------------------------------------------------------------------------
# Task losses that know their model


class SupervisedTaskLoss:
    """``task_loss(weights, (x, y)) = loss(y, model(x; weights))``, usable by every layout.

    Called on one task it runs the Keras model through :func:`maml_tf.functional.call` (so it works
    with the ``loop`` and ``vectorized`` layouts); :func:`meta_objective` and :func:`metric_curve`
    recognise it and run all tasks at once on a :class:`BatchedNet` when the model is supported.
    ``loss(labels, outputs)`` reduces one task's examples to a scalar (mean), e.g.
    :func:`maml_tf.maml.softmax_cross_entropy` or :func:`maml_tf.maml.accuracy`.

    ``transductive=False`` (batched layout only): query examples are normalised with the support
    set's batch statistics (see the module docstring).
    """

    def __init__(self, model: keras.Model, loss: Callable, training: bool = True, transductive: bool = True,
                 compute_dtype: str = "float32"):
        self.model = model
        self.loss = loss
        self.training = training
        self.transductive = transductive
        self.compute_dtype = compute_dtype
        warn_if_inexact_normalization(model)
        try:
            self.net: Optional[BatchedNet] = BatchedNet(model, training=training, compute_dtype=compute_dtype)
            self.unsupported_reason: Optional[str] = None
        except Unsupported as e:
            self.net, self.unsupported_reason = None, str(e)
        if not transductive and self.net is None:
            raise ValueError(f"Non-transductive batch norm needs the batched layout, which cannot run this model: "
                             f"{self.unsupported_reason}.")
        if compute_dtype != "float32" and self.net is None:
            raise ValueError(f"compute_dtype={compute_dtype} needs the batched layout, which cannot run this model: "
                             f"{self.unsupported_reason}.")

    def __call__(self, weights: Weights, data):
        if self.compute_dtype != "float32":
            raise ValueError(f"compute_dtype={self.compute_dtype} runs on the batched layout only (layout='batched').")
        x, y = data
        return self.loss(y, call(self.model, weights, x, training=self.training))

    def with_loss(self, loss: Callable) -> "SupervisedTaskLoss":
        """The same model and settings with another per-task loss or metric (e.g. accuracy)."""
        other = object.__new__(SupervisedTaskLoss)
        other.__dict__.update(self.__dict__)
        other.loss = loss
        return other

    def per_task(self, labels, outputs):
        """``[T]``: the loss of every task, from labels ``[T, N]`` and outputs ``[T, N, ...]``."""
        return tf.vectorized_map(lambda a: self.loss(a[0], a[1]), (labels, outputs))


def supervised_loss(model: keras.Model, loss: Callable, training: bool = True,
                    transductive: bool = True, compute_dtype: str = "float32") -> SupervisedTaskLoss:
    """A task loss for a Keras model and a per-task loss, which the batched layout can accelerate.

    ``training`` is passed to the model's layers (``True``: batch norm on the batch's statistics, as the
    paper); ``transductive=False`` (batched layout only) normalises query examples with the support set's
    batch statistics instead of the query batch's (module docstring). ``compute_dtype="bfloat16"`` (batched
    layout only) runs the convolutions and matrix products, and
    their gradients at every order, on bfloat16 inputs and weights; the weights, batch norm, losses and
    the optimizer stay float32."""
    return SupervisedTaskLoss(model, loss, training=training, transductive=transductive, compute_dtype=compute_dtype)


def as_metric(task_loss, metric: Callable):
    """The metric that :func:`maml_tf.evaluation.metric_curve` evaluates, in every layout: with a task loss
    from :func:`supervised_loss`, ``metric`` is a :class:`SupervisedTaskLoss` or a plain
    ``metric(labels, outputs)``, which becomes ``task_loss.with_loss(metric)``; with any other task loss it
    is used as given, ``metric(weights, data)``."""
    if not isinstance(task_loss, SupervisedTaskLoss) or isinstance(metric, SupervisedTaskLoss):
        return metric

    def checked(labels, outputs):
        try:
            return metric(labels, outputs)
        except (AttributeError, TypeError, ValueError) as e:
            raise TypeError(
                f"metric(labels, outputs) failed ({type(e).__name__}: {e}); with a task loss from "
                f"batched.supervised_loss a metric is a plain function of (labels, outputs), e.g. maml.accuracy, "
                f"not of (weights, data).") from e

    return task_loss.with_loss(checked)


def fast_path(task_loss) -> Optional[SupervisedTaskLoss]:
    """``task_loss`` if the batched layout can run it, else None."""
    if isinstance(task_loss, SupervisedTaskLoss) and task_loss.net is not None:
        return task_loss
    return None


_warned = set()


def _fallback_warning(task_loss) -> None:
    reason = getattr(task_loss, "unsupported_reason", None) or "the task loss is not a batched.SupervisedTaskLoss"
    if reason not in _warned:
        _warned.add(reason)
        log.warning("layout='batched' falls back to 'vectorized': %s", reason)


# ----------------------------------------------------------------------------------------------
# The inner loop and the meta-objective on packed weights


def _num_tasks(batch) -> int:
    t = tf.nest.flatten(batch)[0].shape[0]
    if t is None:
        raise ValueError("The batched layout needs a static number of tasks.")
    return int(t)


def _outputs(tl: SupervisedTaskLoss, packed: Weights, x, support_x=None):
    """Outputs ``[T, N, ...]`` for inputs ``x``; with ``support_x``, batch norm uses the support statistics."""
    if support_x is None:
        return tl.net(packed, x)
    ns = support_x.shape[1]
    both = tf.concat([tf.cast(support_x, tf.float32), tf.cast(x, tf.float32)], 1)
    return tl.net(packed, both, stats_examples=ns)[:, ns:]


def _losses(tl: SupervisedTaskLoss, packed: Weights, data, support_x=None):
    """Per-task losses ``[T]`` of ``data = (x, y)``."""
    x, y = data
    return tl.per_task(y, _outputs(tl, packed, x, support_x))


def adapt_packed(tl: SupervisedTaskLoss, packed: Weights, support, steps: int, inner_lr: LearningRate,
                 first_order: bool = False, frozen: Collection[str] = ()) -> Weights:
    """``steps`` inner gradient steps of every task at once, on packed weights (those named in
    ``frozen`` are not adapted): :func:`maml_tf.maml.inner_update` on the sum of the tasks' losses,
    since task t's loss depends on its own packed weights only."""

    def total_loss(weights, data):
        return tf.reduce_sum(_losses(tl, weights, data))

    for s in range(steps):
        packed = inner_update(total_loss, packed, support, step_size(inner_lr, s), first_order, frozen)
    return packed


def _batched_or_none(task_loss, query_loss):
    tl = fast_path(task_loss)
    ql = fast_path(query_loss) if query_loss is not None else tl
    if tl is None or ql is None or ql.model is not tl.model:
        _fallback_warning(task_loss if tl is None else query_loss)
        return None, None
    return tl, ql


def meta_objective(task_loss: TaskLoss, weights: Weights, support, query, steps: int, inner_lr: LearningRate,
                   first_order: bool = False, query_loss: TaskLoss | None = None,
                   frozen: Collection[str] = ()) -> tf.Tensor:
    """:func:`maml_tf.maml.meta_objective` with tasks folded into one batch (same value and gradient).

    Falls back to the ``vectorized`` layout (with a warning, once) when the task loss or its model
    is not supported.
    """
    return meta_objective_and_metrics(task_loss, weights, support, query, steps, inner_lr, first_order,
                                      query_loss=query_loss, frozen=frozen)[0]


def meta_objective_and_metrics(task_loss: TaskLoss, weights: Weights, support, query, steps: int,
                               inner_lr: LearningRate, first_order: bool = False,
                               query_loss: TaskLoss | None = None, metrics: Dict[str, Callable] | None = None,
                               layout: str = "batched", frozen: Collection[str] = ()):
    """``(meta_objective, {name: mean over tasks of metric(labels, outputs) on the query set after
    adaptation})``, from the same forward pass (e.g. ``metrics={"accuracy": maml.accuracy}``);
    ``frozen``: weights the inner loop does not adapt (:func:`maml_tf.maml.adapt`).

    ``layout="batched"`` runs on a :class:`BatchedNet` when it can (else ``vectorized``); the other
    layouts of :func:`maml_tf.maml.per_task` work for any ``SupervisedTaskLoss``.
    """
    from maml_tf import maml

    metrics = dict(metrics or {})
    query_loss = query_loss or task_loss
    tl, ql = _batched_or_none(task_loss, query_loss) if layout == "batched" else (None, None)
    if tl is not None:
        packed = tl.net.pack(weights, _num_tasks(support))
        fast = adapt_packed(tl, packed, support, steps, inner_lr, first_order, frozen)
        outputs = _outputs(ql, fast, query[0], None if ql.transductive else support[0])
        values = {"loss": ql.per_task(query[1], outputs)}
        values.update({name: ql.with_loss(fn).per_task(query[1], outputs) for name, fn in metrics.items()})
        values = {k: tf.reduce_mean(v) for k, v in values.items()}
        return values.pop("loss"), values
    if metrics and not isinstance(query_loss, SupervisedTaskLoss):
        raise ValueError("metrics need a query loss built by batched.supervised_loss.")
    if getattr(query_loss, "transductive", True) is False:
        raise ValueError("Non-transductive batch norm needs layout='batched'.")
    per_task_layout = "vectorized" if layout == "batched" else layout

    def one_task(data):
        s, q = data
        fast = maml.adapt(task_loss, weights, s, steps, inner_lr, first_order, frozen)
        if not metrics:
            return query_loss(fast, q)[None]
        outputs = call(query_loss.model, fast, q[0], training=query_loss.training)
        return tf.stack([query_loss.loss(q[1], outputs)] + [fn(q[1], outputs) for fn in metrics.values()])

    values = tf.reduce_mean(maml.per_task(one_task, (support, query), per_task_layout), axis=0)
    return values[0], {name: values[i + 1] for i, name in enumerate(metrics)}


def metric_curve(task_loss: TaskLoss, metric: TaskLoss, weights: Weights, support, query, steps: int,
                 inner_lr: LearningRate, frozen: Collection[str] = ()) -> tf.Tensor:
    """:func:`maml_tf.evaluation.metric_curve` on the batched layout: ``[tasks, steps + 1]``.

    With a task loss from :func:`supervised_loss`, ``metric`` is a plain ``metric(labels, outputs)`` (e.g.
    :func:`maml_tf.maml.accuracy`) or ``task_loss.with_loss(metric)``; with any other task loss it is
    built like the loss, ``metric(weights, data)``, and the vectorized layout runs it (with a warning).
    """
    metric = as_metric(task_loss, metric)
    tl, ml = fast_path(task_loss), fast_path(metric)
    if tl is None or ml is None or ml.model is not tl.model:
        from maml_tf import evaluation
        _fallback_warning(task_loss if tl is None else metric)
        return evaluation.metric_curve(task_loss, metric, weights, support, query, steps, inner_lr,
                                       layout="vectorized", frozen=frozen)
    weights = {k: tf.stop_gradient(v) for k, v in weights.items()}
    fast = tl.net.pack(weights, _num_tasks(support))
    support_x = None if ml.transductive else support[0]
    values = [_losses(ml, fast, query, support_x)]
    for s in range(steps):
        fast = adapt_packed(tl, fast, support, 1, step_size(inner_lr, s), first_order=True, frozen=frozen)
        values.append(_losses(ml, fast, query, support_x))
    return tf.stack(values, axis=1)
