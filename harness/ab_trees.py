"""The two trees of `bench.py ab`: git worktrees of the refs, each built in its own build directory.

A ref's tree is a detached `git worktree` under <repository>/.cache/ab/<commit>/ (ignored by git; $KB_AB_CACHE
moves it), kept
between runs: a second `ab` against the same baseline commit reuses its tree and its build (CMake rebuilds
nothing), which is what makes a per-pull-request A/B affordable; CI can cache the directory. Without
--current-ref the current side is the working tree itself, uncommitted changes included (what CI checked
out). Each tree is built with `cmake -S TREE -B TREE/build` (the loaders look in TREE/build/lib); the build's
output goes to TREE/.ab-build.log, and a tree that does not build is bad input (exit 2) naming that log.
"""
from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

from harness.result_sets import ROOT, BadInput



def cache_dir() -> Path:
    """Where the trees live: $KB_AB_CACHE, else <repository>/.cache/ab."""
    return Path(os.environ.get("KB_AB_CACHE", ROOT / ".cache" / "ab"))


@dataclass
class Tree:
    label: str          # "baseline" or "current"
    ref: str            # as given ("" for the working tree)
    commit: str         # full hash ("" when not a git checkout)
    path: Path
    dirty: bool = False


def _git(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    return subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True)


def resolve_ref(ref: str) -> str:
    r = _git("rev-parse", "--verify", "--quiet", f"{ref}^{{commit}}")
    if r.returncode != 0 or not r.stdout.strip():
        raise BadInput(f"unknown git ref {ref!r} in {ROOT} (fetch it first: git fetch origin {ref})")
    return r.stdout.strip()


def worktree(ref: str, label: str) -> Tree:
    """A detached worktree of `ref` under .cache/ab/<commit>, created once and reused."""
    commit = resolve_ref(ref)
    path = cache_dir() / commit[:16]
    if (path / ".git").exists():
        head = _git("rev-parse", "HEAD", cwd=path)
        if head.returncode == 0 and head.stdout.strip() == commit:
            return Tree(label, ref, commit, path)
        _git("worktree", "remove", "--force", str(path))
    cache_dir().mkdir(parents=True, exist_ok=True)
    _git("worktree", "prune")
    r = _git("worktree", "add", "--detach", "--force", str(path), commit)
    if r.returncode != 0:
        raise BadInput(f"cannot check out {ref} ({commit[:12]}): {(r.stderr.strip().splitlines() or ['?'])[-1]}")
    return Tree(label, ref, commit, path)


def working_tree() -> Tree:
    head = _git("rev-parse", "HEAD")
    dirty = _git("status", "--porcelain", "--untracked-files=no")
    return Tree("current", "", head.stdout.strip() if head.returncode == 0 else "", ROOT,
                dirty=bool(dirty.returncode == 0 and dirty.stdout.strip()))


def build(tree: Tree, cmake_args: list[str], jobs: int) -> None:
    """Configure (once) and build TREE/build; BadInput naming the log when it fails."""
    log = tree.path / ".ab-build.log"
    bdir = tree.path / "build"
    steps = []
    if not (bdir / "CMakeCache.txt").exists():                # configured once; cmake_args apply then
        steps.append(["cmake", "-S", str(tree.path), "-B", str(bdir), "-DCMAKE_BUILD_TYPE=Release", *cmake_args])
    steps.append(["cmake", "--build", str(bdir), "-j", str(jobs)])
    with open(log, "w") as f:
        for cmd in steps:
            f.write("$ " + " ".join(cmd) + "\n")
            f.flush()
            try:
                r = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, cwd=tree.path)
            except OSError as e:
                raise BadInput(f"cannot build the {tree.label} tree: {e}") from None
            if r.returncode != 0:
                lines = [ln.strip() for ln in log.read_text(errors="replace").splitlines() if ln.strip()]
                first = next((i for i, ln in enumerate(lines) if "rror" in ln), len(lines) - 1)
                what = " ".join(lines[first:first + 2])[:200] if lines else "?"   # the error and its message
                raise BadInput(f"the {tree.label} tree ({tree.ref or 'working tree'} {tree.commit[:12]}) does not "
                               f"build: {what} (full log: {log})")


def describe(t: Tree) -> str:
    what = t.ref or "working tree"
    dirty = " + uncommitted changes" if t.dirty else ""
    return f"{what} ({t.commit[:12]}{dirty}) in {t.path}"
