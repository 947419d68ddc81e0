r"""Check: how well the MAML-TRPO curvature's approximations match the exact meta-KL Hessian, on one
real batch of a trained run.

Restores the latest checkpoint of a MAML run (``--logdir``; its config.json gives the environment and
settings), samples one meta-batch (pre-update rollouts, inner step, post-update rollouts), and computes
the TRPO step on the same data with three curvatures:

    exact          Hessian-vector products of the meta-KL itself, all rollouts (``curvature="exact"``)
    default        J^T F J with F on the first ``hvp_subsample`` of the post-update rollouts and J on all
                   pre-update rollouts (``rl.maml_trpo.curvature_inputs``, what training uses)
    subsampled_J   the same, but J also on the first ``hvp_subsample`` of the pre-update rollouts (the
                   choice made before 2026-11-23; kept here to show why it was dropped)

and prints one JSON line per curvature: step norm, expected improvement of the linear model, the KL
and surrogate after the line search, and the cosine of the step to the exact one.

    python benchmarks/curvature.py --logdir=results/rl/halfcheetah_dir/maml
"""

import json
import os
import sys
import time

from absl import app, flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # this checkout's packages first

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")  # as rl/train.py, before TensorFlow (a user's value wins)

import dataclasses  # noqa: E402

import numpy as np  # noqa: E402

from maml_tf.cli import one_sentence_errors, quiet_tensorflow  # noqa: E402
from maml_tf.functional import get_weights  # noqa: E402
from maml_tf.training import make_checkpoint, restore  # noqa: E402
from rl import maml_trpo, policies, trpo  # noqa: E402
from rl.presets import current_settings  # noqa: E402
from rl.sampler import Sampler  # noqa: E402

flags.DEFINE_string("logdir", None, "A MAML run directory (with config.json and ckpt/).", required=True)
flags.DEFINE_integer("seed", 123, "Seed of the batch's tasks and rollouts.", lower_bound=0)
flags.DEFINE_integer("num_workers", None, "Sampler processes (default: one per core).", lower_bound=0)
FLAGS = flags.FLAGS


@one_sentence_errors
def main(argv):
    quiet_tensorflow()
    path = os.path.join(FLAGS.logdir, "config.json")
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path} does not exist; pass the directory of a MAML run.")
    with open(path) as f:
        s = current_settings(json.load(f))  # with any KL limit etc. changed on resume
    if s.get("inner_steps") != 1:
        raise ValueError(f"{FLAGS.logdir} is not a MAML run (inner_steps={s.get('inner_steps')}).")
    base = maml_trpo.Config.from_settings(s)
    R = base.rollouts_per_task
    with Sampler(s["env_id"], num_workers=FLAGS.num_workers, horizon=s["horizon"]) as sampler:
        model = policies.gaussian_mlp_policy(sampler.obs_dim, sampler.act_dim, hidden=tuple(s["hidden"]),
                                             init_std=s["init_std"], seed=s["seed"])
        checkpoint = make_checkpoint(model, None)
        restored = restore(checkpoint, os.path.join(FLAGS.logdir, "ckpt"))
        if restored is None:
            raise FileNotFoundError(f"No checkpoint in {FLAGS.logdir}/ckpt.")
        learner = maml_trpo.MAMLTRPO(model, sampler, base)
        w = get_weights(model)
        tasks = sampler.sample_tasks(s["meta_batch_size"], np.random.default_rng(FLAGS.seed))
        restart = base.batch_by == "steps"  # batches as the run was trained (maml_trpo.MAMLTRPO.step)
        pre_eps = sampler.sample(tasks, learner.policy_fn(w, np.random.default_rng([FLAGS.seed, 0])), R,
                                 seed=FLAGS.seed, restart=restart)
        pre = learner._data(pre_eps)
        fast = learner.objective.adapted(w, pre)
        post_eps = sampler.sample(tasks, learner.policy_fn(fast, np.random.default_rng([FLAGS.seed, 1]), per_task=True),
                                  R, seed=FLAGS.seed + 1, restart=restart)
        post = learner._data(post_eps)
        old = learner.objective.old_policy(fast, post)

        exact = dataclasses.replace(base, curvature="exact")
        # episode counts per task may exceed R where episodes ended early (step-budget batches)
        variants = {"exact": (exact, maml_trpo.curvature_inputs(exact, pre, post, old, lengths=post_eps.lengths)),
                    "default": (base, maml_trpo.curvature_inputs(base, pre, post, old, lengths=post_eps.lengths))}
        _, post_c, old_c = variants["default"][1]
        keep = maml_trpo.curvature_rollouts(base, pre_eps.rollouts_per_task)
        variants["subsampled_J"] = (base, (maml_trpo.subsample_rollouts(pre, pre_eps.lengths, keep), post_c, old_c))

        steps, rows = {}, []
        for name, (config, (pre_c, post_c, old_c)) in variants.items():
            obj = maml_trpo.MetaObjective(model, config)
            t0 = time.perf_counter()
            new, info = trpo.trpo_update(
                w, lambda x: obj.loss_and_gradient(x, pre, post, old),
                lambda v: obj.hvp(w, v, pre_c, post_c, old_c, fast),
                lambda x: obj.loss_and_kl(x, pre, post, old),
                max_kl=config.max_kl, cg_iterations=config.cg_iterations, damping=config.cg_damping,
                backtrack_ratio=config.backtrack_ratio, max_backtracks=config.max_backtracks)
            steps[name] = (trpo.flatten(new) - trpo.flatten(w)).numpy().astype(np.float64)
            rows.append({"curvature": name, "step_norm": float(np.linalg.norm(steps[name])),
                         "expected_improvement": info["expected_improvement"],
                         "surrogate_gain": -info["loss_after"] + info["loss_before"], "kl": info["kl"],
                         "step_fraction": info["step_fraction"], "s": round(time.perf_counter() - t0, 1)})
        for row in rows:
            a, b = steps[row["curvature"]], steps["exact"]
            row["cosine_to_exact"] = float(a @ b / max(np.linalg.norm(a) * np.linalg.norm(b), 1e-30))
            print(json.dumps({"benchmark": "curvature", "checkpoint": restored, "env_id": s["env_id"],
                              "num_tasks": len(tasks), "rollouts": R, "hvp_subsample": base.hvp_subsample,
                              "pre_return": pre_eps.average_return(), "post_return": post_eps.average_return(),
                              **row}), flush=True)
    return 0


if __name__ == "__main__":
    app.run(main)
