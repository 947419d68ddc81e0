"""Settings every test process needs before TensorFlow is imported."""

import os

# The batched layout's grouped convolutions run on CPUs only through oneDNN, which TensorFlow turns on
# by default only on some processors (maml_tf.batched.grouped_conv_problem); the entry points set this too.
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")

import pytest  # noqa: E402  (after the environment is set)


@pytest.fixture(scope="session")
def needs_bfloat16_convolutions():
    """Skips a test of bfloat16 training where this processor cannot run bfloat16 grouped convolutions and
    their gradients (oneDNN does not on a CPU without AVX-512); the library refuses bfloat16 there."""
    from maml_tf import batched
    problem = batched.grouped_conv_problem("bfloat16")
    if problem:
        pytest.skip(f"bfloat16 is refused on this processor: {problem}")
