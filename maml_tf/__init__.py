"""maml_tf: Model-Agnostic Meta-Learning (Finn, Abbeel & Levine, ICML 2017) in TensorFlow 2 / Keras 3.

Modules (import them directly, e.g. ``from maml_tf import functional, maml``):

- :mod:`maml_tf.functional`: run any Keras model with a dictionary of weights (``make_forward``, ``call``).
- :mod:`maml_tf.maml`: the inner loop (``adapt``) and the meta-objective, second or first order.
- :mod:`maml_tf.batched`: the fast layout for conv nets, all tasks of a meta-batch in one network.
- :mod:`maml_tf.evaluation`: a metric after 0..S inner steps, mean and 95% confidence interval.
- :mod:`maml_tf.training`: the meta-training loop (checkpoints, resume, TensorBoard, progress).
- :mod:`maml_tf.models`: the paper's networks, and normalisation layers with exact second derivatives.

README.md, "Using the library", has a complete meta-training step.
"""
