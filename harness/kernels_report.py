"""The compiler's resource report of the native GPU kernels, per kernel and architecture, with the
theoretical occupancy each one can reach (`python bench.py --kernels-report`).

Sources, for build/lib/libkb_cuda.so:
- `cuobjdump --dump-resource-usage`: registers, static shared memory, local memory (per kernel, per arch);
- the `-Xptxas -v` logs the build keeps (build/**/ptxas/*.log): spill stores and loads in bytes;
- `cuobjdump -sass`: HMMA / HGMMA instructions per kernel (tensor-core use);
- the `// kb-report: <kernel> threads=<n> smem_dynamic=<bytes>` line above each kernel in
  kernels/cuda/*.cu: the launch configuration the occupancy is computed for (the binary does not know it).
cuobjdump is taken from nvcc's directory, then PATH, then the nvidia-cuda-cuobjdump wheel (with
nvidia-cuda-nvdisasm for -sass). Without it, registers and shared memory come from the ptxas logs and the
tensor-core count is NaN. Triton kernels add rows through kernels.triton.aot.collect_triton() when present.

Theoretical occupancy follows the CUDA occupancy calculator: resident blocks per SM are limited by
threads, by the block-count limit, by registers (allocated per warp in units of 256, from a register file
split over 4 sub-partitions) and by shared memory (allocated in units of 128 bytes plus 1 KiB reserved per
block on sm_80+); occupancy = resident warps / maximum warps per SM.
"""
from __future__ import annotations

import argparse
import math
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from harness.result_sets import results_root

REPO = Path(__file__).resolve().parents[1]
COLUMNS = ["backend", "kernel", "arch", "registers", "spill_stores_bytes", "spill_loads_bytes",
           "smem_static_bytes", "smem_dynamic_bytes", "threads_per_block", "occupancy",
           "tensor_core_instrs", "source"]


@dataclass(frozen=True)
class ArchLimits:
    max_threads_sm: int
    max_blocks_sm: int
    smem_sm: int                  # shared memory per SM available to blocks (bytes, largest carveout)
    smem_reserved_block: int      # reserved by the system per block
    regs_sm: int = 65536
    max_regs_thread: int = 255
    reg_alloc_unit: int = 256     # registers, per warp
    sub_partitions: int = 4
    smem_alloc_unit: int = 128


# Per compute capability (CUDA C Programming Guide, "Compute capabilities" table).
ARCH_LIMITS = {
    70: ArchLimits(2048, 32, 96 * 1024, 0),
    75: ArchLimits(1024, 16, 64 * 1024, 0),
    80: ArchLimits(2048, 32, 164 * 1024, 1024),
    86: ArchLimits(1536, 16, 100 * 1024, 1024),
    87: ArchLimits(2048, 32, 164 * 1024, 1024),
    89: ArchLimits(1536, 24, 100 * 1024, 1024),
    90: ArchLimits(2048, 32, 228 * 1024, 1024),
    100: ArchLimits(2048, 32, 228 * 1024, 1024),
    120: ArchLimits(1536, 32, 100 * 1024, 1024),
}


def arch_number(arch: str) -> int:
    """'sm_90a' -> 90."""
    m = re.match(r"sm_(\d+)", arch)
    if not m:
        raise ValueError(f"not an architecture: {arch!r}")
    return int(m.group(1))


def occupancy(registers: int, smem_bytes: int, threads: int, arch: str) -> float:
    """Theoretical occupancy (fraction of the SM's maximum warps) of a kernel using `registers` per thread,
    `smem_bytes` of shared memory (static + dynamic) per block, launched with `threads` per block on `arch`
    ("sm_80", "sm_90a"...). kernels/triton/aot.py imports it, so both backends' rows use one formula."""
    lim = ARCH_LIMITS.get(arch_number(arch))
    if lim is None or threads <= 0 or registers > lim.max_regs_thread:
        return float("nan")
    warps = math.ceil(threads / 32)
    max_warps = lim.max_threads_sm // 32
    by_threads = lim.max_threads_sm // (warps * 32)
    if registers > 0:
        regs_warp = math.ceil(registers * 32 / lim.reg_alloc_unit) * lim.reg_alloc_unit
        warps_per_part = (lim.regs_sm // lim.sub_partitions) // regs_warp
        by_regs = (warps_per_part * lim.sub_partitions) // warps
    else:
        by_regs = lim.max_blocks_sm
    smem = smem_bytes + lim.smem_reserved_block
    smem = math.ceil(smem / lim.smem_alloc_unit) * lim.smem_alloc_unit
    by_smem = lim.smem_sm // smem if smem > 0 else lim.max_blocks_sm
    blocks = min(by_threads, lim.max_blocks_sm, by_regs, by_smem)
    return blocks * warps / max_warps


# -- tools --------------------------------------------------------------------------------------------
def find_tool(name: str) -> str | None:
    """nvcc's own toolkit first, then PATH, then the NVIDIA wheels (nvidia-cuda-cuobjdump/-nvdisasm)."""
    nvcc = shutil.which("nvcc")
    candidates = []
    if nvcc:
        candidates.append(Path(os.path.realpath(nvcc)).parent / name)
        candidates.append(Path("/usr/local/cuda/bin") / name)
    found = shutil.which(name)
    if found:
        candidates.append(Path(found))
    try:
        import nvidia  # namespace package of the NVIDIA wheels
        for root in getattr(nvidia, "__path__", []):
            candidates += sorted(Path(root).glob(f"*/bin/{name}"))
    except ImportError:
        pass
    for c in candidates:
        if c.is_file() and os.access(c, os.X_OK):
            return str(c)
    return None


def _run(cmd: list[str]) -> str:
    env = dict(os.environ)
    nvdisasm = find_tool("nvdisasm")  # cuobjdump -sass runs nvdisasm
    if nvdisasm:
        env["PATH"] = str(Path(nvdisasm).parent) + os.pathsep + env.get("PATH", "")
    return subprocess.run(cmd, check=True, capture_output=True, text=True, env=env).stdout


def demangle(names: list[str]) -> dict[str, str]:
    cxxfilt = shutil.which("c++filt")
    if not cxxfilt or not names:
        return {n: n for n in names}
    out = subprocess.run([cxxfilt], input="\n".join(names), capture_output=True, text=True).stdout.splitlines()
    return dict(zip(names, out)) if len(out) == len(names) else {n: n for n in names}


def short_name(demangled: str) -> str:
    """'void kb_f<float, 64>(float const*, int)' -> 'kb_f<float, 64>' (the template arguments identify it)."""
    name = re.sub(r"^void ", "", demangled)
    depth = 0
    for i, ch in enumerate(name):
        depth += ch == "<"
        depth -= ch == ">"
        if ch == "(" and depth == 0:
            return name[:i]
    return name


def base_name(mangled: str) -> str:
    """The unqualified function name in an Itanium-mangled name: _Z17kb_gemm_tc_kernelI... -> kb_gemm_tc_kernel."""
    m = re.match(r"_Z(\d+)", mangled)
    return mangled[m.end():m.end() + int(m.group(1))] if m else mangled


# -- parsers -------------------------------------------------------------------------------------------
def parse_resource_usage(text: str) -> dict[tuple[str, str], dict]:
    """`cuobjdump --dump-resource-usage` -> {(mangled, arch): {registers, smem_static, local, stack}}."""
    rows, arch, func = {}, None, None
    for line in text.splitlines():
        if m := re.match(r"\s*arch = (sm_\w+)", line):
            arch = m.group(1)
        elif m := re.match(r"\s*Function (\S+):\s*$", line):
            func = m.group(1)
        elif func and (m := re.match(r"\s*REG:(\d+) STACK:(\d+) SHARED:(\d+) LOCAL:(\d+)", line)):
            rows[(func, arch)] = dict(registers=int(m.group(1)), stack=int(m.group(2)),
                                      smem_static=int(m.group(3)), local=int(m.group(4)))
            func = None
    return rows


def parse_ptxas_log(text: str) -> dict[tuple[str, str], dict]:
    """`-Xptxas -v` output -> {(mangled, arch): {registers, spill_stores, spill_loads, smem_static}}."""
    rows, key = {}, None
    for line in text.splitlines():
        if m := re.search(r"Compiling entry function '([^']+)' for '(sm_\w+)'", line):
            key = (m.group(1), m.group(2))
            rows[key] = dict(registers=0, spill_stores=0, spill_loads=0, smem_static=0)
        elif key and (m := re.search(r"(\d+) bytes spill stores, (\d+) bytes spill loads", line)):
            rows[key].update(spill_stores=int(m.group(1)), spill_loads=int(m.group(2)))
        elif key and (m := re.search(r"Used (\d+) registers", line)):
            rows[key]["registers"] = int(m.group(1))
            if s := re.search(r"(\d+) bytes smem", line):
                rows[key]["smem_static"] = int(s.group(1))
    return rows


def count_tensor_core_instrs(sass: str) -> dict[tuple[str, str], int]:
    """`cuobjdump -sass` -> {(mangled, arch): number of HMMA/HGMMA instructions}."""
    counts, arch, func = {}, None, None
    for line in sass.splitlines():
        if m := re.match(r"\s*code for (sm_\w+)", line):
            arch = m.group(1)
        elif m := re.match(r"\s*Function : (\S+)", line):
            func = m.group(1)
            counts.setdefault((func, arch), 0)
        elif func and re.search(r"\b(HMMA|HGMMA)\.", line):
            counts[(func, arch)] += 1
    return counts


def parse_annotations(src_dir: Path) -> dict[str, dict]:
    """`// kb-report: <kernel> threads=<n> smem_dynamic=<bytes>` lines -> {kernel: {threads, smem_dynamic, source}}."""
    notes = {}
    for path in sorted(src_dir.glob("*.cu")):
        for line in path.read_text().splitlines():
            if m := re.match(r"\s*// kb-report: (\w+) threads=(\d+) smem_dynamic=(\d+)", line):
                notes[m.group(1)] = dict(threads=int(m.group(2)), smem_dynamic=int(m.group(3)),
                                         source=str(path.relative_to(REPO)) if path.is_relative_to(REPO)
                                         else str(path))
    return notes


# -- collection ----------------------------------------------------------------------------------------
def ptxas_logs(build_dir: Path) -> list[Path]:
    return sorted(Path(build_dir).glob("**/ptxas/*.log"))


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
            tc = count_tensor_core_instrs(_run([cuobjdump, "-sass", str(lib)]))
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
            tensor_core_instrs=tc.get((mangled, arch), float("nan")) if tc else float("nan"),
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
             "occupancy", "HMMA/HGMMA"]
    for h in heads:
        table.add_column(h, overflow="fold")
    for r in df.itertuples(index=False):
        spill = f"{r.spill_stores_bytes}/{r.spill_loads_bytes}"
        if (r.spill_stores_bytes or 0) > 0 or (r.spill_loads_bytes or 0) > 0:
            spill = f"[red]{spill}[/red]"
        occ = "" if pd.isna(r.occupancy) else f"{100 * r.occupancy:.1f}%"
        tc = "" if pd.isna(r.tensor_core_instrs) else str(int(r.tensor_core_instrs))
        table.add_row(r.backend, r.kernel, r.arch, str(r.registers), spill, str(r.smem_static_bytes),
                      str(r.smem_dynamic_bytes), str(r.threads_per_block), occ, tc)
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
