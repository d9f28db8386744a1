"""Per-row noise learned from A/A `ab` runs (harness/gate_noise.py): the robust estimate, the learned floor, the
default for rows never seen, the noise file, and the offline re-decision of the gate evidence."""
from __future__ import annotations

import json
import math
import subprocess
import sys

import numpy as np
import pytest

from harness import gate_noise as N
from harness import gate_stats as S
from harness.gate_verdicts import KEY, GateConfig, blank, decide
from harness.result_sets import ROOT

DEV = "cpu test"


def _key(i):
    return ("s", f"c{i}", "v", "float32", "cpu")


def _noise(sd_by_row: dict, runs=19, rounds=6, seed=0) -> N.Noise:
    """A history of `runs` A/A run-level estimates per row, spread with the row's sd."""
    rng = np.random.default_rng(seed)
    noise = N.Noise()
    for k, sd in sd_by_row.items():
        z = rng.standard_normal(runs)
        for e in sd * (z - z.mean()) / z.std(ddof=1):                     # spread exactly sd
            noise.add(DEV, k, e, rounds)
    return noise


def _rows(lrs: dict) -> list[dict]:
    out = []
    for k, lr in lrs.items():
        r = blank(dict(zip(KEY, k)), threshold=0.05)
        r.update(_stats=S.paired(lr), _lr=np.asarray(lr), n_base=len(lr), n_cur=len(lr))
        out.append(r)
    return out


def test_trimmed_mean_ignores_one_wild_round():
    lr = np.log([1.10, 1.11, 1.09, 1.10, 2.9, 1.10])          # one round in another speed of the machine (x2.9)
    est, se, df = N.trimmed(lr)
    assert math.exp(est) == pytest.approx(1.10, abs=0.005) and se < 0.01 and df == 3
    assert math.exp(np.mean(lr)) > 1.25                        # what the mean made of it


def test_row_with_a_wide_history_needs_a_larger_shift():
    lr = np.log(1.12) + 0.01 * np.array([-1, 1, 0, 0.5, -0.5, 0.2])        # +12%, rounds agreeing
    z = np.random.default_rng(1).standard_normal(19)
    z = (z - z.mean()) / z.std(ddof=1)                                     # exactly sd 1
    narrow, _ = N.test_row(lr, list(0.01 * z), 0.1)
    wide, src = N.test_row(lr, list(0.08 * z), 0.1)
    assert src == "learned" and wide.floor > 0.10 > 0.03 > narrow.floor
    assert narrow.p < 1e-6 < 0.01 < wide.p
    # through the gate's decision: the same +12% fails on the narrow row and passes on the wide one
    rows = _rows({_key(0): lr, _key(1): lr})
    N.apply(rows, _noise({_key(0): 0.01, _key(1): 0.08}), DEV, 6)
    v, _ = decide(rows, GateConfig())
    assert dict(zip(v["case"], v["verdict"])) == {"c0": "regression", "c1": "unchanged"}


def test_own_spread_wider_than_the_history_is_kept():
    lr = np.log([1.0, 1.3, 0.8, 1.25, 0.85, 1.2])
    t, src = N.test_row(lr, [0.001, -0.001, 0.0, 0.002], 0.1)
    assert src == "own" and t.sd >= N.trimmed(lr)[1] > 0.05


def test_never_seen_row_gets_the_default():
    lr = np.log(1.12) + 0.005 * np.array([-1, 1, 0, 0.5, -0.5, 0.2])
    t, src = N.test_row(lr, [0.01, -0.01], N.DEFAULT_SD)          # 2 runs: fewer than MIN_RUNS
    assert src == "default" and t.sd == pytest.approx(math.sqrt(
        (N.DEFAULT_DF * N.DEFAULT_SD ** 2 + 3 * N.trimmed(lr)[1] ** 2) / (N.DEFAULT_DF + 3)))
    assert N.Noise().default_sd(DEV, 6) == N.DEFAULT_SD              # nothing learned on the device
    noise = _noise({_key(i): 0.01 * (i + 1) for i in range(10)})
    assert 0.07 < noise.default_sd(DEV, 6) < 0.12                    # the 90th percentile of the learned spreads
    assert noise.default_sd("other device", 6) == N.DEFAULT_SD
    assert noise.default_sd(DEV, 12) == N.DEFAULT_SD                 # learned with another number of rounds
    rows = _rows({_key(0): lr, ("s", "new", "v", "float32", "cpu"): lr})
    assert N.apply(rows, noise, DEV, 6) == {"learned": 1, "default": 1, "own": 0}
    assert "default sd" in rows[1]["note"] and "default" not in rows[0]["note"]
    assert rows[1]["_tested"].floor > rows[0]["_tested"].floor


def test_noise_file_round_trips(tmp_path):
    noise = N.Noise()
    rows = _rows({_key(0): np.log([1.01, 0.99, 1.0, 1.02, 0.98, 1.0]), _key(1): np.log([1.1] * 3)})
    assert N.learn(rows, noise, DEV, 6) == 1                         # only rows measured with 6 rounds
    for e in (0.01, -0.02):
        noise.add(DEV, _key(0), e, 6)
    noise.add(DEV, _key(0), 0.5, 12)
    path = tmp_path / "noise.json"
    noise.save(path)
    back = N.Noise.load(path)
    assert back.devices == noise.devices
    assert back.history(DEV, dict(zip(KEY, _key(0))), 6) == pytest.approx(
        [N.trimmed(rows[0]["_lr"])[0], 0.01, -0.02])
    assert back.history(DEV, _key(0), 12) == [0.5] and back.history(DEV, _key(1), 6) == []
    for i in range(N.KEEP + 5):
        back.add(DEV, _key(2), float(i), 6)
    assert back.history(DEV, _key(2), 6) == [float(i) for i in range(5, N.KEEP + 5)]   # the newest KEEP


@pytest.mark.parametrize("text,msg", [
    ("{not json", "not readable JSON"),
    ('{"kind": "something", "version": 1, "devices": {}}', "not a kbench noise file"),
    ('{"kind": "kbench-ab-noise", "version": 9, "devices": {}}', "version 9"),
    ('{"kind": "kbench-ab-noise", "version": 1, "devices": []}', "'devices' must be an object"),
    ('{"kind": "kbench-ab-noise", "version": 1, "devices": {"d": {"r": [[0.1]]}}}', "[estimate, rounds] pairs"),
    ('{"kind": "kbench-ab-noise", "version": 1, "devices": {"d": {"r": [[NaN, 6]]}}}', "[estimate, rounds] pairs"),
    ('{"kind": "kbench-ab-noise", "version": 1, "devices": {"d": {"r": [[0.1, 2]]}}}', "[estimate, rounds] pairs"),
])
def test_bad_noise_file(tmp_path, text, msg):
    path = tmp_path / "noise.json"
    path.write_text(text)
    with pytest.raises(N.NoiseFileError, match=f"noise file {path}: .*" + msg.replace("[", r"\[").replace("]", r"\]")):
        N.Noise.load(path)


@pytest.mark.parametrize("content,learn_only,msg", [
    ("{not json", False, "not readable JSON"),
    (None, False, "no such file"),
    (None, True, "--learn-noise needs --noise FILE"),
])
def test_ab_bad_noise_file_one_line_exit_2(tmp_path, content, learn_only, msg):
    """Checked before any tree is checked out (the ref here does not even exist)."""
    path = tmp_path / "noise.json"
    if content is not None:
        path.write_text(content)
    noise = ["--learn-noise"] if learn_only else ["--noise", str(path)]
    r = subprocess.run([sys.executable, str(ROOT / "bench.py"), "ab", "--baseline-ref", "no-such-ref-xyz", *noise],
                       cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and msg in r.stderr and r.stderr.count("\n") == 1, r.stderr


def test_evidence_redecide_rules(tmp_path):
    """The evidence script's offline re-decision on synthetic runs: a heavy-tailed A/A row that the old rule
    calls a regression in one run, and a +10% copy; leave-one-out learns the row's spread and the copy's."""
    sys.path.insert(0, str(ROOT / "scripts"))
    import gate_evidence as G
    rng = np.random.default_rng(3)
    runs = []
    for i in range(12):
        lrs = {_key(j): 0.01 * rng.standard_normal(6) for j in range(20)}
        block = 0.2 if i == 4 else 0.08 * rng.standard_normal()         # a row whose rounds move as a block
        lrs[("s", "wild", "v", "float32", "cpu")] = block + 0.01 * rng.standard_normal(6)
        lrs[("s", "c0", "v_slow10", "float32", "cpu")] = np.log(1.10) + 0.01 * rng.standard_normal(6)
        runs.append(lrs)
    copies = {"v_slow10": 0.10}
    old = G.redecide(runs, "old", copies, 6)
    loo = G.redecide(runs, "loo", copies, 6, {("s", "v_slow10"): "v"})
    assert any("wild" in x for x in old[4]["false_alarms"])
    assert not any(r["false_alarms"] for r in loo)
    assert all(c["caught"] for r in loo for c in r["copies"]["v_slow10"])
    pre = G.redecide(runs, "prequential", copies, 6)
    assert len(pre) == 12 and G.figures(loo, copies)["v_slow10"]["caught"] == 12


def test_slowed_copy_uses_its_parents_history_and_is_never_learned():
    """A slowed copy (harness/inject.py) is judged on the A/A history of the row it copies, as a real regression
    is judged on its row's history from before it; its own runs (their calibrated delay varies from run to run,
    and some land in the machine's slow periods) are never learned as noise."""
    from harness import inject as I
    parents = I.parents("s/v=slow10:0.10,slow20:0.2")
    assert parents == {("s", "v_slow10"): "v", ("s", "v_slow20"): "v"}
    copy = ("s", "c0", "v_slow10", "float32", "cpu")
    noise = _noise({_key(0): 0.01, copy: 0.08})                    # the copy's own runs: wide
    lr = np.log(1.10) + 0.01 * np.array([-1, 1, 0, 0.5, -0.5, 0.2])
    rows = _rows({copy: lr})
    N.apply(rows, noise, DEV, 6, parents=parents)                  # history of ("s", "c0", "v"): narrow
    assert rows[0]["_tested"].floor < 0.05 and decide(rows, GateConfig())[0]["verdict"].item() == "regression"
    rows = _rows({copy: lr})
    N.apply(rows, noise, DEV, 6)                                   # without the mapping: the copy's own, wide
    assert decide(rows, GateConfig())[0]["verdict"].item() == "unchanged"
    fresh = N.Noise()
    both = _rows({_key(0): 0.01 * np.ones(6), copy: lr})
    assert N.learn(both, fresh, DEV, 6, parents) == 1 and list(fresh.devices[DEV]) == [N.row_key(_key(0))]
