"""MAML-TRPO meta-training, 2D navigation (paper section 5.3): meta-batch 20, horizon 100.

    python rl/train_navigation.py [--method=maml|pretrained|oracle] [--iterations=500] [--logdir=...]

All flags and the training code are in rl/train.py (``--helpfull`` lists them).
"""

from rl import train

if __name__ == "__main__":
    train.run("navigation")
