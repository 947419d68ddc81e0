"""Flags shared by the few-shot entry points (omniglot.py, miniimagenet.py).

``define_task_flags`` defines the task and meta-training settings (their defaults are the paper's
presets, filled in by each entry point, so the help texts come from there), ``define_run_flags`` the
run control, evaluation and compute settings; both add their validators. Importing this module does not
import TensorFlow, so a bad flag fails at once.
"""

from __future__ import annotations

from absl import flags

from maml_tf.cli import finite_positive

LAYOUTS = ("batched", "vectorized", "loop")  # maml_tf.maml.LAYOUTS
INNER_LOSS_REDUCTIONS = ("mean", "sum")  # what each means: fewshot.Config.inner_step_size
DEFAULT_INNER_LOSS_REDUCTION = "mean"
OUTPUT_INITS = ("glorot", "normal")  # maml_tf.models.OUTPUT_INITS
DEFAULT_OUTPUT_INIT = "glorot"
COMPUTE_DTYPES = ("float32", "bfloat16")  # maml_tf.batched.COMPUTE_DTYPES


def define_task_flags(help: dict) -> None:
    """``help``: name -> help text for num_query, eval_num_query, meta_batch_size, inner_lr,
    num_inner_steps, num_eval_steps, first_order (the entry point's presets)."""
    flags.DEFINE_integer("num_ways", 5, "N: classes per task.")
    flags.DEFINE_integer("num_shots", 1, "K: support examples per class.")
    flags.DEFINE_integer("num_query", None, help["num_query"])
    flags.DEFINE_integer("eval_num_query", None, help["eval_num_query"])
    flags.DEFINE_integer("meta_batch_size", None, help["meta_batch_size"])
    flags.DEFINE_float("inner_lr", None, help["inner_lr"])
    flags.DEFINE_integer("num_inner_steps", None, help["num_inner_steps"])
    flags.DEFINE_integer("num_eval_steps", None, help["num_eval_steps"])
    flags.DEFINE_integer("iterations", 60000, "Meta-training iterations.")
    flags.DEFINE_float("meta_lr", 0.001, "Adam learning rate of the meta-optimizer.")
    flags.DEFINE_bool("first_order", False, help["first_order"])
    flags.register_validator("num_ways", lambda v: v is not None and v >= 2,
                             "--num_ways must be at least 2 (a task with one class has nothing to classify).")
    flags.register_validator("num_shots", lambda v: v is not None and v > 0, "--num_shots must be a positive integer.")
    for name in ("num_query", "eval_num_query", "meta_batch_size", "num_inner_steps"):
        flags.register_validator(name, lambda v: v is None or v > 0, f"--{name} must be a positive integer.")
    flags.register_validator("iterations", lambda v: v >= 0, "--iterations must be >= 0.")
    flags.register_validator("num_eval_steps", lambda v: v is None or v >= 0, "--num_eval_steps must be >= 0.")
    for name in ("inner_lr", "meta_lr"):
        flags.register_validator(name, finite_positive, f"--{name} must be a finite number > 0.")


def define_run_flags(eval_batch_size: int) -> None:
    flags.DEFINE_bool("eval_only", False,
                      "Only evaluate the best checkpoint in --logdir (settings from its config.json).")
    flags.DEFINE_bool("transductive_bn", True,
                      "Batch norm with the query batch's statistics (paper); False: the support set's.")
    flags.DEFINE_bool("adapt_batch_norm", True,
                      "The inner loop adapts the batch-norm offsets too (our runs); False: they are only "
                      "meta-learned, as in the authors' code (whose inner loop adapts the conv and dense weights).")
    flags.DEFINE_enum("inner_loss_reduction", DEFAULT_INNER_LOSS_REDUCTION, INNER_LOSS_REDUCTIONS,
                      "The support-set loss the inner step differentiates. sum: the cross-entropy summed over the "
                      "N*K support examples and divided by K, as the authors' code (xent in cbfinn/maml), so "
                      "--inner_lr acts as N * inner_lr on the mean; mean: the mean cross-entropy.")
    flags.DEFINE_enum("output_init", DEFAULT_OUTPUT_INIT, OUTPUT_INITS,
                      "Initial kernel of the output layer. glorot: Keras's default; normal: N(0, 1), as the "
                      "authors' Omniglot conv net (w5 = tf.random_normal in cbfinn/maml).")
    flags.DEFINE_float("meta_clip_norm", 0.0,
                       "Clip each meta-gradient to this global norm before Adam (0: no clipping, as the paper). "
                       "Not the paper's protocol; the logdir gets the suffix _clip<value>.")
    flags.DEFINE_integer("seed", 0, "Seed of the initialisation and of the training tasks.", lower_bound=0)
    flags.DEFINE_string("init_from", None,
                        "The log directory of an earlier run: a new run (in another --logdir) starts from the "
                        "weights of its best-validation checkpoint (else its latest), with a fresh meta-optimizer; "
                        "its iterations count from 0. Ignored when --logdir resumes its own checkpoint.")
    flags.DEFINE_integer("eval_tasks", 600, "Test tasks (paper: 600).")
    flags.DEFINE_integer("eval_seed", 2017, "Seed of the test tasks (validation tasks use eval_seed + 1).",
                         lower_bound=0)
    flags.DEFINE_integer("val_tasks", 200, "Validation tasks used to pick the best checkpoint.")
    flags.DEFINE_integer("validate_every", 1000,
                         "Iterations between validations (0: none; the last checkpoint is tested).")
    flags.DEFINE_integer("checkpoint_every", 1000, "Iterations between checkpoints.")
    flags.DEFINE_integer("log_every", 100, "Iterations between progress lines and history entries.")
    flags.DEFINE_integer("eval_batch_size", eval_batch_size, "Tasks evaluated at once.")
    flags.DEFINE_enum("layout", None, LAYOUTS,
                      "How the meta-training step lays out the per-task computations (default: the preset's, the "
                      "one measured fastest here: Omniglot's conv net batched at 1 shot and loop from 5 shots, "
                      "otherwise batched; on CPUs without AVX-512, TF_ENABLE_ONEDNN_OPTS=0 with --layout=loop can be "
                      "faster: README). Validation and test use the batched layout wherever it runs.")
    flags.DEFINE_bool("jit_compile", False, "Compile the training step with XLA (slower for these networks on CPU).")
    flags.DEFINE_enum("compute_dtype", "float32", COMPUTE_DTYPES,
                      "Precision of the meta-training step's convolutions and matrix products (batched layout; "
                      "bfloat16 made the step only 3-8% faster on an AVX512_BF16 CPU, see README). Weights, batch "
                      "norm, losses and Adam stay float32; validation and test always run in float32.")
    flags.DEFINE_bool("deterministic", True,
                      "Turn off Grappler's memory optimizer, so that a command repeats bit for bit (with it on, "
                      "the per-task loop of the 5-shot presets sums gradients in the order they arrive; README); "
                      "--nodeterministic keeps TensorFlow's default.")
    flags.DEFINE_integer("intra_op_threads", 0, "TensorFlow intra-op threads (0: TensorFlow's default).")
    flags.DEFINE_integer("inter_op_threads", 0, "TensorFlow inter-op threads (0: TensorFlow's default).")
    for name in ("eval_tasks", "val_tasks", "checkpoint_every", "log_every", "eval_batch_size"):
        flags.register_validator(name, lambda v: v is not None and v > 0, f"--{name} must be a positive integer.")
    for name in ("validate_every", "intra_op_threads", "inter_op_threads", "meta_clip_norm"):
        flags.register_validator(name, lambda v: v >= 0, f"--{name} must be >= 0.")
