"""`python bench.py distill [--task digits|lm] [--student NAME] [--seeds 0,1,2] [--steps N] [--temperature T]
[--alpha A] [--beta B] [--labels SHARE] [--modes kd,kd+feat,alone] [--json]`: train students with and
without their teacher (cached, resumable, progress bars) and print the ablation: per mode the mean and
standard deviation over the seeds, the teacher's figure, the share retained, the gain over the ablation
and how many pooled standard deviations it is. Timing is the `distill` suite's (`bench.py --suite
distill`). Bad input (an unknown task or student, T <= 0, a student larger than its teacher): one line,
exit 2.
"""
from __future__ import annotations

import argparse
import json
import sys


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:
        print(f"bench.py distill: error: {message}", file=sys.stderr)
        sys.exit(2)


def parser() -> argparse.ArgumentParser:
    p = _Parser(prog="bench.py distill", description="Distil students and measure the no-teacher ablation.")
    p.add_argument("--task", default="digits", help="digits (default), lm (the tiny model), lm-test")
    p.add_argument("--student", default=None, help="a student of the task (default: all of them)")
    p.add_argument("--seeds", default="0,1,2", help="comma-separated seeds (default 0,1,2)")
    p.add_argument("--steps", type=int, default=None, help="optimizer steps (default: the task's quick steps)")
    p.add_argument("--full", action="store_true", help="the task's full step count")
    p.add_argument("--temperature", type=float, default=None, help="soft-target temperature T > 0")
    p.add_argument("--alpha", type=float, default=None, help="weight of the soft-target term, in [0, 1]")
    p.add_argument("--beta", type=float, default=1.0, help="weight of the feature loss (mode kd+feat)")
    p.add_argument("--labels", type=float, default=1.0, help="share of training inputs with labels, (0, 1]")
    p.add_argument("--modes", default="kd,kd+feat,alone", help="comma-separated: kd, kd+feat, alone")
    p.add_argument("--threads", type=int, default=None, help="CPU threads")
    p.add_argument("--json", action="store_true", help="print the summaries as JSON")
    p.add_argument("--no-progress", action="store_true")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    from distill import experiment, tasks
    from distill.losses import DistillError
    from distill.train import MODES, Hyper
    from suites.distill import HYPER
    try:
        seeds = tuple(int(s) for s in args.seeds.split(",") if s.strip())
    except ValueError:
        print(f"bench.py distill: error: --seeds takes integers, got {args.seeds!r}", file=sys.stderr)
        return 2
    modes = tuple(m.strip() for m in args.modes.split(",") if m.strip())
    try:
        if not seeds:
            raise DistillError("--seeds names no seed")
        bad = [m for m in modes if m not in MODES]
        if bad or not modes:
            raise DistillError(f"unknown mode(s) {', '.join(bad) or '(none)'}: choose from {', '.join(MODES)}")
        if args.steps is not None and args.steps < 1:
            raise DistillError("--steps must be at least 1")
        if args.threads is not None:
            if args.threads < 1:
                raise DistillError("--threads must be at least 1")
            import torch
            torch.set_num_threads(args.threads)
        task = tasks.get(args.task)
        hp = dict(HYPER[args.task])
        if args.temperature is not None:
            hp["temperature"] = args.temperature
        if args.alpha is not None:
            hp["alpha"] = args.alpha
        hyper = Hyper(beta=args.beta, labels=args.labels, **hp)
        hyper.check()
        students = [args.student] if args.student else list(task.students)
        for s in students:
            if s not in task.students:
                raise DistillError(f"unknown student {s!r} for {task.name}: choose from {', '.join(task.students)}")
        steps = args.steps or task.steps["full" if args.full else "quick"]
        summaries = [experiment.run(task, s, seeds=seeds, steps=steps, hyper=hyper, modes=modes,
                                    progress=not args.no_progress).summary() for s in students]
    except DistillError as exc:
        print(f"bench.py distill: error: {exc}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(summaries, indent=1))
        return 0
    from rich.table import Table

    from harness.ui import out_console
    t = Table(title=f"distill {task.name}: {len(seeds)} seeds, {steps} steps, T={hyper.temperature:g}, "
                    f"alpha={hyper.alpha:g}, labels={hyper.labels:g}")
    for c in ("student", "params (teacher)", "mode", task.quality_metric + " mean +- sd", "teacher",
              "retained %", "gain vs alone", "gain / pooled sd", "train s"):
        t.add_column(c)
    for s in summaries:
        for m in modes:
            gain = s.get(f"{m}_gain")
            t.add_row(s["student"], f"{s['params']:,} ({s['teacher_params']:,})", m,
                      f"{s[f'{m}_mean']:.4f} +- {s[f'{m}_sd']:.4f}", f"{s['teacher_quality']:.4f}",
                      f"{s[f'{m}_retained_pct']:.1f}" if f"{m}_retained_pct" in s else "",
                      f"{gain:+.4f}" if gain is not None else "",
                      f"{s[f'{m}_gain_sigmas']:.1f}" if gain is not None else "", f"{s[f'{m}_train_s']:.1f}")
    out_console.print(t)
    return 0
