"""`python bench.py model [--model tiny|small|test|PATH] ...`: load (training on first use) and evaluate a
model: parameters, training time and load, FLOPs and MFU, held-out bits per byte against the unigram and
bigram baselines, a greedy sample, and the digits classifier's accuracy. Bad input: one line, exit 2.
"""
from __future__ import annotations

import argparse
import json
import sys
import time


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:
        print(f"bench.py model: error: {message}", file=sys.stderr)
        sys.exit(2)


def parser() -> argparse.ArgumentParser:
    p = _Parser(prog="bench.py model", description="Train (first use) and evaluate a model.")
    p.add_argument("--model", default="tiny", help="tiny (default), small (for GPUs), test, or a checkpoint dir")
    p.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    p.add_argument("--threads", type=int, default=None, help="CPU threads for training and evaluation")
    p.add_argument("--retrain", action="store_true", help="train again even if the cache is valid")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--json", action="store_true", help="print the figures as JSON")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    import torch

    from models import digits, evaluate, zoo
    from models.configs import Recipe
    if args.device not in ("cpu", "cuda"):
        print(f"bench.py model: error: unknown device {args.device!r}; choose from: cpu, cuda", file=sys.stderr)
        return 2
    if args.device == "cuda" and not torch.cuda.is_available():
        print("bench.py model: error: --device cuda asked for, but no CUDA GPU is visible", file=sys.stderr)
        return 2
    if args.threads is not None:
        if args.threads < 1:
            print("bench.py model: error: --threads must be at least 1", file=sys.stderr)
            return 2
        torch.set_num_threads(args.threads)
    try:
        target = zoo.resolve(args.model)
        if args.retrain and isinstance(target, Recipe):
            zoo.build(target, device=args.device, progress=not args.no_progress, force=True)
        lm = zoo.load(args.model, device=args.device, progress=not args.no_progress)
    except zoo.ModelError as exc:
        print(f"bench.py model: error: {exc}", file=sys.stderr)
        return 2
    t0 = time.perf_counter()
    figures = dict(model=lm.name, path=str(lm.path), params=sum(p.numel() for p in lm.model.parameters()),
                   heldout_bpb=evaluate.bits_per_byte(lm), unigram_bpb=evaluate.unigram_bpb(),
                   bigram_bpb=evaluate.bigram_bpb())
    figures["eval_s"] = time.perf_counter() - t0
    sample = evaluate.greedy_tokens(lm, evaluate.PROMPTS[:1], 48)[0]
    figures["sample"] = evaluate.PROMPTS[0] + lm.decode(sample)
    t0 = time.perf_counter()
    clf = digits.train()
    figures["digits_accuracy"] = evaluate.accuracy(clf, *digits.test_split())
    figures["digits_train_s"] = time.perf_counter() - t0
    m = lm.meta
    for k in ("train_seconds", "cpu_seconds", "threads", "loadavg_before", "loadavg_after", "tokens_per_s", "train_flops",
              "train_tflops", "mfu", "peak_tflops", "peak_source"):
        figures[k] = m.get(k)
    if args.json:
        print(json.dumps(figures, indent=1))
        return 0
    from rich.table import Table

    from harness.ui import out_console
    t = Table(title=f"model {lm.name}", show_header=False)
    fmt = {float: lambda v: f"{v:.4g}"}
    for k, v in figures.items():
        t.add_row(k, fmt.get(type(v), str)(v) if v is not None else "")
    out_console.print(t)
    return 0
