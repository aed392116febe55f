"""Training of the MoEDiff-SR teacher and the distilled student (pure torch/numpy/scipy).

``data`` simulates low-resolution acquisitions and cuts training pairs, ``losses`` holds the
teacher (MoE) and student objectives, ``loop`` the optimisation loop (EMA, cosine LR, budgets),
``distill`` progressive distillation with feature guidance, and ``evaluate`` held-out metrics.
Nothing here imports nipype, pybids or the app config.
"""
