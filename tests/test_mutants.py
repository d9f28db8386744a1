"""Mutation testing of the real kernels, CI subset: a few mutants of scripts/mutants.py (the barrier the row
kernels' block_sum needs before reusing its scratch, kb_common.h line 72, the GEMM's cp.async wait depth, and
its scalar-path K mask, which only special values reveal; block_max's entry barrier, which no real kernel needs
and the helper-level check of tests/sim_helpers.py kills, in a few seconds) are built and must be killed by the
checks the other tests run. The whole list: `make mutants` (about 20 s a
mutant here). Each run reuses .cache/mutants (the first one builds a copy of the kernels: about a minute).
"""
from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
import mutants  # noqa: E402

pytestmark = pytest.mark.skipif(shutil.which("cmake") is None or shutil.which("g++") is None,
                                reason="the mutants need cmake and g++")
CI_SUBSET = ("cuda-blocksum-bar1", "cuda-gemm-wait", "cuda-gemm-mask-k", "cuda-blockmax-bar1")


def test_mutant_list_is_well_formed():
    ids = [m.id for m in mutants.MUTANTS]
    assert len(ids) == len(set(ids))
    for m in mutants.MUTANTS:
        text = (ROOT / m.path).read_text()
        assert text.count(m.old) >= m.nth + 1, \
            f"{m.id}: its anchor no longer matches {m.path}: update scripts/mutants.py"
    assert {m.backend for m in mutants.MUTANTS} == {"cuda", "cpp", "triton"}


def test_unmutated_kernels_pass_the_checks():
    """The checks a mutant must fail pass on the real kernels: otherwise every mutant is 'killed' by a check
    that cannot pass (as happened when kernels/native.py moved the native setups and the checks found no
    variant: every mutant died of the same crash)."""
    mutants.sync_tree()
    ok, log = mutants.build("cuda")
    assert ok, log
    suites = tuple(sorted({s for m in mutants.MUTANTS if m.id in CI_SUBSET for s in m.suites}))
    res = mutants.run_checks("cuda", suites)
    assert not res["killed"], f"the unmutated cuda kernels fail their checks: {res}"


@pytest.mark.parametrize("mutant_id", CI_SUBSET)
def test_mutant_killed(mutant_id):
    mutants.sync_tree()
    ok, log = mutants.build("cuda")
    assert ok, log
    m = next(m for m in mutants.MUTANTS if m.id == mutant_id)
    res = mutants.run_mutant(m)
    assert res["killed"], f"{m.id} ({m.what}) survived: {res}"
    assert res["how"] not in ("crash", "timeout", "no checks"), f"{m.id} was killed by the harness: {res}"
