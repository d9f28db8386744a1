"""Peak throughput of a device, and the one place that chooses which peak a row's `% peak` is against.

Three kinds of figure:
- **Datasheet** (GPUs): vendor figures, below. A GPU with a datasheet entry has its `pct_peak` against them.
- **Measured** (every device): what the probes of `bench.py --suite peak` reached here, stored per (device,
  probe, dtype) in results/peaks/<device>.json with its provenance (mode, date, commit, the share of the CPU
  other processes took, the load average). A new figure replaces the stored one only when it is more
  credible (uncontended beats contended) or, equally credible, higher: a quick or contended run never drags
  a ceiling down (`bench.py --reset-peaks` starts over). The ceiling of a dtype is the highest figure of any
  probe of that kind; each row's `peak_source` names the figure its `% peak` used.
- **Theoretical** (CPUs): cores x clock x FLOPs per cycle from the CPU's flags and frequency, shown beside
  the measured figures (never used for `% peak`: the clock a VM reports and the FMA-unit count are guesses).

Datasheet figures are dense (no 2:4 sparsity), boost clocks, from NVIDIA's product pages and architecture
whitepapers: TFLOP/s per dtype (float32 = non-tensor-core FMA; bfloat16/float16 = tensor cores with fp32
accumulation) and memory bandwidth in GB/s. Matched by substring of the GPU name, most specific first.
"""
from __future__ import annotations

import datetime as _dt
import json
import math
import os
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path

from harness.result_sets import results_root
from harness.results import atomic_write

DATASHEET: list[tuple[str, dict[str, float]]] = [
    # pattern in torch.cuda.get_device_name()   GB/s,          TFLOP/s per dtype
    ("H200",        {"bw_gbs": 4800, "float32": 67.0, "bfloat16": 989.4, "float16": 989.4}),
    ("GH200",       {"bw_gbs": 4000, "float32": 67.0, "bfloat16": 989.4, "float16": 989.4}),
    ("H100 NVL",    {"bw_gbs": 3900, "float32": 60.0, "bfloat16": 835.0, "float16": 835.0}),
    ("H100 PCIe",   {"bw_gbs": 2000, "float32": 51.0, "bfloat16": 756.0, "float16": 756.0}),
    ("H100",        {"bw_gbs": 3350, "float32": 67.0, "bfloat16": 989.4, "float16": 989.4}),   # SXM5
    ("B200",        {"bw_gbs": 8000, "float32": 80.0, "bfloat16": 2250.0, "float16": 2250.0}),
    ("A100-SXM4-80GB", {"bw_gbs": 2039, "float32": 19.5, "bfloat16": 312.0, "float16": 312.0}),
    ("A100 80GB PCIe", {"bw_gbs": 1935, "float32": 19.5, "bfloat16": 312.0, "float16": 312.0}),
    ("A100",        {"bw_gbs": 1555, "float32": 19.5, "bfloat16": 312.0, "float16": 312.0}),   # 40 GB
    ("L40S",        {"bw_gbs": 864, "float32": 91.6, "bfloat16": 362.0, "float16": 362.0}),
    ("L4",          {"bw_gbs": 300, "float32": 30.3, "bfloat16": 121.0, "float16": 121.0}),
    ("A10G",        {"bw_gbs": 600, "float32": 31.2, "bfloat16": 70.0, "float16": 70.0}),
    ("A10",         {"bw_gbs": 600, "float32": 31.2, "bfloat16": 125.0, "float16": 125.0}),
    ("RTX 4090",    {"bw_gbs": 1008, "float32": 82.6, "bfloat16": 165.2, "float16": 165.2}),
    ("RTX 3090",    {"bw_gbs": 936, "float32": 35.6, "bfloat16": 71.0, "float16": 71.0}),
    ("V100",        {"bw_gbs": 900, "float32": 15.7, "float16": 125.0}),
    ("T4",          {"bw_gbs": 320, "float32": 8.1, "float16": 65.0}),
]

PEAKS_DIR = Path(os.environ.get("KB_PEAKS_DIR") or results_root() / "peaks")   # results root: $KB_RESULTS_DIR

# Probes whose figures may be stored: name -> (ceiling kind, unit, what it measures). A ceiling of kind "bw"
# is the memory bandwidth (GB/s) of a copy; "read" / "read1" the bandwidth of a sequential read on the run's
# threads / on one thread (ceilings `read_gbs` / `read1_gbs`, beside the copy's `bw_gbs`: a suite that only reads
# declares `bandwidth="read"`); "compute" ceilings are per dtype (TFLOP/s; int8: tera-ops/s).
PROBES: dict[str, tuple[str, str, str]] = {
    "torch_copy": ("bw", "GB/s", "torch copy_ into a preallocated buffer (stores read each line first)"),
    "cpp_copy": ("bw", "GB/s", "native copy with streaming stores (no read-for-ownership)"),
    "cpp_read": ("read", "GB/s", "native sequential read (xor of every 32-bit word, vector loads), the run's threads"),
    "cpp_read1": ("read1", "GB/s", "native sequential read (xor of every 32-bit word, vector loads), one thread"),
    "torch_matmul": ("compute", "TFLOP/s", "torch.matmul, square"),
    "cpp_fma": ("compute", "TFLOP/s", "native register-resident FMA chains (fp32 FMA; bf16 vdpbf16ps)"),
    "cpp_amx": ("compute", "TFLOP/s", "native AMX tile products (tdpbf16ps, tdpbssd)"),
}
CONTENDED_OTHERS_PCT = 20.0      # other processes took more than this share of the CPU: contended (as the gate)


def ceiling_key(probe: str, dtype: str) -> str:
    """The ceiling a probe's figure sets: "bw_gbs" (copy), "read_gbs" / "read1_gbs" (read), else its dtype."""
    kind = PROBES[probe][0]
    return {"bw": "bw_gbs", "read": "read_gbs", "read1": "read1_gbs"}.get(kind, dtype)


def datasheet(device_name: str) -> tuple[str, dict[str, float]] | None:
    for pattern, peaks in DATASHEET:
        if pattern.lower() in device_name.lower():
            return pattern, peaks
    return None


def _slug(device_name: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "-", device_name).strip("-").lower() or "unknown"


def measured_path(device_name: str) -> Path:
    return PEAKS_DIR / f"{_slug(device_name)}.json"


# ------------------------------------------------------------------------------------------ the store

def _upgrade(data: dict) -> dict:
    """Format 1 (flat {"bw_gbs": x, "<dtype>": TFLOP/s}, from torch copy and matmul) -> format 2."""
    if data.get("format") == 2:
        return data
    prov = dict(mode="unknown", date=data.get("measured_at"), commit=data.get("measured_commit"),
                others_pct=None, load1=None, contended=None)
    entries = {}
    for k, v in data.items():
        if not isinstance(v, (int, float)) or isinstance(v, bool):
            continue
        if k == "bw_gbs":
            entries["torch_copy/float32"] = dict(value=float(v), unit="GB/s", **prov)
        else:
            entries[f"torch_matmul/{k}"] = dict(value=float(v), unit="TFLOP/s", **prov)
    return {"format": 2, "device_name": data.get("device_name"), "probes": entries}


def load_store(device_name: str) -> dict:
    """{"format": 2, "device_name", "probes": {"<probe>/<dtype>": entry}} ({} probes when nothing stored)."""
    try:
        return _upgrade(json.loads(measured_path(device_name).read_text()))
    except (OSError, ValueError, AttributeError):
        return {"format": 2, "device_name": device_name, "probes": {}}


def _save(device_name: str, store: dict) -> Path:
    path = measured_path(device_name)
    path.parent.mkdir(parents=True, exist_ok=True)
    store = {**store, "device_name": device_name, "format": 2}
    atomic_write(path, lambda p: p.write_text(json.dumps(store, indent=2, sort_keys=True)))
    return path


def _credible(entry: dict) -> bool:
    return not entry.get("contended")


def _rank(entry: dict) -> tuple[bool, float]:
    return _credible(entry), float(entry.get("value") or 0.0)


def contended(others_pct: float | None) -> bool | None:
    if others_pct is None or (isinstance(others_pct, float) and math.isnan(others_pct)):
        return None
    return others_pct > CONTENDED_OTHERS_PCT


def record(device_name: str, probe: str, dtype: str, value: float, *, mode: str, commit: str | None,
           others_pct: float | None, date: str | None = None, extra: dict | None = None) -> tuple[bool, str]:
    """Offer one measured figure to the store; (kept, message). Kept only when more credible or, equally
    credible, higher than the stored one: a lower or contended figure never replaces a ceiling."""
    if probe not in PROBES:
        raise ValueError(f"unknown probe {probe!r}; choose from: {', '.join(PROBES)}")
    if not value or not math.isfinite(value) or value <= 0:
        return False, f"{probe}/{dtype}: no figure"
    unit = PROBES[probe][1]
    entry = dict(value=float(value), unit=unit, mode=mode, commit=commit, others_pct=others_pct,
                 load1=os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
                 contended=contended(others_pct),
                 date=date or _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"), **(extra or {}))
    store = load_store(device_name)
    key = f"{probe}/{dtype}"
    old = store["probes"].get(key)
    tag = " (contended)" if entry["contended"] else ""
    if old is None or _rank(entry) > _rank(old):
        store["probes"][key] = entry
        _save(device_name, store)
        was = f", was {old['value']:.4g}" + (" contended" if old.get("contended") else "") if old else ""
        return True, f"{key} = {value:.4g} {unit}{tag} stored{was}"
    why = "contended" if _credible(old) and not _credible(entry) else "lower"
    return False, (f"{key} = {value:.4g} {unit}{tag} not stored ({why}; the ceiling stays "
                   f"{old['value']:.4g} from {old.get('mode')} {old.get('date')})")


def note_theoretical(device_name: str, theo: dict) -> None:
    """Keep the theoretical peak beside the measured figures in the device's file (shown, never used)."""
    if theo:
        store = load_store(device_name)
        store["theoretical"] = theo
        _save(device_name, store)


def reset(device_name: str, probes: list[str] | None = None) -> list[str]:
    """Forget stored figures of this device (all, or those of the named probes); returns the keys removed."""
    for p in probes or []:
        if p not in PROBES:
            raise ValueError(f"unknown probe {p!r}; choose from: {', '.join(PROBES)}")
    store = load_store(device_name)
    gone = [k for k in store["probes"] if not probes or k.split("/")[0] in probes]
    for k in gone:
        del store["probes"][k]
    if gone:
        _save(device_name, store)
    return gone


# ------------------------------------------------------------------------------------------ ceilings

@dataclass
class Ceilings:
    """Ceilings of one device: {"bw_gbs": GB/s, "<dtype>": TFLOP/s}, and for each the figure it came from."""
    values: dict[str, float] = field(default_factory=dict)
    figures: dict[str, str] = field(default_factory=dict)     # key -> "cpp_copy/float32 30.1 GB/s (quick ...)"
    source: str = "none"                                      # "datasheet:<gpu>" | "measured" | "none"

    def __bool__(self) -> bool:
        return bool(self.values)


def measured_ceilings(device_name: str) -> Ceilings:
    """The highest credible stored figure per ceiling (a contended one only where nothing else is stored)."""
    best: dict[str, tuple[tuple[bool, float], str, dict]] = {}
    for key, e in load_store(device_name)["probes"].items():
        probe, dtype = key.split("/", 1)
        if probe not in PROBES or not e.get("value"):
            continue
        ck = ceiling_key(probe, dtype)
        if ck not in best or _rank(e) > best[ck][0]:
            best[ck] = (_rank(e), key, e)
    c = Ceilings(source="measured" if best else "none")
    for ck, (_, key, e) in best.items():
        c.values[ck] = float(e["value"])
        c.figures[ck] = (f"{key} {e['value']:.4g} {e.get('unit', '')} ({e.get('mode')}, {str(e.get('date'))[:10]}, "
                         f"{e.get('commit')}{', contended' if e.get('contended') else ''})")
    return c


@dataclass
class PeakChoice:
    """What a run's `% peak` columns are computed against (chosen once per run by `choose`)."""
    primary: Ceilings          # pct_peak: the datasheet where there is one, else the measured ceilings
    measured: Ceilings         # pct_peak_measured

    def manifest(self) -> dict:
        return {"primary": asdict(self.primary), "measured": asdict(self.measured)}


def choose(device: str, device_name: str) -> PeakChoice:
    """THE choice of ceilings (runner, report and compare all use it): datasheet for a known GPU, else the
    measured store."""
    measured = measured_ceilings(device_name)
    ds = datasheet(device_name) if device == "cuda" else None
    if ds is not None:
        primary = Ceilings(dict(ds[1]), {k: f"datasheet {ds[0]}" for k in ds[1]}, f"datasheet:{ds[0]}")
        return PeakChoice(primary, measured)
    return PeakChoice(measured, measured)


def needs_probe(choice: PeakChoice) -> bool:
    """True when no ceiling is known for the rows' `% peak` (no datasheet, nothing measured)."""
    return not choice.primary.values.get("bw_gbs") or not choice.primary.values.get("float32")


def binding(flops: float, nbytes: float, peaks: dict[str, float], dtype: str) -> str | None:
    """Which ceiling bounds a row: "bw_gbs" (memory-bound) or the dtype's compute ceiling."""
    tflops, bw = peaks.get(dtype), peaks.get("bw_gbs")
    tc = flops / (tflops * 1e12) if flops > 0 and tflops else 0.0
    tb = nbytes / (bw * 1e9) if nbytes > 0 and bw else 0.0
    if tc == 0 and tb == 0:
        return None
    return "bw_gbs" if tb >= tc else dtype


def _with_bandwidth(c: Ceilings, bandwidth: str) -> Ceilings:
    """`c` with its bandwidth ceiling taken from the read probe (bandwidth "read") where one is stored."""
    key = {"read": "read_gbs"}.get(bandwidth)
    if key is None or not c.values.get(key):
        return c
    return Ceilings({**c.values, "bw_gbs": c.values[key]}, {**c.figures, "bw_gbs": c.figures.get(key, key)},
                    c.source)


def row_columns(choice: PeakChoice, flops: float, nbytes: float, seconds: float, dtype: str,
                bandwidth: str = "copy") -> dict:
    """pct_peak, peak_source (naming the figure used) and pct_peak_measured of one row. `bandwidth` = "read":
    the row's bytes are held against the measured sequential read (`read_gbs`) where one is stored, else the copy
    (a datasheet's bandwidth stays the datasheet's)."""
    out: dict = {"pct_peak": None, "pct_peak_measured": None,
                 "peak_source": "none: run `python bench.py --suite peak`"}
    prim = _with_bandwidth(choice.primary, bandwidth) if choice.primary.source == "measured" else choice.primary
    measured = _with_bandwidth(choice.measured, bandwidth)
    if prim:
        pct = roofline_pct(flops, nbytes, seconds, prim.values, dtype)
        b = binding(flops, nbytes, prim.values, dtype)
        if not math.isnan(pct):
            out["pct_peak"] = pct
            fig = prim.figures.get(b, "") if b else ""
            out["peak_source"] = (f"{prim.source}: {fig}" if prim.source == "measured" else
                                  f"{prim.source} ({'bandwidth' if b == 'bw_gbs' else b})")
        else:
            out["peak_source"] = f"{prim.source}: no ceiling for {dtype}"
    pm = roofline_pct(flops, nbytes, seconds, measured.values, dtype) if measured else math.nan
    out["pct_peak_measured"] = None if math.isnan(pm) else pm
    return out


def load_measured(device_name: str) -> dict[str, float] | None:
    """The measured ceilings as a flat {"bw_gbs", "<dtype>"} dict, or None when nothing is stored."""
    c = measured_ceilings(device_name)
    return dict(c.values) or None


def roofline_pct(flops: float, nbytes: float, seconds: float, peaks: dict[str, float] | None,
                 dtype: str) -> float:
    """% of the roofline: the least time the device could take (compute or memory bound) / measured time."""
    if not peaks or not seconds or seconds <= 0 or math.isnan(seconds):
        return float("nan")
    tflops, bw = peaks.get(dtype), peaks.get("bw_gbs")
    if (flops > 0 and not tflops) or (nbytes > 0 and not bw):
        return float("nan")   # a missing ceiling would overstate the fraction
    t_min = max(flops / (tflops * 1e12) if flops > 0 else 0.0, nbytes / (bw * 1e9) if nbytes > 0 else 0.0)
    return 100.0 * t_min / seconds if t_min > 0 else float("nan")


# -------------------------------------------------------------------------------------- theoretical

def _read(path: str) -> str | None:
    try:
        return Path(path).read_text()
    except OSError:
        return None


def _cpu_facts(root: str = "") -> dict:
    info = _read(root + "/proc/cpuinfo") or ""
    first: dict[str, str] = {}
    for line in info.splitlines():
        if not line.strip():
            if first:
                break
            continue
        k, _, v = line.partition(":")
        first.setdefault(k.strip(), v.strip())
    return first


def _physical_cores(root: str = "") -> tuple[int, str]:
    """Physical cores this process may run on (SMT siblings counted once)."""
    cpus = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else list(range(os.cpu_count() or 1))
    cores = set()
    for c in cpus:
        base = f"{root}/sys/devices/system/cpu/cpu{c}/topology/"
        core, pkg = _read(base + "core_id"), _read(base + "physical_package_id")
        cores.add((pkg.strip(), core.strip()) if core and pkg else ("cpu", str(c)))
    return len(cores), f"{len(cores)} cores ({len(cpus)} logical CPUs allowed)"


def _clock_ghz(facts: dict, root: str = "") -> tuple[float | None, str]:
    mx = _read(f"{root}/sys/devices/system/cpu/cpu0/cpufreq/cpuinfo_max_freq")
    if mx and mx.strip().isdigit():
        return int(mx) / 1e6, "cpufreq cpuinfo_max_freq"
    m = re.search(r"@\s*([0-9.]+)\s*GHz", facts.get("model name", ""))
    if m:
        return float(m.group(1)), "nominal clock in the model name"
    try:
        return float(facts["cpu MHz"]) / 1e3, "/proc/cpuinfo 'cpu MHz' (a VM reports its base clock; turbo unknown)"
    except (KeyError, ValueError):
        return None, "no clock readable"


def flops_per_cycle(facts: dict) -> tuple[dict[str, int], str]:
    """FLOPs (int8: ops) per cycle per core by dtype, from the CPU flags and vendor."""
    flags = set(facts.get("flags", "").split())
    vendor, family = facts.get("vendor_id", ""), int(facts.get("cpu family", "0") or 0)
    out: dict[str, int] = {}
    if "avx512f" in flags:
        if vendor == "AuthenticAMD" and family < 26:     # Zen 4: 512-bit ops issue as two 256-bit halves
            fp32, why = 32, "AVX-512 on Zen 4 (2 x 256-bit FMA pipes)"
        else:
            fp32, why = 64, "AVX-512, 2 FMA units x 16 lanes x 2"
    elif "avx2" in flags and "fma" in flags:
        fp32, why = 32, "AVX2, 2 FMA units x 8 lanes x 2"
    elif "sse2" in flags:
        fp32, why = 8, "SSE, 4 lanes x (mul + add)"
    else:
        return {}, "unknown vector unit"
    out["float32"] = fp32
    if "amx_bf16" in flags:
        out["bfloat16"], why = 1024, why + "; AMX-BF16 1024/cycle"
    elif "avx512_bf16" in flags:
        out["bfloat16"], why = 2 * fp32, why + "; vdpbf16ps 2x fp32"
    if "amx_int8" in flags:
        out["int8"], why = 2048, why + "; AMX-INT8 2048 ops/cycle"
    elif "avx512_vnni" in flags:
        out["int8"], why = 4 * fp32, why + "; vpdpbusd 4x fp32"
    return out, why


def theoretical(root: str = "") -> dict:
    """{"<dtype>": TFLOP/s, ..., "basis": how it was computed} for this machine's CPU ({} when unknown)."""
    facts = _cpu_facts(root)
    per_cycle, why = flops_per_cycle(facts)
    ghz, clock_src = _clock_ghz(facts, root)
    cores, cores_src = _physical_cores(root)
    if not per_cycle or not ghz:
        return {"basis": f"unknown ({why}; {clock_src})"}
    out: dict = {d: cores * ghz * 1e9 * f / 1e12 for d, f in per_cycle.items()}
    out["basis"] = f"{cores_src} x {ghz:.3g} GHz ({clock_src}) x FLOPs/cycle {per_cycle} ({why})"
    return out
