"""The output-layer initialisation of the paper's networks (``output_init``)."""

import os
import sys

import keras
import numpy as np
import pytest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "experiments"))

import fewshot_flags  # noqa: E402
from maml_tf import batched, maml, models  # noqa: E402


def kernels(model):
    return {v.path: np.asarray(v) for v in model.trainable_variables if v.path.endswith("kernel")}


@pytest.mark.parametrize("build", [
    lambda init: models.omniglot_conv(20, output_init=init),
    lambda init: models.mlp_classifier(20, output_init=init),
    lambda init: models.conv_classifier(20, (12, 12, 3), filters=64, blocks=2, downsample="maxpool", output_init=init),
])
def test_output_init_changes_only_the_output_kernel(build):
    keras.utils.set_random_seed(3)
    glorot = kernels(build("glorot"))
    keras.utils.set_random_seed(3)
    normal = kernels(build("normal"))
    out = next(p for p in glorot if "logits" in p)
    for path in glorot:
        if path != out:
            np.testing.assert_array_equal(glorot[path], normal[path])
    fan_in, fan_out = glorot[out].shape
    limit = np.sqrt(6.0 / (fan_in + fan_out))  # Glorot uniform: U(-limit, limit), std limit / sqrt(3)
    assert np.abs(glorot[out]).max() <= limit
    assert glorot[out].std() == pytest.approx(limit / np.sqrt(3.0), rel=0.1)
    w = normal[out]  # N(0, 1), as the authors' Omniglot output layer
    assert w.std() == pytest.approx(1.0, rel=0.1) and abs(w.mean()) < 0.15 and np.abs(w).max() > 2.5


def test_output_init_choices():
    assert fewshot_flags.OUTPUT_INITS == models.OUTPUT_INITS  # the flag module cannot import TensorFlow
    with pytest.raises(ValueError, match="output_init must be one of"):
        models.omniglot_conv(5, output_init="uniform")


def test_compute_dtype_choices_match_the_library():
    assert fewshot_flags.COMPUTE_DTYPES == batched.COMPUTE_DTYPES  # the flag module cannot import TensorFlow


def test_layout_choices_match_the_library():
    assert set(fewshot_flags.LAYOUTS) == set(maml.LAYOUTS)  # the flag module cannot import TensorFlow


def test_fewshot_module_imports_as_a_package_module_from_the_project_root():
    """Without experiments/ on sys.path (the entry points and these tests add it), a researcher's script at
    the project root can still ``import experiments.fewshot``."""
    import subprocess
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    code = ("import sys; sys.path = [p for p in sys.path if not p.rstrip('/').endswith('experiments')]; "
            "import experiments.fewshot as f; print(f.INNER_LOSS_REDUCTIONS)")
    out = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == str(fewshot_flags.INNER_LOSS_REDUCTIONS)
