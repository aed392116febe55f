"""Training of the MoEDiff-SR teacher and the distilled student (pure torch/numpy/scipy).

``sr/pairs.py`` (outside this package, shared with per-scan adaptation) simulates
low-resolution acquisitions and cuts training pairs, ``sr/objectives.py`` the mean-regression
loss; ``losses`` holds the teacher (MoE) and diffusion-student objectives, ``loop`` the
optimisation loop (EMA, cosine LR, budgets), ``distill`` progressive distillation with feature
guidance, and ``evaluate`` held-out metrics.
Nothing here imports nipype, pybids or the app config.
"""
