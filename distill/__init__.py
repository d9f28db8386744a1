"""distill/: knowledge distillation, teacher -> student, with the ablation that proves it (issue 16).

    from distill import tasks, experiment
    task = tasks.get("digits")                      # or "lm" (the models/ language model)
    res = experiment.run(task, task.students["mlp32"], seeds=(0, 1, 2), quick=True)
    res.summary()                                   # KD and no-teacher ablation: mean, sd, gain, retained

Modules: losses (Hinton soft targets + hard labels, feature loss through a learned projection), tasks (the
two tasks: teachers, students, data, quality), train (one deterministic, resumable training loop, DDP under
torchrun), experiment (seeds x {kd, kd+feature, alone}, cached), cli (`python bench.py distill`).
docs/distill.md has the method, the figures and the limits.
"""
from distill.losses import DistillError, feature_loss, kd_loss  # noqa: F401
