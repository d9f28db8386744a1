"""Ahead-of-time compilation of every Triton kernel for sm_80 and sm_90a, without a GPU, for the kernels
report (docs/CONTRACTS.md section 4).

`triton.compile(ASTSource(...), target=GPUTarget("cuda", 80|90, 32))` runs the whole pipeline (TTIR ->
TTGIR -> LLVM -> PTX -> ptxas -> cubin) on the CPU. From each kernel we read:
- registers, spill stores/loads, static shared memory: the `ptxas -v` log of that compile (re-run with
  the bundled ptxas on the PTX when Triton's own cache skipped ptxas);
- dynamic shared memory: Triton's metadata (`shared`, what the launch asks for);
- tensor-core instructions: HMMA (sm_80 mma.sync) and HGMMA (sm_90 wgmma) lines in `cuobjdump -sass`;
- theoretical occupancy from registers, shared memory and threads per block.
The triton wheel ships ptxas and cuobjdump under triton/backends/nvidia/bin; no CUDA toolkit is needed.

Every kernel module of kernels/triton that defines `aot_specs()` is compiled (MODULES is found, not listed);
it lists what to compile there: (label, kernel, signature, constexprs,
config[, archs]), each GPU autotuning config (bf16; GEMM and attention also their fp32 lists), because
autotuning may pick any of them on a GPU, so each must be spill-free. Pointers and integer arguments are
marked divisible by 16, as the JIT specializes them at the benchmark shapes; unit strides are constants.

Compiles run in child processes (`python -m kernels.triton.aot --worker`), which keeps them out of a
parent that runs Triton interpreted (TRITON_INTERPRET=1 makes triton.compile unusable in that process)
and lets two compile at once. Results and artifacts (PTX, cubin, SASS, ptxas log) are cached under
.cache/triton_aot/<key>/, keyed by the kernel source, the spec, the arch and the triton version, so a
second run does not recompile.
"""
from __future__ import annotations

import argparse
import contextlib
import hashlib
import importlib
import inspect
import io
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CACHE = ROOT / ".cache" / "triton_aot"
# every module of this folder that defines aot_specs() (read from the source: no import, no Triton needed)
MODULES = tuple(sorted(p.stem for p in Path(__file__).parent.glob("*.py")
                       if re.search(r"^def aot_specs\(", p.read_text(), re.M)))
ARCHS = ("sm_80", "sm_90a")
COLUMNS = ["backend", "kernel", "arch", "registers", "spill_stores_bytes", "spill_loads_bytes",
           "smem_static_bytes", "smem_dynamic_bytes", "threads_per_block", "occupancy",
           "tensor_core_instrs", "hmma", "hgmma", "imma", "igmma", "tma_loads", "ldgsts", "source"]
_AOT_VERSION = "5"  # bump when the row format or the analysis changes: invalidates the cache

# occupancy and architecture numbers: one formula for the CUDA and Triton rows of the kernels report
from harness.occupancy import arch_number as _cc, occupancy  # noqa: E402
from harness.cuda_binary import SASS_COUNTS, TENSOR_CORE  # noqa: E402

# --------------------------------------------------------------------------------------------------
# one compile
# --------------------------------------------------------------------------------------------------


def _tools():
    import triton
    base = Path(triton.__file__).parent / "backends" / "nvidia" / "bin"
    return base / "ptxas", base / "cuobjdump"


def _spec_key(mod, label, fn, sig, const, cfg, arch):
    import triton
    pyfn = getattr(fn, "fn", fn)
    text = json.dumps([_AOT_VERSION, triton.__version__, mod, label, inspect.getsource(pyfn), sig,
                       {k: repr(v) for k, v in const.items()}, repr(cfg.all_kwargs()), arch], sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:24]


def _specs(mod):
    m = importlib.import_module(f"kernels.triton.{mod}")
    return list(m.aot_specs()), f"kernels/triton/{mod}.py"


def _ptxas_info(log: str, name: str) -> dict:
    """Registers, spills and static shared memory of `name` from a `ptxas -v` log."""
    part = log[log.find(f"'{name}'"):] if f"'{name}'" in log else log
    out = {}
    m = re.search(r"(\d+) bytes spill stores, (\d+) bytes spill loads", part)
    if m:
        out["spill_stores_bytes"], out["spill_loads_bytes"] = int(m.group(1)), int(m.group(2))
    m = re.search(r"Used (\d+) registers", part)
    if m:
        out["registers"] = int(m.group(1))
    m = re.search(r"(\d+) bytes smem", part)
    out["smem_static_bytes"] = int(m.group(1)) if m else 0
    return out


def compile_one(mod: str, index: int, arch: str) -> dict:
    """Compile spec `index` of module `mod` for `arch`; returns its report row (and caches it)."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource
    from triton.runtime.jit import JITFunction

    from kernels.triton.common import config_str

    specs, source = _specs(mod)
    label, fn, sig, const, cfg = specs[index][:5]
    key = _spec_key(mod, label, fn, sig, const, cfg, arch)
    jit = fn if isinstance(fn, JITFunction) else JITFunction(getattr(fn, "fn", fn))
    attrs = {(jit.arg_names.index(n),): [["tt.divisibility", 16]]
             for n, t in sig.items() if n not in const and (t.startswith("*") or t in ("i32", "i64"))}
    src = ASTSource(fn=jit, signature=sig, constexprs=const, attrs=attrs)
    target = GPUTarget("cuda", _cc(arch), 32)
    options = {"num_warps": cfg.num_warps, "num_stages": cfg.num_stages}

    t0 = time.perf_counter()
    buf = io.StringIO()
    triton.knobs.nvidia.dump_ptxas_log = True     # Triton prints the ptxas -v log of a fresh compile
    try:
        with contextlib.redirect_stdout(buf):
            compiled = triton.compile(src, target=target, options=options)
    finally:
        triton.knobs.nvidia.dump_ptxas_log = False
    compile_s = time.perf_counter() - t0
    name = compiled.metadata.name
    ptx, cubin = compiled.asm["ptx"], compiled.asm["cubin"]
    ptxas, cuobjdump = _tools()
    d = CACHE / key
    d.mkdir(parents=True, exist_ok=True)
    (d / f"{name}.ptx").write_text(ptx)
    (d / f"{name}.cubin").write_bytes(cubin)
    log = buf.getvalue()
    if "Used" not in log:  # Triton's cache had the cubin: ptxas did not run, run it for the log
        gpu = "sm_90a" if _cc(arch) == 90 else f"sm_{_cc(arch)}"
        r = subprocess.run([str(ptxas), "-lineinfo", "-v", "--regAllocOptLevel=2", f"--gpu-name={gpu}",
                            str(d / f"{name}.ptx"), "-o", str(d / "ptxas_rerun.cubin")],
                           capture_output=True, text=True, check=True)
        log = r.stderr + r.stdout
    (d / "ptxas.log").write_text(log)
    sass = subprocess.run([str(cuobjdump), "-sass", str(d / f"{name}.cubin")],
                          capture_output=True, text=True, check=True).stdout
    (d / f"{name}.sass").write_text(sass)
    # mma.sync (HMMA; IMMA for int8), wgmma (HGMMA; IGMMA for int8: sm_90a only), TMA loads, cp.async
    n = {k: len(re.findall(pat, sass)) for k, pat in SASS_COUNTS.items()}

    info = _ptxas_info(log, name)
    threads = cfg.num_warps * 32
    dyn = int(compiled.metadata.shared)
    row = {
        "backend": "triton",
        "kernel": f"{mod}[{label};{config_str(cfg)}]",
        "arch": arch,
        "registers": info.get("registers"),
        "spill_stores_bytes": info.get("spill_stores_bytes"),
        "spill_loads_bytes": info.get("spill_loads_bytes"),
        "smem_static_bytes": info["smem_static_bytes"],
        "smem_dynamic_bytes": dyn,
        "threads_per_block": threads,
        "occupancy": occupancy(info.get("registers") or 0, info["smem_static_bytes"] + dyn, threads, arch),
        "tensor_core_instrs": sum(n[t] for t in TENSOR_CORE),
        **n,
        "source": source,
        # detail, not in the report's columns (collect_triton(detail=True) keeps them)
        "compile_s": round(compile_s, 3), "cache_dir": str(d.relative_to(ROOT)),
    }
    (d / "row.json").write_text(json.dumps(row))
    return row


def _worker(jobs: list) -> list:
    """Child-process entry: compile (mod, index, arch) jobs in turn, return their rows."""
    rows = []
    for mod, index, arch in jobs:
        try:
            rows.append(compile_one(mod, index, arch))
        except Exception as e:  # one failing compile must not hide the others: report it as a row
            rows.append({"backend": "triton", "kernel": f"{mod}[#{index}]", "arch": arch,
                         "error": f"{type(e).__name__}: {e}"[:2000], "source": f"kernels/triton/{mod}.py"})
    return rows


def _child_env():
    env = dict(os.environ)
    for k in ("TRITON_INTERPRET", "KB_TRITON_INTERPRET"):
        env.pop(k, None)
    env.setdefault("TRITON_CACHE_DIR", str(ROOT / ".cache" / "triton"))
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT)] + [p for p in [env.get("PYTHONPATH")] if p])
    return env


DETAIL = ["compile_s", "cache_dir"]


def collect_triton(archs=ARCHS, modules=MODULES, jobs: int | None = None, use_cache: bool = True,
                   detail: bool = False):
    """One kernels-report row per (Triton kernel and config, arch), as a pandas DataFrame with the
    columns of docs/CONTRACTS.md section 4, plus `error` where a compile failed, plus with `detail` the
    HMMA and HGMMA counts apart, the compile time and the artifacts' folder."""
    import pandas as pd

    rows, todo = [], []
    for mod in modules:
        specs, _ = _specs(mod)
        for i, spec in enumerate(specs):
            label, fn, sig, const, cfg = spec[:5]
            for arch in (a for a in archs if len(spec) < 6 or a in spec[5]):
                cached = CACHE / _spec_key(mod, label, fn, sig, const, cfg, arch) / "row.json"
                if use_cache and cached.exists():
                    row = json.loads(cached.read_text())
                    if "ldgsts" not in row:  # cached before the TMA / LDGSTS columns: count them in its SASS
                        sass = "".join(p.read_text() for p in cached.parent.glob("*.sass"))
                        row["tma_loads"] = len(re.findall(r"\bUTMALDG\b", sass))
                        row["ldgsts"] = len(re.findall(r"\bLDGSTS\b", sass))
                    rows.append(row)
                else:
                    todo.append((mod, i, arch))
    if todo:
        jobs = max(1, min(jobs or min(2, os.cpu_count() or 1), len(todo)))
        procs = []
        for j in range(jobs):
            payload = json.dumps(todo[j::jobs])
            procs.append(subprocess.Popen([sys.executable, "-m", "kernels.triton.aot", "--worker", payload],
                                          cwd=ROOT, env=_child_env(), stdout=subprocess.PIPE,
                                          stderr=subprocess.PIPE, text=True))
        for p, j in zip(procs, range(jobs)):
            out, err = p.communicate()
            if p.returncode != 0:
                raise RuntimeError(f"Triton AOT worker failed ({p.returncode}):\n{err[-4000:]}")
            rows.extend(json.loads(out.strip().splitlines()[-1]))
    df = pd.DataFrame(rows)
    if "registers" in df.columns:  # computed here, not cached: the formula may come from harness/kernels_report.py
        df["occupancy"] = [occupancy(int(r), int(ss) + int(sd), int(t), a) if r == r else float("nan")
                           for r, ss, sd, t, a in zip(df["registers"], df["smem_static_bytes"].fillna(0),
                                                       df["smem_dynamic_bytes"].fillna(0),
                                                       df["threads_per_block"].fillna(0), df["arch"])]
    for c in COLUMNS:
        if c not in df.columns:
            df[c] = float("nan")
    extra = [c for c in df.columns if c not in COLUMNS and (detail or c not in DETAIL)]
    return df[COLUMNS + extra].sort_values(["kernel", "arch"], kind="stable").reset_index(drop=True)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--arch", action="append", help="sm_80, sm_90a (default: both)")
    ap.add_argument("--module", action="append", choices=MODULES)
    ap.add_argument("--jobs", type=int)
    ap.add_argument("--no-cache", action="store_true")
    ap.add_argument("--csv", help="also write the table here")
    ap.add_argument("--detail", action="store_true", help="HMMA/HGMMA apart, compile times, artifact folders")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.worker:
        print(json.dumps(_worker(json.loads(a.worker))))
        return 0
    df = collect_triton(tuple(a.arch or ARCHS), tuple(a.module or MODULES), a.jobs, not a.no_cache, a.detail)
    if a.csv:
        df.to_csv(a.csv, index=False)
    import pandas as pd
    with pd.option_context("display.max_rows", None, "display.width", 250, "display.max_colwidth", 90):
        print(df.drop(columns=["backend", "source", "cache_dir"], errors="ignore").to_string(index=False))
    return 1 if "error" in df.columns and df["error"].notna().any() else 0


if __name__ == "__main__":
    sys.exit(main())
