r"""How much arithmetic a compiled step does, and how fast this machine can do arithmetic at best.

Two tools for ``benchmarks/meta_step.py``, which uses them to put a floor under the time per
meta-iteration: whatever the layout, a step cannot take less than its multiply-adds divided by the
machine's best multiply-add rate.

``count_macs(graph)``: multiply-accumulates of the dense-algebra ops of a ``tf.function``'s graph
(``concrete_function.graph``) that are live, i.e. that the outputs or a stateful op (an optimizer's
variable update) depend on; dead ops, which Grappler prunes before running the graph (for example the
input gradient of the first convolution), are not counted. Per op, with static shapes:

    Conv2D                  prod(output shape)      x kh x kw x filter_in   (filter [kh, kw, in/groups, out])
    Conv2DBackpropInput     prod(out_backprop shape) x kh x kw x filter_in  (the same products, transposed)
    Conv2DBackpropFilter    prod(out_backprop shape) x kh x kw x filter_in  (filter shape = the op's output)
    MatMul                  m x k x n
    BatchMatMulV2/V3        batch x m x k x n (broadcast batch)

Everything else (element-wise ops, reductions, batch norm, softmax) is left out: it is memory-bound and
small next to the convolutions here, so the floor it gives is a lower bound. An op of those types
whose shapes are not static raises ``ValueError``: the count would be wrong, not smaller.

``peak_gflops(...)``: the best rate this machine reaches on large, regular problems: a square fp32
matrix product and a large-batch 3x3 convolution of the Omniglot network's second layer, each compiled
with ``tf.function`` and timed as the best of several repetitions (so background load can only make it
lower). It is the rate the meta-step would need to reach on all its arithmetic to hit the floor.
"""

from __future__ import annotations

import time

import numpy as np
import tensorflow as tf

DENSE_OPS = ("Conv2D", "Conv2DBackpropInput", "Conv2DBackpropFilter", "MatMul", "BatchMatMulV2", "BatchMatMulV3")


def _shape(tensor, op) -> list[int]:
    dims = tensor.shape.as_list() if tensor.shape.rank is not None else None
    if dims is None or any(d is None for d in dims):
        raise ValueError(f"{op.type} op {op.name} has a non-static shape {tensor.shape}; cannot count its arithmetic.")
    return dims


def op_macs(op) -> int:
    """Multiply-accumulates of one dense op (0 for any other op type)."""
    t = op.type
    if t == "Conv2D":
        out, f = _shape(op.outputs[0], op), _shape(op.inputs[1], op)
        return int(np.prod(out)) * f[0] * f[1] * f[2]
    if t == "Conv2DBackpropInput":
        f, dy = _shape(op.inputs[1], op), _shape(op.inputs[2], op)
        return int(np.prod(dy)) * f[0] * f[1] * f[2]
    if t == "Conv2DBackpropFilter":
        f, dy = _shape(op.outputs[0], op), _shape(op.inputs[2], op)
        return int(np.prod(dy)) * f[0] * f[1] * f[2]
    if t == "MatMul":
        a, b = _shape(op.inputs[0], op), _shape(op.inputs[1], op)
        m, k = (a[1], a[0]) if op.get_attr("transpose_a") else (a[0], a[1])
        n = b[0] if op.get_attr("transpose_b") else b[1]
        return m * k * n
    if t in ("BatchMatMulV2", "BatchMatMulV3"):
        a, b = _shape(op.inputs[0], op), _shape(op.inputs[1], op)
        m, k = (a[-1], a[-2]) if op.get_attr("adj_x") else (a[-2], a[-1])
        n = b[-2] if op.get_attr("adj_y") else b[-1]
        batch = np.broadcast_shapes(tuple(a[:-2]), tuple(b[:-2]))
        return int(np.prod(batch, dtype=np.int64)) * m * k * n
    return 0


def live_ops(graph) -> list:
    """The ops that the graph's outputs or its stateful ops (variable updates) depend on."""
    roots = [t.op for t in graph.outputs]
    roots += [op for op in graph.get_operations()
              if op._is_stateful and op.type not in ("Placeholder", "ReadVariableOp", "VarHandleOp")]
    seen, stack, live = set(), list(roots), []
    while stack:
        op = stack.pop()
        if op.name in seen:
            continue
        seen.add(op.name)
        live.append(op)
        stack.extend(i.op for i in op.inputs)
        stack.extend(op.control_inputs)
    return live


def count_macs(graph) -> dict:
    """{op type: multiply-accumulates} over the live dense ops of ``graph``, plus ``"total"``."""
    nested = [op.type for op in graph.get_operations()
              if op.type in ("PartitionedCall", "StatefulPartitionedCall", "While", "StatelessWhile", "If")]
    if nested:
        raise ValueError(f"the graph calls nested functions or loops ({sorted(set(nested))}); count_macs only "
                         "counts flat graphs.")
    counts: dict[str, int] = {}
    for op in live_ops(graph):
        macs = op_macs(op)
        if macs:
            counts[op.type] = counts.get(op.type, 0) + macs
    counts["total"] = sum(counts.values())
    return counts


def _best_seconds(fn, reps: int) -> float:
    fn().numpy()  # compile and warm up
    best = float("inf")
    for _ in range(reps):
        t0 = time.perf_counter()
        fn().numpy()
        best = min(best, time.perf_counter() - t0)
    return best


def peak_gflops(matmul_size: int = 2048, conv_batch: int = 2048, reps: int = 5) -> dict:
    """Best fp32 GFLOP/s (2 flops per multiply-add) of a square matmul and of a large-batch conv."""
    rng = np.random.default_rng(0)
    a = tf.constant(rng.standard_normal((matmul_size, matmul_size), dtype=np.float32))
    b = tf.constant(rng.standard_normal((matmul_size, matmul_size), dtype=np.float32))
    matmul = tf.function(lambda: tf.linalg.matmul(a, b))
    # The Omniglot network's second layer: 14x14x64 -> 7x7x64, 3x3 kernel, stride 2, SAME padding.
    x = tf.constant(rng.standard_normal((conv_batch, 14, 14, 64), dtype=np.float32))
    w = tf.constant(rng.standard_normal((3, 3, 64, 64), dtype=np.float32))
    conv = tf.function(lambda: tf.nn.conv2d(x, w, strides=2, padding="SAME"))
    matmul_macs = matmul_size ** 3
    conv_macs = conv_batch * 7 * 7 * 64 * 3 * 3 * 64
    t_mm, t_conv = _best_seconds(matmul, reps), _best_seconds(conv, reps)
    return {"matmul_gflops": round(2 * matmul_macs / t_mm / 1e9, 1),
            "conv_gflops": round(2 * conv_macs / t_conv / 1e9, 1),
            "matmul_size": matmul_size, "conv_batch": conv_batch, "reps": reps}
