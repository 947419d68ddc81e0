"""MAML-TRPO meta-training, Ant forward/backward (paper section 5.3): meta-batch 40, horizon 200.

    python rl/train_ant_dir.py [--method=maml|pretrained|oracle] [--iterations=500] [--logdir=...]

All flags and the training code are in rl/train.py (``--help`` lists them).
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # this checkout's packages first

if __name__ == "__main__":  # (imported here: the sampler's worker processes re-import this file, and
    from rl import train  # need no TensorFlow)
    train.run("ant_dir")
