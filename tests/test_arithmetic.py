"""The multiply-add counter behind the benchmark's floor (benchmarks/arithmetic.py).

References: TensorFlow's own profiler (its registered flop statistics for Conv2D and MatMul) for the
forward ops, and the shapes' products written out by hand for the gradient ops, which the profiler
does not count.
"""

import os
import sys

import numpy as np
import pytest
import tensorflow as tf

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks"))
import arithmetic  # noqa: E402


def _constant(*shape):
    return tf.constant(np.random.default_rng(0).standard_normal(shape).astype(np.float32))


def _profiler_flops(graph, op_type: str) -> int:
    """TensorFlow's registered flop statistic (what its profiler sums) over the ops of one type."""
    from tensorflow.python.framework import ops
    return sum(ops.get_stats_for_node_def(graph, op.node_def, "flops").value
               for op in graph.get_operations() if op.type == op_type)


def test_forward_ops_match_tensorflows_profiler():
    x, w = _constant(3, 14, 14, 8), _constant(3, 3, 4, 6)  # grouped: 2 groups of 4 input channels
    a, b = _constant(5, 7), _constant(9, 7)
    p, q = _constant(4, 5, 7), _constant(4, 7, 3)

    @tf.function(autograph=False)
    def f():
        y = tf.nn.conv2d(x, w, strides=2, padding="SAME")
        return tf.reduce_sum(y) + tf.reduce_sum(tf.matmul(a, b, transpose_b=True)) + tf.reduce_sum(p @ q)

    graph = f.get_concrete_function().graph
    counts = arithmetic.count_macs(graph)
    assert counts["Conv2D"] == 3 * 7 * 7 * 6 * (3 * 3 * 4)
    assert counts["MatMul"] == 5 * 7 * 9
    assert counts["BatchMatMulV2"] == 4 * 5 * 7 * 3
    # The profiler counts 2 flops per multiply-add (it has no statistics for BatchMatMul).
    assert _profiler_flops(graph, "Conv2D") == 2 * counts["Conv2D"]
    assert _profiler_flops(graph, "MatMul") == 2 * counts["MatMul"]


def test_gradient_ops_and_dead_ops():
    x, w = _constant(2, 10, 10, 3), _constant(3, 3, 3, 5)

    def loss(x, w):
        return tf.reduce_sum(tf.square(tf.nn.conv2d(x, w, strides=1, padding="SAME")))

    forward = 2 * 10 * 10 * 5 * (3 * 3 * 3)  # = the backprop ops' products too (same shapes)

    @tf.function(autograph=False)
    def kernel_gradient_only():
        with tf.GradientTape() as tape:
            tape.watch(w)
            value = loss(x, w)
        return tape.gradient(value, w)

    graph = kernel_gradient_only.get_concrete_function().graph
    ops = {op.type for op in graph.get_operations()}
    counts = arithmetic.count_macs(graph)
    # TensorFlow builds the input gradient too, but nothing uses it (dead): it is not counted.
    assert "Conv2DBackpropInput" in ops
    assert counts == {"Conv2D": forward, "Conv2DBackpropFilter": forward, "total": 2 * forward}

    @tf.function(autograph=False)
    def both_gradients():
        with tf.GradientTape() as tape:
            tape.watch([x, w])
            value = loss(x, w)
        gx, gw = tape.gradient(value, [x, w])
        return tf.reduce_sum(gx) + tf.reduce_sum(gw)

    counts = arithmetic.count_macs(both_gradients.get_concrete_function().graph)
    assert counts == {"Conv2D": forward, "Conv2DBackpropFilter": forward, "Conv2DBackpropInput": forward,
                      "total": 3 * forward}


def test_variable_updates_count_as_live():
    v = tf.Variable(np.ones((4, 6), np.float32))
    a = _constant(3, 4)

    @tf.function(autograph=False)
    def update():
        v.assign_add(tf.transpose(a) @ a @ tf.ones((4, 6)))  # no output: only the assignment keeps it live
        return tf.constant(0.0)

    counts = arithmetic.count_macs(update.get_concrete_function().graph)
    assert counts["MatMul"] == 4 * 3 * 4 + 4 * 4 * 6


def test_unknown_shapes_and_nested_functions_are_refused():
    @tf.function(input_signature=[tf.TensorSpec([None, 4], tf.float32)], autograph=False)
    def dynamic(a):
        return a @ tf.ones((4, 2))

    with pytest.raises(ValueError, match="non-static shape"):
        arithmetic.count_macs(dynamic.get_concrete_function().graph)

    inner = tf.function(lambda a: a @ tf.ones((4, 2)), autograph=False)

    @tf.function(autograph=False)
    def nested():
        return inner(tf.ones((3, 4)))

    with pytest.raises(ValueError, match="nested functions"):
        arithmetic.count_macs(nested.get_concrete_function().graph)
