"""Settings every test process needs before TensorFlow is imported."""

import os

# The batched layout's grouped convolutions run on CPUs only through oneDNN, which TensorFlow turns on
# by default only on some processors (maml_tf.batched.grouped_conv_problem); the entry points set this too.
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")
