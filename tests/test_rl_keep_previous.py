"""rl.evaluation.keep_previous: an evaluation of some methods keeps the other methods' results of the folder's
earlier metrics.json when both measured the same protocol on the same test tasks, and only then."""

import copy

import numpy as np

from rl import evaluation


def metrics(methods, command, *, num_tasks=3, seed=1, shift=0.0, maml_lr=0.5, iterations=100, trained_s=500.0,
            eval_s=20.0, test_tasks="authors"):
    """A metrics dict of rl.evaluation.evaluate's layout for ``methods``, with returns offset by ``shift``."""
    tasks = np.linspace(-0.4, 0.4, 2 * num_tasks).reshape(num_tasks, 2).tolist()
    results = {m: {"returns": [-40.0 + shift + i, -10.0 + shift], "stderr": [2.0, 1.0], "num_tasks": num_tasks,
                   "per_task": [[-40.0 + shift + i, -10.0 + shift]] * num_tasks} for i, m in enumerate(methods)}
    training = {m: {"checkpoint": "best", "iteration": iterations - 5, "trained_iterations": iterations,
                    "wall_time_s": trained_s - 10, "trained_wall_time_s": trained_s}
                for m in methods if m != "random"}
    config = {"task": "navigation", "env_id": "maml_tf/Navigation2D-v1",
              "oracle_env_id": "maml_tf/Navigation2DOracle-v1",
              "env_ids": {m: "maml_tf/Navigation2DOracle-v1" if m == "oracle" else "maml_tf/Navigation2D-v1"
                          for m in methods},
              "num_tasks": num_tasks, "steps": 1, "rollouts_per_task": 40, "batch_by": "steps", "horizon": 100,
              "test_lrs": {m: [] if m == "oracle" else [maml_lr] for m in methods}, "checkpoint": "best",
              "methods": list(methods), "test_tasks": test_tasks, "random_activation": "tanh",
              "maml_run": {"inner_lr": maml_lr, "seed": 0}}
    return {"config": config, "seed": seed, "tasks": tasks, **evaluation._times(training, eval_s),
            "training": training, "command": command, "results": results, "skipped": []}


def test_the_other_methods_of_the_same_protocol_are_kept():
    previous = metrics(["maml", "random", "oracle"], "old", maml_lr=0.3, iterations=100, trained_s=500.0)
    new = metrics(["random"], "new", shift=7.0, eval_s=20.0)
    untouched = copy.deepcopy(new)
    merged, kept, why = evaluation.keep_previous(new, previous)
    assert new == untouched  # the evaluation's own dict is not changed
    assert kept == ["maml", "oracle"] and why is None
    assert list(merged["results"]) == ["maml", "random", "oracle"] == merged["config"]["methods"]
    assert merged["results"]["random"] == new["results"]["random"]  # this evaluation's
    for m in ("maml", "oracle"):
        assert merged["results"][m] == previous["results"][m]
        assert merged["config"]["test_lrs"][m] == previous["config"]["test_lrs"][m]
        assert merged["config"]["env_ids"][m] == previous["config"]["env_ids"][m]
        assert merged["training"][m] == previous["training"][m]
    assert merged["carried_over"] == {"maml": "old", "oracle": "old"} and merged["command"] == "new"
    # the MAML run the kept result belongs to, and its iterations and training time beside this evaluation's
    assert merged["config"]["maml_run"] == {"inner_lr": 0.3, "seed": 0}
    assert merged["iterations"] == 100 and merged["train_wall_time_s"] == 500.0
    assert merged["eval_wall_time_s"] == 20.0 and merged["wall_time_s"] == 520.0

    # kept again later: each result still names the command that measured it
    newer = metrics(["maml"], "newer", shift=3.0, iterations=200, trained_s=900.0, eval_s=30.0)
    merged2, kept2, _ = evaluation.keep_previous(newer, merged)
    assert kept2 == ["random", "oracle"]
    assert merged2["carried_over"] == {"random": "new", "oracle": "old"}
    assert merged2["results"]["maml"] == newer["results"]["maml"]
    assert merged2["iterations"] == 200 and merged2["wall_time_s"] == 930.0
    assert merged2["config"]["maml_run"] == newer["config"]["maml_run"]


def test_nothing_is_kept_from_another_protocol_or_other_test_tasks():
    previous = metrics(["maml", "random"], "old")
    cases = {  # what differs: the new evaluation
        "num_tasks 3 against 4": metrics(["maml"], "new", num_tasks=4),
        "seed 1 against 2": metrics(["maml"], "new", seed=2),
        "test_tasks 'authors' against 'seeded'": metrics(["maml"], "new", test_tasks="seeded"),
    }
    other_tasks = metrics(["maml"], "new")
    other_tasks["tasks"][0][0] += 0.1
    cases["other test tasks"] = other_tasks
    for difference, new in cases.items():
        merged, kept, why = evaluation.keep_previous(new, previous)
        assert merged is new and kept == [] and why == difference
    # an evaluation made before config.test_tasks existed used seeded tasks
    legacy = metrics(["maml", "random"], "old")
    del legacy["config"]["test_tasks"]
    assert evaluation.keep_previous(metrics(["maml"], "new"), legacy)[2] == "test_tasks 'seeded' against 'authors'"
    # nothing to keep: every method of the previous evaluation was evaluated again
    new = metrics(["maml", "random"], "new")
    assert evaluation.keep_previous(new, previous) == (new, [], None)
