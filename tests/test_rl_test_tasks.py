"""The authors' RL test tasks (rl.evaluation.authors_test_tasks) against their test scripts' recipe.

Their scripts (maml_examples/test_maml_*.py) seed NumPy's global generator and draw 40 goals with
np.random.uniform; the direction environments turn a draw below the middle of the range into
direction -1 (their goal_direction). The references below use the global-state API, as they do.
"""

import numpy as np
import pytest

from rl import evaluation
from rl.presets import PRESETS
from rl.sampler import Sampler

RECIPES = {  # task: (np.random.seed, low, high, size, draw below which the direction is -1)
    "navigation": (1, -0.5, 0.5, (40, 2), None),
    "halfcheetah_vel": (1, 0.0, 2.0, (40,), None),
    "halfcheetah_dir": (1, 0.0, 2.0, (40,), 1.0),
    "ant_vel": (1, 0.0, 3.0, (40,), None),
    "ant_dir": (2, 0.0, 3.0, (40,), 1.5),
}


def scripts_goals(seed, low, high, size):
    state = np.random.get_state()
    try:
        np.random.seed(seed)
        return np.random.uniform(low, high, size=size)
    finally:
        np.random.set_state(state)


@pytest.mark.parametrize("task", sorted(RECIPES))
def test_authors_test_tasks_follow_their_scripts(task):
    seed, low, high, size, threshold = RECIPES[task]
    goals = scripts_goals(seed, low, high, size)
    expected = goals if threshold is None else np.where(goals < threshold, -1.0, 1.0)
    tasks = evaluation.authors_test_tasks(task)
    assert tasks.shape == size and np.array_equal(tasks, expected)
    assert np.array_equal(evaluation.authors_test_tasks(task, 7), tasks[:7])  # a prefix of the 40
    if threshold is not None:
        assert set(np.unique(tasks)) == {-1.0, 1.0}
    with Sampler(PRESETS[task].env_id, num_workers=0) as sampler:  # each is a valid task of the family
        for t in tasks:
            sampler.env_class.family.validate(t)


def test_every_rl_task_has_its_authors_test_tasks():
    assert set(RECIPES) == set(PRESETS)
