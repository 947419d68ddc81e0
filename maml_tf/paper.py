"""Numbers printed in the paper (or computed from the authors' published evaluation files), for
reporting beside ours. Transcribed from the project's reference sheet
(shared/reference/paper_numbers.md, which cites Finn, Abbeel & Levine, ICML 2017, arXiv:1703.03400 v3);
never typed from memory. Accuracies in percent; ``ci95`` is the paper's 95% confidence interval.
"""

# Section 5.1, appendix Table 2: sinusoid, K = 5, MSE after n gradient steps.
SINUSOID_K5 = {
    "source": "paper appendix Table 2 (K=5); MSE after 1, 5, 10 steps",
    "steps": [1, 5, 10],
    "maml": [0.67, 0.38, 0.35],
    "pretrained": [2.41, 2.23, 2.19],
}
# Figure 3 (K = 10) is only readable approximately from the figure.
SINUSOID_K10_FIGURE3 = {
    "source": "paper Figure 3 (K=10), read off the figure, approximate",
    "maml_0_steps": "about 3", "maml_1_step": "about 0.3-0.5", "maml_9_steps": "about 0.1-0.2",
    "pretrained": "near 2", "oracle": "near 0.05",
}

# Table 1: few-shot classification test accuracy (percent) with 95% CI.
CLASSIFICATION = {
    "omniglot": {
        "5way1shot": {"accuracy": 98.7, "ci95": 0.4},
        "5way5shot": {"accuracy": 99.9, "ci95": 0.1},
        "20way1shot": {"accuracy": 95.8, "ci95": 0.3},
        "20way5shot": {"accuracy": 98.9, "ci95": 0.2},
    },
    "omniglot_mlp": {
        "5way1shot": {"accuracy": 89.7, "ci95": 1.1},
        "5way5shot": {"accuracy": 97.5, "ci95": 0.6},
    },
    "miniimagenet": {
        "5way1shot": {"accuracy": 48.70, "ci95": 1.84},
        "5way5shot": {"accuracy": 63.11, "ci95": 0.92},
    },
    "miniimagenet_first_order": {
        "5way1shot": {"accuracy": 48.07, "ci95": 1.75},
        "5way5shot": {"accuracy": 63.15, "ci95": 0.91},
    },
}

# Section 5.3, Figures 4-5 (authors' data): average return after 0, 1, 2, 3 policy-gradient steps
# over 40 test tasks; MAML with its standard error, baselines as means.
RL = {
    "navigation": {
        "maml": {"returns": [-40.41, -11.68, -3.33, -3.23], "stderr": [2.0, 1.1, 0.28, 0.29]},
        "pretrained": {"returns": [-40.81, -19.73, -11.72, -8.47]},
        "random": {"returns": [-82.66, -57.96, -53.84, -46.81]},
        "oracle": {"returns": [-2.29]},
    },
    "halfcheetah_vel": {
        "maml": {"returns": [-129.5, -78.6, -66.6, -60.8], "stderr": [8.4, 5.0, 4.6, 4.4]},
        "pretrained": {"returns": [-158.0, -135.4, -128.5, -133.6]},
        "random": {"returns": [-254.8, -254.3, -246.8, -230.8]},
        "oracle": {"returns": [-54.5]},
    },
    "halfcheetah_dir": {
        "maml": {"returns": [-50.69, 293.19, 313.48, 315.65], "stderr": [2.9, 8.7, 8.0, 7.1]},
        "pretrained": {"returns": [-43.0, -24.8, -12.9, 19.6]},
        "random": {"returns": [-35.7, 21.8, 62.3, 86.2]},
        "oracle": {"returns": [442.7]},
    },
    "ant_vel": {
        "maml": {"returns": [30.6, 96.7, 100.1, 101.4], "stderr": [15, 11, 11, 11]},
        "pretrained": {"returns": [-1.8, 6.1, 8.5, 9.5]},
        "random": {"returns": [-78.6, -62.8, -48.6, -35.6]},
        "oracle": {"returns": [107.9]},
    },
    "ant_dir": {
        "maml": {"returns": [8.7, 499.2, 500.7, 499.1], "stderr": [7, 16, 16, 17]},
        "pretrained": {"returns": [3.2, 1.3, 6.5, 6.9]},
        "random": {"returns": [3.1, 9.3, 16.0, 26.1]},
        "oracle": {"returns": [524.8]},
    },
}
