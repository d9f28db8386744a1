"""Steps per second of a saturated engine, two source trees side by side (issue 19: the per-step cost).

    python scripts/engine_steps.py [--before /work/main] [--after .] [--rounds 5] [--seqs 32] [--steps 60]

Each round runs one child process per tree, alternating which goes first (ABBA), from that tree's root (its
inference/ and its build/lib). A child loads `tiny`, submits `--seqs` requests (48-token prompts, as many
output tokens as the context leaves, ignore_eos), steps until every sequence decodes, then times `--steps`
decode steps of all of them (engine.step(): schedule, forward, sample, emit; events to a no-op sink) and
prints steps/s. One thread (`torch.set_num_threads(1)`); pin the whole command (`taskset -c 1`). The result:
each tree's median steps/s over the rounds with its min-max, and the ratio of the medians, with `uptime`.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

CHILD = r"""
import json, sys, time, torch
torch.set_num_threads(1)
from models.zoo import load
from inference.engine import Engine
from inference.requests import SamplingParams
seqs, steps = int(sys.argv[1]), int(sys.argv[2])
lm = load("tiny", progress=False)
eng = Engine(lm, max_num_seqs=seqs, max_tokens_per_step=4096)
g = torch.Generator().manual_seed(0)
for i in range(seqs):
    p = torch.randint(32, 127, (48,), generator=g).tolist()
    eng.submit(p, SamplingParams(max_tokens=lm.context - 48, ignore_eos=True), lambda ev: None)
while any(r.remaining != 1 for r in eng.scheduler.running) or eng.scheduler.waiting or not eng.scheduler.running:
    eng.step()
for _ in range(5):
    eng.step()
t = time.perf_counter()
for _ in range(steps):
    eng.step()
dt = time.perf_counter() - t
assert len(eng.scheduler.running) == seqs, "a sequence finished during the timed steps"
print(json.dumps({"steps_per_s": steps / dt, "decode_kernel": eng.model.decode_kernel}))
"""


def child(tree: Path, seqs: int, steps: int) -> dict:
    env = dict(os.environ, PYTHONPATH=str(tree))
    env.setdefault("KB_MODELS_CACHE", str(Path(__file__).resolve().parents[1] / ".cache" / "models"))
    out = subprocess.run([sys.executable, "-c", CHILD, str(seqs), str(steps)], cwd=tree, env=env,
                         capture_output=True, text=True, timeout=600)
    if out.returncode:
        raise SystemExit(f"engine_steps: the child in {tree} failed: {out.stderr.strip().splitlines()[-1:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--before", default="/work/main")
    p.add_argument("--after", default=str(Path(__file__).resolve().parents[1]))
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--seqs", type=int, default=32)
    p.add_argument("--steps", type=int, default=60)
    a = p.parse_args(argv)
    if a.rounds < 1 or a.seqs < 1 or not 1 <= a.steps <= 150:
        p.error("--rounds and --seqs must be >= 1, --steps in 1..150 (the tiny model's context bounds a sequence)")
    trees = {"before": Path(a.before).resolve(), "after": Path(a.after).resolve()}
    for name, t in trees.items():
        if not (t / "inference" / "engine.py").is_file():
            p.error(f"--{name} {t}: not a kbench tree")
    got: dict[str, list[float]] = {"before": [], "after": []}
    kernel = {}
    load = [os.getloadavg()[0]]
    for r in range(a.rounds):
        order = ["before", "after"] if r % 2 == 0 else ["after", "before"]
        for name in order:
            res = child(trees[name], a.seqs, a.steps)
            got[name].append(res["steps_per_s"])
            kernel[name] = res["decode_kernel"]
        load.append(os.getloadavg()[0])
        print(f"round {r + 1}: " + ", ".join(f"{n} {got[n][-1]:.1f}" for n in ("before", "after")), flush=True)
    med = {n: statistics.median(v) for n, v in got.items()}
    for n in ("before", "after"):
        print(f"{n:6s} {trees[n]}  {med[n]:7.1f} steps/s (min {min(got[n]):.1f}, max {max(got[n]):.1f}, "
              f"n={len(got[n])}, decode {kernel[n]})")
    print(f"after/before: {med['after'] / med['before']:.2f}x  ({a.seqs} sequences decoding; 1-min load average "
          f"{min(load):.1f}-{max(load):.1f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
