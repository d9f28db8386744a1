"""Per-row noise learned from A/A `bench.py ab` runs: the noise file, the robust estimate, and the row's test.

Why (gate evidence of 2026-11-30, 20 A/A `ab` runs of 32 rows on the 2-core EPYC, docs/gate-evidence.md):

- the per-round log-ratios are heavy-tailed: most rounds of a row agree within 1-3%, and now and then one round
  lands in another speed of the machine (x2.9 for one slot of `softmax 1024x4096 torch_eager`, two speeds 1.4
  and 1.9 ms of `layernorm 4096x1024` lasting several rounds). The mean of 6 rounds follows such a round and its
  sample variance explodes (a real +10% then goes unseen), or, when the slow state covers most rounds of one
  side, the rounds agree and the variance is small (a false alarm: x1.25 with every round slower);
- how wide a row's run-level estimate spreads between two runs of the same code is a property of the row on
  that device (between 0.6% and 12% here), not of the other rows of the run: the moderated variance shrunk
  toward the pool of all rows (harness/gate_stats.py) was far too small for the memory-bound rows.

So, for `bench.py ab --noise FILE`:

- estimate: the 20%-trimmed mean of the per-round log-ratios (Tukey-McLaughlin / Yuen: one round in 5 may be
  wild without moving it), with its own standard error from the winsorized variance (Yuen 1974);
- noise: the standard deviation of that same estimate over the row's earlier A/A runs on this device with the
  same number of rounds (`--learn-noise` appends each run's estimates; CI accumulates them, e.g. from a
  nightly main-against-main job). That spread contains everything that moves an A/A result - round noise,
  process states, the machine's slow periods - which is what the issue calls the row's noise floor;
- the row's standard error is the larger of the two (a current run noisier than the row's history keeps
  its own noise), with the degrees of freedom of the one that won;
- rows with fewer than MIN_RUNS learned runs get a conservative default: the 90th percentile of the learned
  rows' spreads on the device, or DEFAULT_SD (10%, the widest rows seen here) when nothing is learned, with
  DEFAULT_DF degrees of freedom;
- then as before: one-sided t-test, Holm over every row of the run, a row failing when slower than
  max(threshold, noise floor) and significant.
"""
from __future__ import annotations

import json
import math
import os
import platform
from pathlib import Path

import numpy as np

from harness import gate_stats as S

KIND = "kbench-ab-noise"
VERSION = 1
TRIM = 0.2            # trimmed fraction at each end (Wilcox's usual 20%); 1 round of 6 at each end
MIN_RUNS = 3          # learned A/A runs a row needs before its own spread is used
KEEP = 50             # newest runs kept per row (a device changes: drivers, firmware, neighbours)
DEFAULT_SD = 0.10     # run-level sd of a never-seen row when the device has nothing learned (log scale)
DEFAULT_DF = 4.0
DEFAULT_QUANTILE = 0.9


class NoiseFileError(ValueError):
    """A noise file that cannot be used; the message is one line naming the file."""


def trimmed(log_ratios, trim: float = TRIM) -> tuple[float, float, float]:
    """(trimmed mean, its standard error, df) of the per-round log-ratios, after Yuen (1974): g = floor(trim n)
    values cut at each end; the se from the winsorized variance; df = n - 2g - 1."""
    x = np.sort(np.asarray(log_ratios, dtype=np.float64))
    n = x.size
    g = int(math.floor(trim * n))
    h = n - 2 * g
    est = float(x[g:n - g].mean())
    if h < 2:
        return est, math.nan, 0.0
    w = np.clip(x, x[g], x[n - g - 1])
    se = math.sqrt(float(w.var(ddof=1)) * (n - 1) / (h * (h - 1)))
    return est, se, float(h - 1)


def device_id(device: str) -> str:
    """The key of a device in the noise file: the kind and model (noise learned on one model is not another's)."""
    if device == "cuda":
        import torch
        return f"cuda {torch.cuda.get_device_name(0)}"
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"cpu {model or platform.processor() or platform.machine()} x{os.cpu_count()}"


def row_key(key) -> str:
    """'suite|case|variant|dtype|device' from a KEY tuple or dict."""
    if isinstance(key, dict):
        from harness.gate_verdicts import KEY
        key = tuple(key[c] for c in KEY)
    return "|".join(str(k) for k in key)


class Noise:
    """The noise file: {"kind": KIND, "version": 1, "devices": {device: {row: [[estimate, rounds], ...]}}}."""

    def __init__(self, devices: dict | None = None, path: Path | None = None):
        self.devices: dict[str, dict[str, list]] = devices or {}
        self.path = path

    @classmethod
    def load(cls, path, missing_ok: bool = False) -> "Noise":
        path = Path(path)
        if not path.exists():
            if missing_ok:
                return cls(path=path)
            raise NoiseFileError(f"noise file {path}: no such file (create it with --learn-noise)")
        try:
            data = json.loads(path.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise NoiseFileError(f"noise file {path}: not readable JSON ({str(e).splitlines()[0]})") from None
        if not isinstance(data, dict) or data.get("kind") != KIND:
            raise NoiseFileError(f"noise file {path}: not a kbench noise file (kind {KIND!r} expected)")
        if data.get("version") != VERSION:
            raise NoiseFileError(f"noise file {path}: version {data.get('version')!r}, this kbench reads {VERSION}")
        devices = data.get("devices")
        if not isinstance(devices, dict):
            raise NoiseFileError(f"noise file {path}: 'devices' must be an object")
        for dev, rows in devices.items():
            if not isinstance(rows, dict):
                raise NoiseFileError(f"noise file {path}: device {dev!r} must map rows to runs")
            for row, runs in rows.items():
                ok = isinstance(runs, list) and all(
                    isinstance(r, list) and len(r) == 2 and isinstance(r[0], (int, float))
                    and not isinstance(r[0], bool) and math.isfinite(r[0]) and isinstance(r[1], int)
                    and not isinstance(r[1], bool) and r[1] >= 3 for r in runs)
                if not ok:
                    raise NoiseFileError(f"noise file {path}: row {row!r} of {dev!r} must be a list of "
                                         "[estimate, rounds] pairs (finite number, integer >= 3)")
        return cls(devices, path)

    def save(self, path=None) -> None:
        path = Path(path or self.path)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps({"kind": KIND, "version": VERSION, "devices": self.devices}, indent=1))
        os.replace(tmp, path)

    def add(self, device: str, key, est: float, rounds: int) -> None:
        runs = self.devices.setdefault(device, {}).setdefault(row_key(key), [])
        runs.append([float(est), int(rounds)])
        del runs[:-KEEP]

    def history(self, device: str, key, rounds: int) -> list[float]:
        return [e for e, n in self.devices.get(device, {}).get(row_key(key), []) if n == rounds]

    def default_sd(self, device: str, rounds: int) -> float:
        """The run-level sd given to a row with too little history: the 90th percentile of the learned rows'."""
        sds = [float(np.std(h, ddof=1)) for h in (self.history(device, k, rounds) for k in self.devices.get(device, {}))
               if len(h) >= MIN_RUNS]
        return float(np.quantile(sds, DEFAULT_QUANTILE)) if sds else DEFAULT_SD

    def learned_runs(self, device: str, rounds: int) -> int:
        return max((len(self.history(device, k, rounds)) for k in self.devices.get(device, {})), default=0)


def test_row(log_ratios, hist: list[float], default_sd: float, alpha: float = 0.05) -> tuple[S.Tested, str]:
    """The row's test with learned noise: (Tested, where its noise came from: 'learned', 'default' or 'own')."""
    est, se_own, df_own = trimmed(log_ratios)
    if len(hist) >= MIN_RUNS:
        se_h, df_h, src = float(np.std(hist, ddof=1)), float(len(hist) - 1), "learned"
    else:
        se_h, df_h, src = default_sd, DEFAULT_DF, "default"
    if np.isfinite(se_own) and df_own > 0:         # moderated as in gate_stats, the prior being the row's history
        se = max(math.sqrt((df_h * se_h ** 2 + df_own * se_own ** 2) / (df_h + df_own)), se_own)
        df = df_h + df_own
        src = "own" if se == se_own and se_own > se_h else src
    else:
        se, df = se_h, df_h
    return S.one_sided(est, se, df, alpha), src


def history_row(r: dict, parents: dict[tuple[str, str], str] | None) -> dict:
    """The row whose A/A history gives `r` its noise: `r` itself, or for a test-only slowed copy
    (harness/inject.py) the row it copies."""
    parent = (parents or {}).get((r["suite"], r["variant"]))
    return r if parent is None else {**r, "variant": parent}


def apply(rows: list[dict], noise: Noise, device: str, rounds: int, alpha: float = 0.05,
          parents: dict[tuple[str, str], str] | None = None) -> dict[str, int]:
    """Give every compared row (one with `_lr`, its per-round log-ratios) its learned-noise test (`_tested`,
    read by gate_verdicts.decide); `parents` (inject.parents) maps slowed copies to the rows whose history they
    use. Returns how many rows took their noise from each source."""
    count = {"learned": 0, "default": 0, "own": 0}
    dflt = noise.default_sd(device, rounds)
    for r in rows:
        if r.get("_lr") is None:
            continue
        t, src = test_row(r["_lr"], noise.history(device, history_row(r, parents), rounds), dflt, alpha)
        r["_tested"] = t
        count[src] += 1
        if src == "default":
            r["note"] = "; ".join(x for x in (r.get("note"), f"no learned noise: default sd {dflt:.1%}") if x)
    return count


def learn(rows: list[dict], noise: Noise, device: str, rounds: int,
          parents: dict[tuple[str, str], str] | None = None) -> int:
    """Append each compared row's run-level estimate (trimmed mean) to the noise file's history. Meant for A/A
    runs (the same code on both sides): a real change learned as noise would widen the row's floor. Slowed
    copies (keys of `parents`) are never learned."""
    n = 0
    for r in rows:
        if (r["suite"], r["variant"]) in (parents or {}):
            continue
        if r.get("_lr") is not None and len(r["_lr"]) == rounds:
            noise.add(device, r, trimmed(r["_lr"])[0], rounds)
            n += 1
    return n


def log_ratios(slots) -> dict[tuple, np.ndarray]:
    """{KEY tuple: per-round log(current/base)} from an ab run's slots.parquet table."""
    from harness.gate_verdicts import KEY
    p = slots.pivot_table(index=KEY + ["round"], columns="side", values="median_ms").reset_index()
    p["lr"] = np.log(p["current"]) - np.log(p["base"])
    return {k: g.sort_values("round")["lr"].to_numpy() for k, g in p.groupby(KEY, sort=False)}
