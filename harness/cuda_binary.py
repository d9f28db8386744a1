"""Reading a CUDA binary and its compiler logs, for the kernels report (harness/kernels_report.py):
finding cuobjdump/nvdisasm (nvcc's toolkit, PATH, the NVIDIA wheels), demangling kernel names, and parsing
`cuobjdump --dump-resource-usage`, `-Xptxas -v` logs, `cuobjdump -sass` (HMMA/HGMMA counts) and the
`// kb-report: <kernel> threads=<n> smem_dynamic=<bytes>` launch annotations of kernels/cuda/*.cu.
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


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


# SASS opcodes that say what a kernel really uses on an architecture: HMMA (mma.sync tensor cores, sm_80 and
# later), HGMMA (wgmma, warpgroup MMA, sm_90a), their integer forms IMMA (mma.sync s8/u8) and IGMMA (wgmma s8/u8),
# UTMALDG (TMA bulk tensor loads, sm_90), LDGSTS (cp.async).
SASS_COUNTS = {"hmma": r"\bHMMA\.", "hgmma": r"\bHGMMA\.", "imma": r"\bIMMA\.", "igmma": r"\bIGMMA\.",
               "tma_loads": r"\bUTMALDG\b", "ldgsts": r"\bLDGSTS\b"}
TENSOR_CORE = ("hmma", "hgmma", "imma", "igmma")      # the counts that are tensor-core instructions


def count_sass_instrs(sass: str) -> dict[tuple[str, str], dict[str, int]]:
    """`cuobjdump -sass` -> {(mangled, arch): {each key of SASS_COUNTS: count}}."""
    counts, arch, func = {}, None, None
    pats = {k: re.compile(v) for k, v in SASS_COUNTS.items()}
    for line in sass.splitlines():
        if m := re.match(r"\s*code for (sm_\w+)", line):
            arch = m.group(1)
        elif m := re.match(r"\s*Function : (\S+)", line):
            func = m.group(1)
            counts.setdefault((func, arch), dict.fromkeys(SASS_COUNTS, 0))
        elif func:
            for k, pat in pats.items():
                if pat.search(line):
                    counts[(func, arch)][k] += 1
    return counts


def count_tensor_core_instrs(sass: str) -> dict[tuple[str, str], int]:
    """`cuobjdump -sass` -> {(mangled, arch): number of tensor-core instructions (HMMA, HGMMA, IMMA, IGMMA)}."""
    return {k: sum(c[t] for t in TENSOR_CORE) for k, c in count_sass_instrs(sass).items()}


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


def ptxas_logs(build_dir: Path) -> list[Path]:
    return sorted(Path(build_dir).glob("**/ptxas/*.log"))
