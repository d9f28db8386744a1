"""The compiler's resource report of the native GPU kernels, per kernel and architecture, with the
theoretical occupancy each one can reach (`python bench.py --kernels-report`).

Sources, for build/lib/libkb_cuda.so:
- `cuobjdump --dump-resource-usage`: registers, static shared memory, local memory (per kernel, per arch);
- the `-Xptxas -v` logs the build keeps (build/**/ptxas/*.log): spill stores and loads in bytes;
- `cuobjdump -sass`: HMMA / HGMMA (tensor cores), UTMALDG (TMA loads) and LDGSTS (cp.async) instructions per
  kernel and architecture, each its own column;
- the `// kb-report: <kernel> threads=<n> smem_dynamic=<bytes>` line above each kernel in
  kernels/cuda/*.cu: the launch configuration the occupancy is computed for (the binary does not know it).
cuobjdump is taken from nvcc's directory, then PATH, then the nvidia-cuda-cuobjdump wheel (with
nvidia-cuda-nvdisasm for -sass). Without it, registers and shared memory come from the ptxas logs and the
tensor-core count is NaN. Triton kernels add rows through kernels.triton.aot.collect_triton() when present.

The parsers of the binary and its logs: harness/cuda_binary.py; theoretical occupancy: harness/occupancy.py (one
formula for both backends, which kernels/triton/aot.py imports without importing this module).
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd

from harness.cuda_binary import (SASS_COUNTS, TENSOR_CORE, base_name, count_sass_instrs, count_tensor_core_instrs,  # noqa: F401
                                 demangle, find_tool,
                                 parse_annotations, parse_ptxas_log, parse_resource_usage, ptxas_logs, short_name)
from harness.cuda_binary import _run
from harness.occupancy import ARCH_LIMITS, ArchLimits, arch_number, occupancy  # noqa: F401
from harness.result_sets import results_root

REPO = Path(__file__).resolve().parents[1]
COLUMNS = ["backend", "kernel", "arch", "registers", "spill_stores_bytes", "spill_loads_bytes",
           "smem_static_bytes", "smem_dynamic_bytes", "threads_per_block", "occupancy",
           "tensor_core_instrs", "hmma", "hgmma", "imma", "igmma", "tma_loads", "ldgsts", "source"]


# -- collection ----------------------------------------------------------------------------------------
def collect_cuda(build_dir: str | os.PathLike | None = None, src_dir: str | os.PathLike | None = None
                 ) -> pd.DataFrame:
    """One row per (kernel, arch) of libkb_cuda.so in `build_dir` (default: $KB_BUILD_DIR or build/)."""
    build = Path(build_dir or os.environ.get("KB_BUILD_DIR") or REPO / "build")
    lib = build / "lib" / "libkb_cuda.so"
    src = Path(src_dir or REPO / "kernels" / "cuda")
    log = {}
    for p in ptxas_logs(build):
        log.update(parse_ptxas_log(p.read_text(errors="replace")))
    usage, tc = {}, {}
    cuobjdump = find_tool("cuobjdump")
    if cuobjdump and lib.exists():
        usage = parse_resource_usage(_run([cuobjdump, "--dump-resource-usage", str(lib)]))
        try:
            tc = count_sass_instrs(_run([cuobjdump, "-sass", str(lib)]))
        except subprocess.CalledProcessError:  # no nvdisasm
            tc = {}
    keys = sorted(set(usage) | set(log), key=lambda k: (base_name(k[0]), k[0], k[1]))
    if not keys:
        return pd.DataFrame(columns=COLUMNS)
    names = demangle([k[0] for k in keys])
    notes = parse_annotations(src)
    rows = []
    for mangled, arch in keys:
        u, lg = usage.get((mangled, arch)), log.get((mangled, arch))
        note = notes.get(base_name(mangled), {})
        regs = u["registers"] if u else lg["registers"]
        if lg:
            smem_static = lg["smem_static"]
        else:  # cuobjdump counts the 1 KiB that sm_90+ reserves per block in SHARED; the model adds it back
            reserved = 1024 if arch_number(arch) >= 90 and u["smem_static"] >= 1024 else 0
            smem_static = u["smem_static"] - reserved
        if lg:
            spill_st, spill_ld = lg["spill_stores"], lg["spill_loads"]
        else:  # no log: local memory per thread stands in (none of these kernels has local arrays)
            spill_st = spill_ld = u["local"]
        threads = note.get("threads", 0)
        smem_dyn = note.get("smem_dynamic", 0)
        rows.append(dict(
            backend="cuda", kernel=short_name(names[mangled]), arch=arch, registers=regs,
            spill_stores_bytes=spill_st, spill_loads_bytes=spill_ld,
            smem_static_bytes=smem_static, smem_dynamic_bytes=smem_dyn, threads_per_block=threads,
            occupancy=occupancy(regs, smem_static + smem_dyn, threads, arch) if threads else float("nan"),
            tensor_core_instrs=sum(c[t] for t in TENSOR_CORE) if (c := tc.get((mangled, arch))) else float("nan"),
            **{k: c[k] if c else float("nan") for k in SASS_COUNTS},
            source=note.get("source", "")))
    return pd.DataFrame(rows, columns=COLUMNS)


def collect(build_dir=None) -> pd.DataFrame:
    """CUDA rows plus the Triton rows of kernels.triton.aot.collect_triton() when it is importable."""
    frames = [collect_cuda(build_dir)]
    try:
        from kernels.triton.aot import collect_triton
    except Exception:
        collect_triton = None
    if collect_triton is not None:
        try:
            tri = pd.DataFrame(collect_triton())
            frames.append(tri.reindex(columns=COLUMNS + [c for c in tri.columns if c not in COLUMNS]))
        except Exception as exc:  # one backend's failure must not hide the other's table
            print(f"kernels report: Triton rows unavailable: {exc}", file=sys.stderr)
    frames = [f for f in frames if len(f)]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=COLUMNS)


def print_table(df: pd.DataFrame) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title="Native kernels: compiler resource usage and theoretical occupancy")
    heads = ["backend", "kernel", "arch", "regs", "spill st/ld B", "smem static", "smem dyn", "threads",
             "occupancy", "HMMA", "HGMMA", "TMA", "LDGSTS"]
    for h in heads:
        table.add_column(h, overflow="fold")
    for r in df.itertuples(index=False):
        spill = f"{r.spill_stores_bytes}/{r.spill_loads_bytes}"
        if (r.spill_stores_bytes or 0) > 0 or (r.spill_loads_bytes or 0) > 0:
            spill = f"[red]{spill}[/red]"
        occ = "" if pd.isna(r.occupancy) else f"{100 * r.occupancy:.1f}%"
        counts = ["" if pd.isna(getattr(r, k)) else str(int(getattr(r, k))) for k in SASS_COUNTS]
        table.add_row(r.backend, r.kernel, r.arch, str(r.registers), spill, str(r.smem_static_bytes),
                      str(r.smem_dynamic_bytes), str(r.threads_per_block), occ, *counts)
    Console(width=None if sys.stdout.isatty() else 200).print(table)


def write(df: pd.DataFrame, out_dir: str | os.PathLike) -> list[Path]:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / "kernels_report.csv", out / "kernels_report.parquet"]
    df.to_csv(paths[0], index=False)
    df.to_parquet(paths[1], index=False)
    return paths


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="bench.py --kernels-report", description=__doc__.splitlines()[0])
    ap.add_argument("--build-dir", default=os.environ.get("KB_BUILD_DIR") or str(REPO / "build"),
                    help="CMake build directory holding lib/libkb_cuda.so (default: build/)")
    ap.add_argument("--out", default=str(results_root()),
                    help="directory for kernels_report.csv and kernels_report.parquet (default: results/)")
    args = ap.parse_args(argv)
    df = collect(args.build_dir)
    if df.empty:
        print(f"no native GPU kernels found in {args.build_dir}: build them with 'make build' "
              "(cmake -S . -B build && cmake --build build -j2); nvcc compiles without a GPU", file=sys.stderr)
        return 1
    print_table(df)
    for p in write(df, args.out):
        print(f"wrote {p}")
    spills = df[(df.spill_stores_bytes.fillna(0) > 0) | (df.spill_loads_bytes.fillna(0) > 0)]
    if len(spills):
        print(f"{len(spills)} kernel(s) spill registers: " + ", ".join(spills.kernel + "@" + spills.arch))
    return 0


if __name__ == "__main__":
    sys.exit(main())
