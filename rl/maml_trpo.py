r"""MAML for reinforcement learning with TRPO as the meta-optimizer (paper section 3.2 and 5.3).

One meta-iteration, for meta-parameters theta and a meta-batch of tasks T_1 .. T_M:

 1. Pre-update rollouts D_i: R episodes of each task with pi_theta.
 2. Inner step (``maml_tf.maml.adapt``, the library's one inner loop) on the REINFORCE loss

        L_i(theta; D_i) = - sum_t m_t log pi_theta(a_t | s_t) A_t / sum_t m_t        (``reinforce_loss``)

    (m_t: 1 on the steps of an episode, A_t: advantages of the linear baseline refitted on D_i, GAE
    with gamma = 0.99 and lambda = 1, standardised per task as rllab's ``center_adv``):

        theta'_i(theta) = theta - alpha grad_theta L_i(theta; D_i).

 3. Post-update rollouts D'_i: R episodes of task i with the adapted policy pi_{theta'_i}; their
    policy ("old", fixed below) is pi_old,i = pi_{theta'_i(theta_0)}, with advantages A'_t.
 4. TRPO on theta, where both the objective and the constraint are functions of theta *through the
    inner update* (the data D_i, D'_i and advantages stay fixed):

        S(theta)  = 1/M sum_i  mean_{t in D'_i} [ pi_{theta'_i(theta)}(a_t|s_t) / pi_old,i(a_t|s_t) A'_t ]
        KL(theta) = 1/M sum_i  mean_{t in D'_i} [ KL( pi_old,i(.|s_t) || pi_{theta'_i(theta)}(.|s_t) ) ]

        maximise S(theta)  subject to  KL(theta) <= delta = 0.01            (``rl.trpo.trpo_update``)

    grad S is the MAML meta-gradient: it differentiates through the inner gradient step, bringing in
    the Hessian of L_i (second order, the default); ``first_order=True`` cuts the inner gradient
    (theta' = theta - alpha stop_gradient(grad L_i)), so d theta'_i / d theta = I.

Curvature of the constraint. The Hessian-vector products H v = hess KL(theta_0) v that conjugate
gradient needs are computed with nested gradient tapes, in one of two ways that give the same H
(or, as the authors' code did, by finite differences: the third way below):

  * ``"exact"``: ``rl.trpo.hessian_vector_product`` of KL(theta) itself, i.e. tapes nested three deep
    (the inner step's gradient, grad KL, and its directional derivative) over all the data.
  * ``"gauss_newton"`` (default, cheaper): at theta_0 the adapted policies equal the old ones, so
    grad_{theta'} KL_i = 0 there and the chain rule leaves only

        H = 1/M sum_i J_i^T F_i J_i,   J_i = d theta'_i / d theta = I - alpha hess L_i(theta_0; D_i),

    F_i = the Hessian of KL_i with respect to the adapted weights (the Fisher matrix of pi_old,i).
    J_i is symmetric, so J_i v and J_i^T u are both v - alpha (hess L_i) v, an HVP of the inner loss;
    F_i u is an HVP of the KL: all by nested tapes (two deep), with no third derivatives. For
    first-order MAML and for plain TRPO J_i = I. The post-update rollouts that enter F_i may be
    subsampled (``hvp_subsample``: the first fraction of each task's rollouts, as the subsampled
    Fisher products of common TRPO implementations, but at least ``min_curvature_rollouts`` of them, 4,
    the paper batch's 0.2 x 20: with 1 of 5 rollouts on a small problem the unclipped step's KL was
    0.037-18.7 on three batches against a limit of 0.01, 0.004-0.021 with 4 of 5;
    ``curvature_inputs``); the curvature only shapes
    the step, whose KL the line search checks exactly, on all data. J_i always uses all pre-update
    rollouts, i.e. the very inner step that made theta'_i: a J_i from a subsample is noisy, and the
    noise enters H twice (J^T F J), so on average it inflates the curvature. ``benchmarks/curvature.py``
    measures this on one real batch (results/benchmarks/curvature.jsonl; half-cheetah direction, 40
    tasks, 20 rollouts): J_i from 4 of the 20 rollouts gave a step 2.5x shorter than the exact
    curvature's, cosine 0.76; F_i from 4 of 20 with the full J_i gives cosine 0.9995 and the same length.
  * ``"finite_difference"``: what the MAML authors' TRPO used (rllab's ``FiniteDifferenceHvp``, the
    default of their ``ConjugateGradientOptimizer``): (grad KL(theta + eps v) - grad KL(theta - eps v))
    / (2 eps) with eps = fd_base_eps / |theta|, the gradients taken through the inner update on all
    data. Their optimizer passes ``num_slices=1`` positionally into ``base_eps``, so their eps was
    1 / |theta|, not the class's 1e-8 / |theta|: the secant spans a segment of length |v| / |theta|
    along each CG vector v, so it is not the Hessian at theta_0 where the KL is far from quadratic.

Which KL. The trust region above bounds the post-update policies (``kl_constraint="post"``), as the
paper's meta-objective and the authors' code (``kl_constrain_step=-1``, their default) do. Nothing then
holds the pre-update policy pi_theta itself: a step can move it far while J_i maps the move to a small
change of the adapted policies. ``"pre"`` bounds instead the mean KL of pi_theta on the pre-update
rollouts (the authors' ``kl_constrain_step=0``; the curvature is then that KL's Hessian, plain TRPO's);
``"both"`` keeps the post-update curvature and step and makes the line search also require the
pre-update KL <= delta. The pre-update KL of every accepted step is logged (``pre_kl``) whichever is chosen.

Which inner surrogate. The meta-gradient above, like the paper's and the authors' code, differentiates
through the inner step with the pre-update rollouts D_i held fixed: it drops how their distribution
depends on theta. In the Hessian of L_i that J_i carries, the REINFORCE loss gives
- mean_t A_t hess log pi_t, while the Hessian of the expected loss (minus the return) also has the score-function term
- mean_t A_t grad log pi_t grad log pi_t^T. ``inner_surrogate="lvc"`` keeps that term per step (ProMP's
"low variance curvature" surrogate, ``lvc_loss``): the same inner step, another J_i in the meta-gradient (but
not in the curvature: the KL that the line search checks is that of the sampled step, whose
Jacobian is the REINFORCE one). It is not the paper's estimator; it serves to test whether that term
matters on a task. Its meta-gradient is not the derivative of the sampled surrogate S (that is the
point), so it is tested against the Hessian of an expected return in closed form, not finite differences.

Baselines of the paper use the same learner with ``inner_steps=0``: then theta'_i = theta, only one
batch of rollouts is sampled per iteration, and this is plain TRPO on the tasks of the batch
("pretrained" = TRPO on all tasks jointly; "oracle" = TRPO on an environment that observes the task).

Tasks are batched along axis 0 of every tensor; the per-task computations go through
``maml_tf.maml.per_task`` (``layout="vectorized"`` or ``"loop"``). ``jit_compile=True`` compiles the
curvature products (called cg_iterations + 1 times per update on the same data) with XLA. XLA compiles
once per input shape, so ``MAMLTRPO.step`` then zero-pads their step axes to one of 32 sizes per
octave (``bucket_size``, ``pad_steps``: padded steps have mask 0 and change no mean). On a 2-core CPU
without AVX-512 the loop layout with XLA made the half-cheetah's products 1.3x faster than the
vectorized layout without XLA (6.3 against 8.0 s per update in benchmarks/maml_trpo.py, README); the
half-cheetah presets (rl/presets.py) use it.
"""

from __future__ import annotations

import dataclasses
import math
import time
from typing import NamedTuple, Sequence

import keras
import numpy as np
import tensorflow as tf

from maml_tf import maml
from maml_tf.functional import Weights, get_weights
from rl import baselines, policies, trpo
from rl.sampler import Episodes, Sampler

from rl.presets import (BASELINES, BATCH_BY, CURVATURES, INNER_SURROGATES,  # noqa: F401 (Config's option values)
                        KL_CONSTRAINTS, RL_LAYOUTS)


class PolicyData(NamedTuple):
    """Rollouts of M tasks as tensors: each task's valid steps, episode after episode, padded to the
    largest count N over the tasks (see mask). Every loss is a masked mean over steps, so the layout
    of the steps does not matter to it; packing only saves the work on padding (``policy_data``)."""

    obs: tf.Tensor         # [M, N, obs_dim]
    actions: tf.Tensor     # [M, N, act_dim]
    advantages: tf.Tensor  # [M, N]
    mask: tf.Tensor        # [M, N]  1 on the steps of an episode, 0 on padding


class OldPolicy(NamedTuple):
    """The distribution of the policy that collected the post-update rollouts, at their steps."""

    mean: tf.Tensor      # [M, N, act_dim]
    log_std: tf.Tensor   # [M, N, act_dim]


@dataclasses.dataclass(frozen=True)
class Config:
    """Settings of the meta-learner (paper appendix A.2 as defaults)."""

    rollouts_per_task: int = 20
    inner_lr: float = 0.1
    inner_steps: int = 1            # 1: MAML; 0: plain TRPO (pretrained and oracle baselines)
    first_order: bool = False
    max_kl: float = 0.01
    cg_iterations: int = 10
    cg_damping: float = 1e-5
    backtrack_ratio: float = 0.8
    max_backtracks: int = 15
    discount: float = 0.99
    gae_lambda: float = 1.0
    normalize_advantages: bool = True
    curvature: str = "gauss_newton"
    hvp_subsample: float = 0.2      # fraction of each task's post-update rollouts used for F (gauss_newton)
    min_curvature_rollouts: int = 4  # but at least this many (or all): 0.2 of 20, the paper's batch
    fd_base_eps: float = 1.0        # finite_difference: probe eps = fd_base_eps / |theta| (the authors' value: 1)
    layout: str = "vectorized"
    jit_compile: bool = False       # compile the curvature products with XLA (step axes padded to buckets)
    baseline: str = "per_task"      # or "previous_task": rllab's original predict-then-fit order
    batch_by: str = "steps"         # "steps": >= rollouts x horizon steps per task, episodes that end early
                                    # are followed by new ones (the authors' samplers); "episodes": exactly
                                    # rollouts_per_task episodes per task
    kl_constraint: str = "post"     # which policies the trust region bounds (module docstring, "Which KL"):
                                    # "post" (the paper's, the authors' default), "pre" or "both"
    inner_surrogate: str = "reinforce"  # the inner step's surrogate (``inner_loss``): "reinforce" (the paper's)
                                        # or "lvc" (a diagnostic: the same step, its score-function curvature kept)

    def __post_init__(self):
        if self.inner_steps not in (0, 1):
            raise ValueError(f"inner_steps must be 0 (plain TRPO) or 1 (MAML), got {self.inner_steps}; "
                             "more inner steps would need fresh rollouts after each step.")
        if self.curvature not in CURVATURES:
            raise ValueError(f"curvature must be one of {CURVATURES}, got {self.curvature!r}.")
        if self.fd_base_eps <= 0:
            raise ValueError(f"fd_base_eps must be positive, got {self.fd_base_eps}.")
        if not 0.0 < self.hvp_subsample <= 1.0:
            raise ValueError(f"hvp_subsample must be in (0, 1], got {self.hvp_subsample}.")
        if self.min_curvature_rollouts < 1:
            raise ValueError(f"min_curvature_rollouts must be at least 1, got {self.min_curvature_rollouts}.")
        if self.cg_iterations < 1:
            raise ValueError(f"cg_iterations must be at least 1, got {self.cg_iterations}.")
        if self.rollouts_per_task < 1 or self.max_kl <= 0 or self.inner_lr < 0:
            raise ValueError("rollouts_per_task and max_kl must be positive and inner_lr non-negative.")
        if self.baseline not in BASELINES:
            raise ValueError(f"baseline must be one of {BASELINES}, got {self.baseline!r}.")
        if self.kl_constraint not in KL_CONSTRAINTS:
            raise ValueError(f"kl_constraint must be one of {KL_CONSTRAINTS}, got {self.kl_constraint!r}.")
        if self.inner_surrogate not in INNER_SURROGATES:
            raise ValueError(f"inner_surrogate must be one of {INNER_SURROGATES}, got {self.inner_surrogate!r}.")
        if self.batch_by not in BATCH_BY:
            raise ValueError(f"batch_by must be one of {BATCH_BY}, got {self.batch_by!r}.")
        if self.layout not in RL_LAYOUTS:  # ("batched" folds conv nets into grouped convolutions: not for policies)
            raise ValueError(f"layout must be one of {RL_LAYOUTS}, got {self.layout!r}.")

    @classmethod
    def from_settings(cls, s: dict) -> "Config":
        """The learner of a run from its recorded settings (rl/train.py's config.json, with any changes
        applied: ``rl.presets.current_settings``); settings a run predates take what it did then."""
        return cls(
            rollouts_per_task=s["rollouts_per_task"], inner_lr=s["inner_lr"], inner_steps=s["inner_steps"],
            first_order=s["first_order"], max_kl=s["max_kl"], cg_iterations=s["cg_iterations"],
            cg_damping=s["cg_damping"], discount=s["discount"], gae_lambda=s["gae_lambda"],
            normalize_advantages=s["normalize_advantages"], curvature=s["curvature"],
            hvp_subsample=s["hvp_subsample"], layout=s["layout"], jit_compile=s.get("jit_compile", False),
            baseline=s.get("baseline", "per_task"), batch_by=s.get("batch_by", "episodes"),
            kl_constraint=s.get("kl_constraint", "post"), inner_surrogate=s.get("inner_surrogate", "reinforce"))


# ------------------------------------------------------------------------------------------------
# Rollouts -> tensors


def standardize(advantages: np.ndarray, mask: np.ndarray, eps: float = 1e-8) -> np.ndarray:
    """Per task (axis 0): zero mean and unit standard deviation over the valid steps; 0 on padding."""
    axes = tuple(range(1, advantages.ndim))
    n = np.maximum(mask.sum(axis=axes, keepdims=True), 1.0)
    mean = (advantages * mask).sum(axis=axes, keepdims=True) / n
    var = (np.square(advantages - mean) * mask).sum(axis=axes, keepdims=True) / n
    return (advantages - mean) / (np.sqrt(var) + eps) * mask


def policy_data(episodes: Episodes, discount: float = 0.99, gae_lambda: float = 1.0,
                normalize_advantages: bool = True, dtype=tf.float32,
                advantages: np.ndarray | None = None) -> PolicyData:
    """Advantages from the linear feature baseline refitted per task (``rl.baselines.advantages``;
    or the given ``advantages`` [M, R, T]), standardised per task if asked; then each task's valid
    steps packed along one step axis, episode after episode (``pack_steps``)."""
    if advantages is None:
        adv, _ = baselines.advantages(episodes.rewards, episodes.obs, episodes.mask, discount, gae_lambda)
    else:
        adv = advantages
    if normalize_advantages:
        adv = standardize(adv, episodes.mask)
    obs, actions, adv, mask = pack_steps(episodes.mask, episodes.obs, episodes.actions, adv)
    return PolicyData(*(tf.constant(x, dtype=dtype) for x in (obs, actions, adv, mask)))


def pack_steps(mask: np.ndarray, *arrays: np.ndarray):
    """``arrays`` [M, E, T, ...] (E episodes of T steps per task, valid where ``mask`` [M, E, T] is 1,
    a prefix of each episode) as [M, N, ...]: each task's valid steps in order (episode 0's, then
    episode 1's, ...), zero-padded to the largest count N over the tasks; returns them and the packed
    mask. Where no step is padding this is a reshape. When episodes end early (2D navigation after
    adaptation, a falling ant, step-budget batches of many short episodes) it spares every later
    computation the padding, which with the step budget can be most of [E, T]."""
    M, E, T = mask.shape
    valid = mask.reshape(M, E * T) > 0
    counts = valid.sum(axis=1)
    n = int(counts.max())
    if n == E * T:
        return tuple(np.reshape(x, (M, E * T) + x.shape[3:]) for x in arrays) + (mask.reshape(M, E * T),)
    order = np.argsort(~valid, axis=1, kind="stable")[:, :n]  # valid steps first, in their order
    keep = (np.arange(n)[None, :] < counts[:, None])

    def take(x):
        flat = np.reshape(x, (M, E * T) + x.shape[3:])
        idx = order.reshape((M, n) + (1,) * (flat.ndim - 2))
        out = np.take_along_axis(flat, idx, axis=1)
        return out * keep.reshape((M, n) + (1,) * (flat.ndim - 2)).astype(out.dtype)

    return tuple(take(x) for x in arrays) + (keep.astype(mask.dtype),)


def subsample_rollouts(data, lengths: np.ndarray, keep: int):
    """The steps of the first ``keep`` episodes of each task, from ``data`` (a ``PolicyData``, or a
    tuple of a ``PolicyData`` and tensors on the same steps) packed by ``policy_data`` from episodes of
    ``lengths`` [M, E]: a prefix of each task's step axis, cut at the longest and masked."""
    lengths = np.asarray(lengths)
    if keep >= lengths.shape[1]:
        return data
    counts = lengths[:, :keep].sum(axis=1)
    n = int(counts.max())

    def cut(x):
        return x[:, :n]

    out = tf.nest.map_structure(cut, data)

    def remask(d):
        if isinstance(d, PolicyData):
            return d._replace(mask=d.mask * tf.constant(np.arange(n)[None, :] < counts[:, None], d.mask.dtype))
        return d

    if isinstance(out, PolicyData):
        return remask(out)
    return type(out)(remask(d) for d in out)


def bucket_size(n: int, per_octave: int = 32) -> int:
    """``n`` rounded up to a multiple of 2^(floor(log2 n) - log2 per_octave): at most ``per_octave``
    sizes between consecutive powers of two, so at most 1/per_octave of padding."""
    n = int(n)
    if n <= per_octave:
        return max(n, 1)
    step = 2 ** (n.bit_length() - 1) // per_octave
    return -(-n // step) * step


def pad_steps(data, n: int):
    """``data`` (``PolicyData`` or ``OldPolicy``) with its step axis (axis 1) zero-padded to ``n``; the
    padded steps have mask 0, so every masked mean is unchanged."""
    pad = n - int(data[0].shape[1])
    if pad <= 0:
        return data
    return type(data)(*(tf.pad(x, [[0, 0], [0, pad]] + [[0, 0]] * (x.shape.rank - 2)) for x in data))


def uniform_lengths(data: PolicyData, rollouts: int) -> np.ndarray:
    """[M, rollouts] lengths of a step axis holding ``rollouts`` episodes of equal length per task."""
    M, N = data.mask.shape[0], data.mask.shape[1]
    return np.full((M, rollouts), N // rollouts)


def curvature_rollouts(config: Config, rollouts: int | None = None) -> int:
    """Post-update rollouts per task that enter the KL curvature (all of them for ``"exact"``), of
    ``rollouts`` in the batch (default ``config.rollouts_per_task``; more with ``batch_by="steps"``
    when episodes end early)."""
    rollouts = config.rollouts_per_task if rollouts is None else int(rollouts)
    if config.curvature in ("exact", "finite_difference"):
        return rollouts
    return min(rollouts, max(config.min_curvature_rollouts, int(math.ceil(config.hvp_subsample * rollouts))))


def curvature_inputs(config: Config, pre, post, old, lengths: np.ndarray | None = None):
    """``(pre, post, old)`` for the curvature products: the post-update rollouts (episodes of
    ``lengths`` [M, E], as packed by ``policy_data``; default ``config.rollouts_per_task`` equal
    episodes) and their old policy subsampled to their first ``curvature_rollouts(config, E)``
    episodes per task; the pre-update rollouts whole, because the inner step (and so J_i) must be the
    one that produced the adapted policies (module docstring)."""
    if lengths is None:
        lengths = uniform_lengths(post, config.rollouts_per_task)
    keep = curvature_rollouts(config, np.asarray(lengths).shape[1])
    post_c, old_c = subsample_rollouts((post, old), lengths, keep)
    return pre, post_c, old_c


# ------------------------------------------------------------------------------------------------
# Losses (for one task: tensors without the task axis)


def masked_mean(x, mask):
    return tf.reduce_sum(x * mask) / tf.maximum(tf.reduce_sum(mask), 1.0)


def reinforce_loss(model: keras.Model):
    """``task_loss(weights, data) = -mean over valid steps of log pi(a|s) * A``: the inner loss, whose
    gradient is the vanilla policy gradient."""

    def task_loss(weights: Weights, data: PolicyData):
        mean, log_std = policies.distribution(model, weights, data.obs)
        logp = policies.log_likelihood(data.actions, mean, log_std)
        return -masked_mean(logp * data.advantages, data.mask)

    return task_loss


def lvc_loss(model: keras.Model):
    """``task_loss(weights, data) = -mean over valid steps of pi(a|s) / stop_gradient(pi(a|s)) * A``: the
    "low variance curvature" surrogate of ProMP (Rothfuss et al. 2019). Its gradient is the REINFORCE
    gradient (so the inner step is the same), but its Hessian is

        - mean_t A_t (hess log pi_t + grad log pi_t grad log pi_t^T),

    a per-step estimate of the Hessian of the expected return, whereas ``reinforce_loss``'s Hessian lacks
    the second (score-function) term: the paper's meta-gradient treats the pre-update rollouts as if
    their distribution did not depend on theta. Its value is -mean A, not the REINFORCE loss's."""

    def task_loss(weights: Weights, data: PolicyData):
        mean, log_std = policies.distribution(model, weights, data.obs)
        logp = policies.log_likelihood(data.actions, mean, log_std)
        return -masked_mean(tf.exp(logp - tf.stop_gradient(logp)) * data.advantages, data.mask)

    return task_loss


def inner_loss(model: keras.Model, surrogate: str = "reinforce"):
    """The inner step's loss of ``Config.inner_surrogate``: ``reinforce_loss`` or ``lvc_loss``."""
    if surrogate not in INNER_SURROGATES:
        raise ValueError(f"inner_surrogate must be one of {INNER_SURROGATES}, got {surrogate!r}.")
    return reinforce_loss(model) if surrogate == "reinforce" else lvc_loss(model)


def surrogate_and_kl(model: keras.Model, weights: Weights, data: PolicyData, old: OldPolicy):
    """Importance-sampled surrogate ``mean[pi/pi_old A]`` and ``mean KL(pi_old || pi)`` of one task."""
    mean, log_std = policies.distribution(model, weights, data.obs)
    logp = policies.log_likelihood(data.actions, mean, log_std)
    old_logp = policies.log_likelihood(data.actions, old.mean, old.log_std)
    surrogate = masked_mean(tf.exp(logp - old_logp) * data.advantages, data.mask)
    kl = masked_mean(policies.kl_divergence(old.mean, old.log_std, mean, log_std), data.mask)
    return surrogate, kl


# ------------------------------------------------------------------------------------------------
# The meta-objective and its curvature (all tasks; tensors with the task axis)


def steps_relaxed_spec(args):
    """``args`` with each tensor replaced by its ``tf.TensorSpec``, the step axis (axis 1) of the fields of
    ``PolicyData`` and ``OldPolicy`` left unknown."""

    def spec(x, relax):
        if not isinstance(x, tf.Tensor):
            return x
        shape = x.shape.as_list()
        if relax and len(shape) >= 2:
            shape[1] = None
        return tf.TensorSpec(shape, x.dtype)

    def walk(x):
        if isinstance(x, (PolicyData, OldPolicy)):
            return type(x)(*(spec(t, True) for t in x))
        if isinstance(x, dict):
            return {k: walk(v) for k, v in x.items()}
        if isinstance(x, (list, tuple)) and not hasattr(x, "_fields"):
            return type(x)(walk(v) for v in x)
        return spec(x, False)

    return walk(args)


class StepsRelaxed:
    """A ``tf.function`` whose first call traces it with the rollouts' step axis unknown.

    With ``reduce_retracing``, TensorFlow traces a function first for the exact shapes of its first call
    and again, with the differing axes unknown, when a call brings other shapes; the two graphs can round
    differently. The step count of a batch changes from one iteration to the next (episodes that end
    early, subsampled curvature rollouts), so a run's first iteration would use the exact-shape graph and
    later ones the relaxed one: a run resumed from a checkpoint would then compute its first iteration with
    another graph than the uninterrupted run did. Tracing the relaxed graph from the start gives every
    iteration the same graph, so that a resume repeats the uninterrupted run (``tests/test_rl_experiment.py``).
    """

    def __init__(self, fn):
        self.fn, self.traced = fn, False

    def __call__(self, *args):
        if not self.traced:
            self.fn.get_concrete_function(*steps_relaxed_spec(args))
            self.traced = True
        return self.fn(*args)

    def experimental_get_tracing_count(self) -> int:
        return self.fn.experimental_get_tracing_count()


class MetaObjective:
    """The functions of theta that TRPO needs, each traced once with the rollouts' step axis unknown
    (``StepsRelaxed``; with ``jit_compile``, XLA compiles the curvature product once per padded shape).

    ``pre`` (pre-update rollouts) is ignored when ``inner_steps == 0``.
    """

    def __init__(self, model: keras.Model, config: Config, hvp_mode: str = "double_backprop"):
        self.model, self.config = model, config
        self.hvp_mode = hvp_mode
        self.task_loss = reinforce_loss(model)  # the inner step's values, and J_i of the KL's curvature
        self.gradient_loss = inner_loss(model, config.inner_surrogate)  # J_i of the meta-gradient
        c = config
        self.loss_and_gradient = StepsRelaxed(tf.function(self._loss_and_gradient, reduce_retracing=True))
        self.loss_and_kl = StepsRelaxed(tf.function(self._loss_and_kl, reduce_retracing=True))
        hvp = {"exact": self._exact_hvp, "gauss_newton": self._gauss_newton_hvp,
               "finite_difference": self._finite_difference_hvp}[c.curvature]
        self.hvp = StepsRelaxed(tf.function(hvp, reduce_retracing=True, jit_compile=c.jit_compile))
        self.adapted = StepsRelaxed(tf.function(self._adapted_values, reduce_retracing=True))
        self.old_policy = StepsRelaxed(tf.function(self._old_policy, reduce_retracing=True))
        self.pre_kl = StepsRelaxed(tf.function(self._pre_kl, reduce_retracing=True))
        self.pre_hvp = StepsRelaxed(tf.function(self._pre_kl_hvp, reduce_retracing=True))

    # -- pieces ----------------------------------------------------------------------------------
    def _adapt_all(self, weights: Weights, pre: PolicyData, first_order: bool) -> Weights:
        """Per-task adapted weights, stacked along a task axis [M, ...] (differentiable in theta)."""
        c = self.config
        return maml.per_task(lambda d: maml.adapt(self.task_loss, weights, d, c.inner_steps, c.inner_lr, first_order),
                             pre, c.layout)

    def _terms(self, weights: Weights, pre: PolicyData, post: PolicyData, old: OldPolicy, first_order: bool,
               task_loss=None):
        """(mean surrogate, mean KL) over tasks, through the inner update (on ``task_loss``, by default
        the REINFORCE loss: the values are the same with either inner surrogate, their gradients not)."""
        c = self.config
        task_loss = task_loss or self.task_loss

        def one_task(d):
            p, q, o = d
            fast = maml.adapt(task_loss, weights, p, c.inner_steps, c.inner_lr, first_order)
            return tf.stack(surrogate_and_kl(self.model, fast, q, o))

        terms = maml.per_task(one_task, (pre, post, old), c.layout)
        return tf.reduce_mean(terms[:, 0]), tf.reduce_mean(terms[:, 1])

    # -- compiled entry points -------------------------------------------------------------------
    def _adapted_values(self, weights: Weights, pre: PolicyData) -> Weights:
        return self._adapt_all(weights, pre, first_order=True)  # values only: no gradient needed

    def _old_policy(self, fast: Weights, post: PolicyData) -> OldPolicy:
        mean, log_std = maml.per_task(lambda d: policies.distribution(self.model, d[0], d[1]), (fast, post.obs),
                                      self.config.layout)
        return OldPolicy(mean, log_std)

    def _loss_and_gradient(self, weights: Weights, pre, post, old):
        with tf.GradientTape() as tape:
            tape.watch(weights)
            surrogate, _ = self._terms(weights, pre, post, old, self.config.first_order, self.gradient_loss)
            loss = -surrogate
        return loss, tape.gradient(loss, weights)

    def _loss_and_kl(self, weights: Weights, pre, post, old):
        surrogate, kl = self._terms(weights, pre, post, old, first_order=True)  # values only
        return -surrogate, kl

    def _pre_kl(self, weights: Weights, pre: PolicyData, old_pre: OldPolicy):
        """Mean over tasks of the KL from the pre-update policy that sampled ``pre`` (``old_pre``) to
        pi_weights, on the pre-update rollouts (no inner step)."""
        kls = maml.per_task(lambda d: surrogate_and_kl(self.model, weights, d[0], d[1])[1], (pre, old_pre),
                            self.config.layout)
        return tf.reduce_mean(kls)

    def _pre_kl_hvp(self, weights: Weights, vector: Weights, pre: PolicyData, old_pre: OldPolicy):
        """H v of the pre-update KL (``kl_constraint="pre"``): plain TRPO's curvature."""
        return trpo.hessian_vector_product(lambda w: self._pre_kl(w, pre, old_pre), weights, vector,
                                           mode=self.hvp_mode)

    def _exact_hvp(self, weights: Weights, vector: Weights, pre, post, old, fast):
        """H v of the meta-KL by nested tapes through the inner update (all data)."""
        del fast
        return trpo.hessian_vector_product(
            lambda w: self._terms(w, pre, post, old, self.config.first_order)[1], weights, vector)

    def _finite_difference_hvp(self, weights: Weights, vector: Weights, pre, post, old, fast):
        """H v of the meta-KL as the authors' TRPO computed it: the symmetric secant of its gradient
        (through the inner update, all data) over theta +- eps v, eps = fd_base_eps / |theta|
        (``rl.trpo.finite_difference_hvp``)."""
        del fast
        return trpo.finite_difference_hvp(
            lambda w: self._terms(w, pre, post, old, self.config.first_order)[1], weights, vector,
            base_eps=self.config.fd_base_eps)

    def _gauss_newton_hvp(self, weights: Weights, vector: Weights, pre, post, old, fast):
        """H v = 1/M sum_i J_i^T F_i J_i v (exact at theta_0, see the module docstring)."""
        c = self.config
        second_order = c.inner_steps > 0 and not c.first_order

        def one_task(d):
            p, q, o, w_fast = d
            jv = self._inner_jacobian_product(weights, p, vector) if second_order else vector
            u = trpo.hessian_vector_product(lambda x: surrogate_and_kl(self.model, x, q, o)[1], w_fast, jv,
                                            mode=self.hvp_mode)
            jtu = self._inner_jacobian_product(weights, p, u) if second_order else u
            return jtu

        products = maml.per_task(one_task, (pre, post, old, fast), c.layout)
        return {k: tf.reduce_mean(g, axis=0) for k, g in products.items()}

    def _inner_jacobian_product(self, weights: Weights, pre_task: PolicyData, vector: Weights) -> Weights:
        """J v for J = d theta' / d theta = I - alpha hess L(theta; D) of one inner step; J is
        symmetric, so this is J^T v too."""
        hv = trpo.hessian_vector_product(lambda w: self.task_loss(w, pre_task), weights, vector, mode=self.hvp_mode)
        return {k: vector[k] - self.config.inner_lr * hv[k] for k in vector}


# ------------------------------------------------------------------------------------------------
# The meta-learner


@dataclasses.dataclass(frozen=True)
class IterationBatch:
    """What one meta-iteration samples: its tasks and the seed of its rollouts."""

    tasks: np.ndarray
    seed: int


class MAMLTRPO:
    """Meta-trains ``model`` (a Gaussian policy from :mod:`rl.policies`) on ``sampler``'s tasks.

    ``step(IterationBatch)`` runs one meta-iteration (sample, adapt, sample, TRPO), updates the
    model's variables and returns a dict of scalars; it is the ``step`` of ``maml_tf.training.train``.
    """

    def __init__(self, model: keras.Model, sampler: Sampler, config: Config):
        self.model, self.sampler, self.config = model, sampler, config
        self.objective = MetaObjective(model, config)
        self.policy_fn = policies.make_policy_fn(model)
        self.last_metrics: dict = {}
        # With baseline="previous_task", the baseline fitted on one batch gives the first task of the next
        # its values; training checkpoints these variables (``state``) so that a resume continues with them.
        self.state: dict = {}
        if config.baseline == "previous_task":
            self.state = {"baseline_weights": tf.Variable(tf.zeros([2 * sampler.obs_dim + 4], tf.float64),
                                                          trainable=False),
                          "baseline_fitted": tf.Variable(False, trainable=False)}

    def _data(self, episodes: Episodes) -> PolicyData:
        c = self.config
        adv = None
        if c.baseline == "previous_task":
            previous = self.state["baseline_weights"].numpy() if self.state["baseline_fitted"].numpy() else None
            adv, _, weights = baselines.previous_task_advantages(
                episodes.rewards, episodes.obs, episodes.mask, previous, c.discount, c.gae_lambda)
            self.state["baseline_weights"].assign(weights)
            self.state["baseline_fitted"].assign(True)
        return policy_data(episodes, c.discount, c.gae_lambda, c.normalize_advantages,
                           dtype=self.model.inputs[0].dtype, advantages=adv)

    def step(self, batch: IterationBatch) -> dict:
        c, obj = self.config, self.objective
        tasks, seed = batch.tasks, int(batch.seed)
        weights = get_weights(self.model)
        times = {"sampling_s": 0.0, "inner_s": 0.0, "trpo_s": 0.0}

        t0 = time.perf_counter()
        restart = c.batch_by == "steps"
        pre_eps = self.sampler.sample(tasks, self.policy_fn(weights, np.random.default_rng([seed, 0])),
                                      c.rollouts_per_task, seed=seed, restart=restart)
        times["sampling_s"] += time.perf_counter() - t0
        t0 = time.perf_counter()
        pre = self._data(pre_eps)
        metrics = {"pre_return": pre_eps.average_return()}
        if c.inner_steps:
            fast = obj.adapted(weights, pre)
            times["inner_s"] += time.perf_counter() - t0
            t0 = time.perf_counter()
            post_eps = self.sampler.sample(tasks, self.policy_fn(fast, np.random.default_rng([seed, 1]), per_task=True),
                                           c.rollouts_per_task, seed=seed + 1, restart=restart)
            times["sampling_s"] += time.perf_counter() - t0
            t0 = time.perf_counter()
            post = self._data(post_eps)
            metrics["post_return"] = post_eps.average_return()
        else:
            fast = policies.stack_weights(weights, len(tasks))
            post_eps, post = pre_eps, pre
            times["inner_s"] += time.perf_counter() - t0
        t0 = time.perf_counter()
        old = obj.old_policy(fast, post)
        pre_c, post_c, old_c = curvature_inputs(c, pre, post, old, lengths=post_eps.lengths)
        if c.jit_compile:  # XLA compiles once per shape: a few padded sizes instead of one per batch
            n_pre, n_post = bucket_size(pre_c.mask.shape[1]), bucket_size(post_c.mask.shape[1])
            pre_c, post_c, old_c = pad_steps(pre_c, n_pre), pad_steps(post_c, n_post), pad_steps(old_c, n_post)

        parts = {"gradient_s": 0.0, "hvp_s": 0.0, "line_search_s": 0.0}

        def timed(name, fn):
            def wrapped(*args):
                start = time.perf_counter()
                out = fn(*args)
                parts[name] += time.perf_counter() - start
                return out
            return wrapped

        # the pre-update policy that sampled ``pre``, on its steps (for the logged pre_kl and kl_constraint)
        old_pre = obj.old_policy(policies.stack_weights(weights, len(tasks)), pre)
        kl_hvp = lambda v: obj.hvp(weights, v, pre_c, post_c, old_c, fast)  # noqa: E731
        loss_and_kl = lambda w: obj.loss_and_kl(w, pre, post, old)  # noqa: E731
        if c.inner_steps and c.kl_constraint == "pre":
            kl_hvp = lambda v: obj.pre_hvp(weights, v, pre, old_pre)  # noqa: E731
            loss_and_kl = lambda w: (obj.loss_and_kl(w, pre, post, old)[0], obj.pre_kl(w, pre, old_pre))  # noqa: E731
        elif c.inner_steps and c.kl_constraint == "both":
            def loss_and_kl(w):
                loss, kl = obj.loss_and_kl(w, pre, post, old)
                return loss, tf.maximum(kl, obj.pre_kl(w, pre, old_pre))

        new_weights, info = trpo.trpo_update(
            weights,
            loss_and_gradient=timed("gradient_s", lambda w: obj.loss_and_gradient(w, pre, post, old)),
            kl_hvp=timed("hvp_s", kl_hvp),
            loss_and_kl=timed("line_search_s", loss_and_kl),
            max_kl=c.max_kl, cg_iterations=c.cg_iterations, damping=c.cg_damping,
            backtrack_ratio=c.backtrack_ratio, max_backtracks=c.max_backtracks)
        pre_kl = float(obj.pre_kl(new_weights, pre, old_pre)) if info["accepted"] else 0.0
        if info["accepted"]:
            for v in self.model.trainable_variables:
                v.assign(new_weights[v.path])
        times["trpo_s"] += time.perf_counter() - t0

        log_std = [v for v in self.model.trainable_variables if v.path.endswith("log_std")]
        metrics.update({
            "surrogate_before": -info["loss_before"], "surrogate_after": -info["loss_after"],
            "kl": info["kl"], "pre_kl": pre_kl, "step_fraction": info["step_fraction"],
            "backtracks": float(info["backtracks"]),
            "std": float(np.mean(np.exp(log_std[0].numpy()))) if log_std else float("nan"),
            "env_steps": float(pre_eps.num_steps + (post_eps.num_steps if c.inner_steps else 0)),
            **times, "iteration_s": sum(times.values()), **{f"trpo_{k}": v for k, v in parts.items()},
        })
        self.last_metrics = metrics
        return metrics

    def score(self) -> float:
        """Average return of the last iteration's post-update rollouts (pre-update if no inner step):
        the validation score that selects the best checkpoint."""
        m = self.last_metrics
        return float(m.get("post_return", m.get("pre_return", -np.inf)))


# ------------------------------------------------------------------------------------------------
# Evaluation: returns after 0, 1, ..., S policy-gradient steps


def adaptation_returns(model: keras.Model, sampler: Sampler, tasks: Sequence, steps: int,
                       inner_lr: maml.LearningRate, rollouts_per_task: int, seed: int,
                       discount: float = 0.99, gae_lambda: float = 1.0, normalize_advantages: bool = True,
                       layout: str = "vectorized", weights: Weights | None = None,
                       restart: bool = False) -> np.ndarray:
    """``[num_tasks, steps + 1]`` average undiscounted returns of each task's rollouts before
    adaptation and after each of ``steps`` policy-gradient steps, each step computed from fresh
    rollouts of the current adapted policy (step s uses ``maml.step_size(inner_lr, s)``). With
    ``restart``, each batch is a step budget of ``rollouts_per_task`` x horizon per task
    (``Sampler.sample``), as the authors' test scripts sampled."""
    weights = get_weights(model) if weights is None else weights
    task_loss = reinforce_loss(model)
    policy_fn = policies.make_policy_fn(model)
    dtype = model.inputs[0].dtype

    @tf.function(reduce_retracing=True)
    def update(fast, data, lr):
        return maml.per_task(lambda d: maml.inner_update(task_loss, d[0], d[1], lr, first_order=True),
                             (fast, data), layout)

    fast = policies.stack_weights(weights, len(tasks))
    returns = np.zeros((len(tasks), steps + 1))
    for s in range(steps + 1):
        episodes = sampler.sample(tasks, policy_fn(fast, np.random.default_rng([seed, s]), per_task=True),
                                  rollouts_per_task, seed=seed + s, restart=restart)
        returns[:, s] = episodes.task_returns()
        if s < steps:
            data = policy_data(episodes, discount, gae_lambda, normalize_advantages, dtype=dtype)
            fast = update(fast, data, tf.constant(maml.step_size(inner_lr, s), dtype=dtype))
    return returns
