"""The MAML core against independent references: finite differences, closed forms, layouts."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras
import numpy as np
import pytest
import tensorflow as tf

from maml_tf import functional, maml, models
from maml_tf.evaluation import metric_curve, summarize


def tiny_net(seed=0, hidden=6):
    keras.utils.set_random_seed(seed)
    return keras.Sequential([
        keras.Input((2,), dtype="float64"),
        keras.layers.Dense(hidden, activation="tanh", dtype="float64", name="h"),
        keras.layers.Dense(1, dtype="float64", name="o"),
    ])


def task_batch(rng, tasks=3, n=5, d=2):
    xs = rng.normal(size=(tasks, n, d))
    ys = rng.normal(size=(tasks, n, 1))
    xq = rng.normal(size=(tasks, n, d))
    yq = rng.normal(size=(tasks, n, 1))
    return (tf.constant(xs), tf.constant(ys)), (tf.constant(xq), tf.constant(yq))


def flat(weights, names):
    return np.concatenate([np.ravel(weights[k]) for k in names])


def unflat(vec, like, names):
    out, i = {}, 0
    for k in names:
        size = int(np.prod(like[k].shape))
        out[k] = tf.constant(vec[i:i + size].reshape(like[k].shape), dtype=tf.float64)
        i += size
    return out


def bn_net(bn_layer, seed=0):
    keras.utils.set_random_seed(seed)
    return keras.Sequential([
        keras.Input((2,), dtype="float64"),
        keras.layers.Dense(6, dtype="float64", name="h"),
        bn_layer(scale=False, epsilon=1e-3, dtype="float64", name="bn"),
        keras.layers.Activation("tanh", dtype="float64"),
        keras.layers.Dense(1, dtype="float64", name="o"),
    ])


def meta_gradient_and_finite_differences(model, steps, lr=0.3, eps=1e-5, frozen=()):
    names = functional.weight_names(model)
    w0 = functional.get_weights(model)
    support, query = task_batch(np.random.default_rng(1))
    task_loss = maml.supervised_loss(functional.make_forward(model), maml.mse)

    _, grad = maml.meta_gradient(task_loss, w0, support, query, steps, lr, first_order=False, layout="loop",
                                 frozen=frozen)
    analytic = flat({k: g.numpy() for k, g in grad.items()}, names)
    _, fo = maml.meta_gradient(task_loss, w0, support, query, steps, lr, first_order=True, layout="loop",
                               frozen=frozen)
    first_order = flat({k: g.numpy() for k, g in fo.items()}, names)

    theta = flat({k: v.numpy() for k, v in w0.items()}, names)
    numeric = np.zeros_like(theta)
    for i in range(theta.size):
        e = np.zeros_like(theta)
        e[i] = eps
        lp = maml.meta_objective(task_loss, unflat(theta + e, w0, names), support, query, steps, lr, layout="loop",
                                 frozen=frozen)
        lm = maml.meta_objective(task_loss, unflat(theta - e, w0, names), support, query, steps, lr, layout="loop",
                                 frozen=frozen)
        numeric[i] = (float(lp) - float(lm)) / (2 * eps)
    return analytic, first_order, numeric


@pytest.mark.parametrize("steps", [1, 2])
@pytest.mark.parametrize("net", ["tanh_mlp", "exact_batch_norm"])
def test_second_order_meta_gradient_matches_finite_differences(steps, net):
    model = tiny_net() if net == "tanh_mlp" else bn_net(models.ExactBatchNormalization)
    analytic, first_order, numeric = meta_gradient_and_finite_differences(model, steps)
    np.testing.assert_allclose(analytic, numeric, rtol=1e-5, atol=1e-8)
    # The first-order gradient is a different quantity on this non-quadratic problem.
    assert np.max(np.abs(first_order - numeric)) > 1e-4


@pytest.mark.parametrize("steps", [1, 2])
def test_frozen_weights_are_not_adapted_and_their_meta_gradient_matches_finite_differences(steps):
    """``frozen`` (the authors' few-shot code leaves batch-norm offsets out of its inner loop): the inner
    loop keeps those weights as they are, the meta-gradient of every weight, frozen ones included, is
    still the derivative of the meta-objective, and it differs from adapting everything."""
    model = bn_net(models.ExactBatchNormalization)
    frozen = functional.batch_norm_weights(model)
    assert [k.split("/", 1)[1] for k in frozen] == ["bn/beta"]
    w0 = functional.get_weights(model)
    support, query = task_batch(np.random.default_rng(1))  # the data of meta_gradient_and_finite_differences
    task_loss = maml.supervised_loss(functional.make_forward(model), maml.mse)
    fast = maml.adapt(task_loss, w0, (support[0][0], support[1][0]), steps, 0.3, frozen=frozen)
    assert fast[frozen[0]] is w0[frozen[0]]
    changed = {k.split("/", 1)[1] for k in w0 if np.max(np.abs(fast[k] - w0[k])) > 1e-6}
    assert changed == {"h/kernel", "o/kernel", "o/bias"}  # h/bias: batch norm cancels it, its gradient is 0

    analytic, first_order, numeric = meta_gradient_and_finite_differences(model, steps, frozen=frozen)
    np.testing.assert_allclose(analytic, numeric, rtol=1e-5, atol=1e-8)
    assert np.max(np.abs(first_order - numeric)) > 1e-4
    _, grad_all = maml.meta_gradient(task_loss, w0, support, query, steps, 0.3, layout="loop")
    adapting_all = flat({k: g.numpy() for k, g in grad_all.items()}, functional.weight_names(model))
    assert np.max(np.abs(adapting_all - analytic)) > 1e-4


def tiny_problem():
    """(model, weights, task loss, support, query, the first task's support data) of the tiny net."""
    model = tiny_net()
    task_loss = maml.supervised_loss(functional.make_forward(model), maml.mse)
    support, query = task_batch(np.random.default_rng(0))
    return model, functional.get_weights(model), task_loss, support, query, (support[0][0], support[1][0])


def test_frozen_names_are_checked():
    model, w, task_loss, _, _, data = tiny_problem()
    with pytest.raises(ValueError, match="not the string"):
        maml.adapt(task_loss, w, data, 1, 0.1, frozen=next(iter(w)))
    with pytest.raises(ValueError, match=r"Frozen weights \['nope'\] are not among"):
        maml.adapt(task_loss, w, data, 1, 0.1, frozen=["nope"])
    with pytest.raises(ValueError, match="Every weight is frozen"):
        maml.adapt(task_loss, w, data, 1, 0.1, frozen=list(w))
    assert functional.batch_norm_weights(model) == []


def test_keras_batch_norm_second_order_is_approximate_and_warned():
    """Why ExactBatchNormalization exists: Keras's layer stops the gradient through the mean inside its
    variance, which changes second derivatives (values and first derivatives are the same)."""
    with pytest.warns(UserWarning, match="ExactBatchNormalization is a drop-in replacement"):
        analytic, _, numeric = meta_gradient_and_finite_differences(bn_net(keras.layers.BatchNormalization), 2)
    assert np.max(np.abs(analytic - numeric)) > 1e-2 * np.max(np.abs(numeric))
    exact, keras_bn = bn_net(models.ExactBatchNormalization), bn_net(keras.layers.BatchNormalization)
    x = tf.constant(np.random.default_rng(2).normal(size=(7, 2)))
    np.testing.assert_allclose(functional.call(exact, functional.get_weights(exact), x),
                               functional.call(keras_bn, functional.get_weights(keras_bn), x), rtol=1e-12)


def norm_net(norm_layer, seed=0):
    """Dense, tanh -> Dense -> a normalisation layer over the 6 features (random offsets and scales) -> tanh
    -> Dense. (Directly after the first Dense layer, normalising each example's features would hide the
    error: the inner gradients then never move the features' sum, the one direction where the stopped
    gradient changes the curvature.)"""
    keras.utils.set_random_seed(seed)
    return keras.Sequential([
        keras.Input((2,), dtype="float64"),
        keras.layers.Dense(6, activation="tanh", dtype="float64", name="h0"),
        keras.layers.Dense(6, dtype="float64", name="h"),
        norm_layer(beta_initializer="random_normal", gamma_initializer=keras.initializers.RandomUniform(0.5, 1.5),
                   dtype="float64", name="norm"),
        keras.layers.Activation("tanh", dtype="float64"),
        keras.layers.Dense(1, dtype="float64", name="o"),
    ])


NORMALIZATIONS = {
    "layer": (keras.layers.LayerNormalization, models.ExactLayerNormalization, {}),
    "group": (keras.layers.GroupNormalization, models.ExactGroupNormalization, {"groups": 2}),
}


@pytest.mark.parametrize("kind", sorted(NORMALIZATIONS))
def test_exact_layer_and_group_normalization(kind):
    """Keras's LayerNormalization and GroupNormalization take their statistics from keras.ops.moments
    (tf.nn.moments), like its batch norm: the second-order meta-gradient through them is approximate and
    the library warns. The Exact* layers give the same values and a meta-gradient that matches finite
    differences."""
    keras_cls, exact_cls, kwargs = NORMALIZATIONS[kind]
    keras_net = norm_net(lambda **kw: keras_cls(**kwargs, **kw))
    exact_net = norm_net(lambda **kw: exact_cls(**kwargs, **kw))
    x = tf.constant(np.random.default_rng(2).normal(size=(7, 2)))
    np.testing.assert_allclose(functional.call(exact_net, functional.get_weights(exact_net), x),
                               functional.call(keras_net, functional.get_weights(keras_net), x), rtol=1e-12)

    exact, numeric = directional_meta_derivatives(exact_net, steps=2)
    np.testing.assert_allclose(exact, numeric, rtol=1e-5)  # Keras's layers: off by 1.8-3%
    with pytest.warns(UserWarning, match=f"{exact_cls.__name__} is a drop-in replacement"):
        inexact, _ = directional_meta_derivatives(keras_net, steps=2)  # the same function: same numeric values
    assert np.max(np.abs(inexact - numeric)) > 1e-4 * np.max(np.abs(numeric))


def directional_meta_derivatives(model, steps, directions=3, lr=0.3, eps=1e-5):
    """The second-order meta-gradient along random directions of weight space, and the central finite
    differences of the meta-objective along them (cheaper than every coordinate, for larger nets)."""
    w0 = functional.get_weights(model)
    support, query = task_batch(np.random.default_rng(1))
    task_loss = maml.supervised_loss(functional.make_forward(model), maml.mse)
    _, grad = maml.meta_gradient(task_loss, w0, support, query, steps, lr, layout="loop")
    rng = np.random.default_rng(4)
    analytic, numeric = [], []
    for _ in range(directions):
        v = {k: rng.normal(size=w.shape) for k, w in w0.items()}
        analytic.append(sum(float(np.sum(grad[k].numpy() * v[k])) for k in w0))
        plus, minus = ({k: w + sign * eps * v[k] for k, w in w0.items()} for sign in (1, -1))
        numeric.append((float(maml.meta_objective(task_loss, plus, support, query, steps, lr, layout="loop"))
                        - float(maml.meta_objective(task_loss, minus, support, query, steps, lr, layout="loop")))
                       / (2 * eps))
    return np.array(analytic), np.array(numeric)


def dropout_net():
    keras.utils.set_random_seed(3)
    return keras.Sequential([keras.Input((4,)), keras.layers.Dense(32, name="h"), keras.layers.Dropout(0.5),
                             keras.layers.Dense(1, name="o")])


def test_dropout_draws_a_new_mask_on_every_call_and_for_every_task():
    """stateless_call returns the dropout seed's advanced state, which functional.call discards; so it gives
    each call a fresh seed, else every call (and every task, and every iteration) would get one mask."""
    model = dropout_net()
    w = functional.get_weights(model)
    x = tf.ones((8, 4))
    first, second = functional.call(model, w, x).numpy(), functional.call(model, w, x).numpy()
    assert np.max(np.abs(first - second)) > 1e-3
    compiled = tf.function(lambda xs: tf.vectorized_map(lambda xi: functional.call(model, w, xi), xs))
    tasks = tf.ones((3, 8, 4))  # three identical tasks
    a, b = compiled(tasks).numpy(), compiled(tasks).numpy()
    assert np.max(np.abs(a - b)) > 1e-3  # a new mask on every run of the compiled function
    assert min(np.max(np.abs(a[i] - a[j])) for i, j in [(0, 1), (0, 2), (1, 2)]) > 1e-3  # and for every task
    # Repeatable under a global seed; without training, no dropout at all.
    keras.utils.set_random_seed(11)
    c = functional.call(model, w, x).numpy()
    keras.utils.set_random_seed(11)
    np.testing.assert_array_equal(functional.call(model, w, x).numpy(), c)
    np.testing.assert_allclose(functional.call(model, w, x, training=False), model(x, training=False), rtol=1e-6)
    # Dropout's state is not a weight: adaptation and meta-gradients see only the trainable ones.
    task_loss = maml.supervised_loss(functional.make_forward(model), maml.mse)
    y = tf.ones((3, 8, 1))
    _, g = maml.meta_gradient(task_loss, w, (tasks, y), (tasks, y), 1, 0.01)
    assert sorted(k.split("/", 1)[1] for k in w) == ["h/bias", "h/kernel", "o/bias", "o/kernel"]  # no seed
    assert any(v.path not in w for v in model.variables)  # though the model holds it as a variable
    assert all(np.all(np.isfinite(g[k].numpy())) and np.any(g[k].numpy() != 0) for k in g)


def linear_model(d):
    return keras.Sequential([keras.Input((d,), dtype="float64"),
                             keras.layers.Dense(1, use_bias=False, dtype="float64", name="lin")])


@pytest.mark.parametrize("steps", [1, 3])
def test_linear_meta_gradient_closed_form_and_first_order_difference(steps):
    """For f(x) = x.w and L(w) = mean((Xw - y)^2): grad = 2/n X^T(Xw - y), H = 2/n X^T X, and S inner
    steps give w_S = w - alpha * sum of gradients with dw_S/dw = (I - alpha H_s)^S. Hence
    meta-grad = (I - alpha H_s)^S g_q(w_S), first-order = g_q(w_S); their difference is the
    second-order term."""
    d, n, lr = 3, 7, 0.05
    rng = np.random.default_rng(2)
    model = linear_model(d)
    w = rng.normal(size=(d, 1))
    weights = {functional.weight_names(model)[0]: tf.constant(w)}
    key = next(iter(weights))
    xs, ys, xq, yq = (rng.normal(size=s) for s in ((n, d), (n, 1), (n, d), (n, 1)))

    hs = 2.0 / n * xs.T @ xs
    ws = w.copy()
    for _ in range(steps):
        ws = ws - lr * 2.0 / n * xs.T @ (xs @ ws - ys)
    gq = 2.0 / n * xq.T @ (xq @ ws - yq)
    jac = np.linalg.matrix_power(np.eye(d) - lr * hs, steps)
    expected_second = jac.T @ gq

    task_loss = maml.supervised_loss(functional.make_forward(model), maml.mse)
    support = (tf.constant(xs[None]), tf.constant(ys[None]))
    query = (tf.constant(xq[None]), tf.constant(yq[None]))
    _, g2 = maml.meta_gradient(task_loss, weights, support, query, steps, lr, first_order=False)
    _, g1 = maml.meta_gradient(task_loss, weights, support, query, steps, lr, first_order=True)
    np.testing.assert_allclose(g2[key].numpy(), expected_second, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(g1[key].numpy(), gq, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose((g2[key] - g1[key]).numpy(), (jac.T - np.eye(d)) @ gq, rtol=1e-9, atol=1e-12)
    if steps == 1:  # the second-order term written out: -alpha H_s g_q(w')
        np.testing.assert_allclose((g2[key] - g1[key]).numpy(), -lr * hs @ gq, rtol=1e-9, atol=1e-12)


def test_vectorized_and_loop_layouts_agree():
    model = tiny_net(seed=3)
    w0 = functional.get_weights(model)
    support, query = task_batch(np.random.default_rng(4), tasks=4)
    task_loss = maml.supervised_loss(functional.make_forward(model), maml.mse)
    lv, gv = maml.meta_gradient(task_loss, w0, support, query, 2, 0.1, layout="vectorized")
    ll, gl = maml.meta_gradient(task_loss, w0, support, query, 2, 0.1, layout="loop")
    np.testing.assert_allclose(float(lv), float(ll), rtol=1e-12)
    for k in gv:
        np.testing.assert_allclose(gv[k].numpy(), gl[k].numpy(), rtol=1e-9, atol=1e-12)
    with pytest.raises(ValueError, match="Unknown task layout"):
        maml.per_task(lambda t: t, support, layout="grid")


class UserModel(keras.Model):
    """A subclassed model the library has never seen: residual block with a learned scale."""

    def __init__(self):
        super().__init__()
        self.inp = keras.layers.Dense(16, activation="relu")
        self.res = keras.layers.Dense(16, activation="tanh")
        self.out = keras.layers.Dense(1)
        self.scale = self.add_weight(shape=(), initializer="ones", name="scale")

    def call(self, x):
        h = self.inp(x)
        return self.out(h + self.scale * self.res(h))


def test_user_defined_keras_model_runs_through_adapt_unchanged():
    keras.utils.set_random_seed(5)
    model = UserModel()
    x = tf.random.normal((10, 1))
    y = tf.sin(x)
    model(x)  # build
    weights = functional.get_weights(model)
    assert len(weights) == 7  # 3 kernels, 3 biases, the scale
    np.testing.assert_allclose(functional.call(model, weights, x).numpy(), model(x).numpy(), rtol=1e-6)
    task_loss = maml.supervised_loss(functional.make_forward(model), maml.mse)
    fast = maml.adapt(task_loss, weights, (x, y), steps=5, inner_lr=0.05)
    assert float(task_loss(fast, (x, y))) < float(task_loss(weights, (x, y)))
    # The model's own variables are untouched by adaptation.
    for v in model.trainable_variables:
        np.testing.assert_array_equal(v.numpy(), weights[v.path].numpy())
    # And its meta-gradient flows to every weight, the scalar scale included.
    _, g = maml.meta_gradient(task_loss, weights, (x[None], y[None]), (x[None], y[None]), 1, 0.05)
    assert all(np.any(g[k].numpy() != 0) for k in g)


def test_per_step_learning_rates_and_first_order_values_equal():
    assert maml.step_size([0.1, 0.05], 0) == 0.1
    assert maml.step_size([0.1, 0.05], 3) == 0.05
    model = tiny_net(seed=6)
    w0 = functional.get_weights(model)
    support, _ = task_batch(np.random.default_rng(7), tasks=1)
    data = (support[0][0], support[1][0])
    task_loss = maml.supervised_loss(functional.make_forward(model), maml.mse)
    manual = maml.inner_update(task_loss, maml.inner_update(task_loss, w0, data, 0.1), data, 0.05)
    fast = maml.adapt(task_loss, w0, data, 2, [0.1, 0.05])
    fo = maml.adapt(task_loss, w0, data, 2, [0.1, 0.05], first_order=True)
    for k in w0:
        np.testing.assert_allclose(fast[k].numpy(), manual[k].numpy(), rtol=1e-12)
        np.testing.assert_allclose(fo[k].numpy(), manual[k].numpy(), rtol=1e-12)


def test_metric_curve_and_summary_match_manual_computation():
    model = tiny_net(seed=8)
    w0 = functional.get_weights(model)
    support, query = task_batch(np.random.default_rng(9), tasks=5)
    task_loss = maml.supervised_loss(functional.make_forward(model), maml.mse)
    curve = metric_curve(task_loss, task_loss, w0, support, query, steps=3, inner_lr=0.2).numpy()
    assert curve.shape == (5, 4)
    for t in range(5):
        s = (support[0][t], support[1][t])
        q = (query[0][t], query[1][t])
        fast = w0
        for n in range(4):
            np.testing.assert_allclose(curve[t, n], float(task_loss(fast, q)), rtol=1e-10)
            fast = maml.inner_update(task_loss, fast, s, 0.2)
    s = summarize(curve)
    np.testing.assert_allclose(s["mean"], curve.mean(0))
    np.testing.assert_allclose(s["ci95"], 1.96 * curve.std(0) / np.sqrt(5))
    assert s["num_tasks"] == 5


def test_missing_weight_gives_clear_error():
    model = tiny_net()
    w = functional.get_weights(model)
    w.pop(next(iter(w)))
    with pytest.raises(KeyError, match="weight dictionary has no entry"):
        functional.call(model, w, tf.zeros((1, 2), tf.float64))


def test_metric_given_as_labels_and_predictions_gives_clear_error():
    model = tiny_net()
    w = functional.get_weights(model)
    support, query = task_batch(np.random.default_rng(0))
    task_loss = maml.supervised_loss(functional.make_forward(model), maml.mse)
    for layout in ("vectorized", "loop"):  # (the loop layout used to raise TensorFlow's ValueError)
        with pytest.raises(TypeError, match=r"a metric takes the weights and a task's query data.*not "
                                            r"\(labels, predictions\)"):
            metric_curve(task_loss, maml.mse, w, support, query, steps=1, inner_lr=0.1, layout=layout)


def test_bad_steps_and_learning_rates_are_refused():
    _, w, task_loss, support, query, data = tiny_problem()
    for steps in (-2, 1.5, True):
        with pytest.raises(ValueError, match="steps must be a whole number >= 0"):
            maml.adapt(task_loss, w, data, steps, 0.1)
    for lr, message in (("0.1", "a number or a sequence"), ([], "empty sequence"), ([0.1, float("inf")], "finite"),
                        (float("nan"), "finite"), ([0.1, "x"], "finite")):
        with pytest.raises(ValueError, match=message):
            maml.adapt(task_loss, w, data, 2, lr)
    with pytest.raises(ValueError, match="support holds 3 tasks but query holds 2"):
        maml.meta_objective(task_loss, w, support, tf.nest.map_structure(lambda t: t[:2], query), 1, 0.1)
    # numpy scalars are numbers too
    assert maml.step_size(np.float32(0.25), 0) == 0.25 and maml.check_steps(np.int64(2)) == 2


def test_gather_gradients_are_made_dense_in_the_inner_step():
    """An embedding's gradient is IndexedSlices; the inner step must still apply it, as a dense step."""
    model = keras.Sequential([keras.Input((2,), dtype="int32"), keras.layers.Embedding(5, 3), keras.layers.Flatten(),
                              keras.layers.Dense(1)])
    w = functional.get_weights(model)
    forward = functional.make_forward(model)
    task_loss = maml.supervised_loss(forward, maml.mse)
    x = tf.constant([[0, 1], [1, 3]])
    y = tf.constant([[1.0], [-1.0]])
    fast = maml.adapt(task_loss, w, (x, y), 1, 0.1)
    with tf.GradientTape() as tape:
        tape.watch(list(w.values()))
        loss = task_loss(w, (x, y))
    grads = tape.gradient(loss, w)
    table = next(k for k in w if "embedding" in k)
    assert isinstance(grads[table], tf.IndexedSlices)
    for k in w:
        np.testing.assert_allclose(fast[k].numpy(), (w[k] - 0.1 * tf.convert_to_tensor(grads[k])).numpy(),
                                   rtol=1e-6, atol=1e-7)
    np.testing.assert_array_equal(fast[table].numpy()[4], w[table].numpy()[4])  # row 4 is not looked up
    assert not np.allclose(fast[table].numpy()[1], w[table].numpy()[1])
