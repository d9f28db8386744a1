"""Mutation testing of the real kernels: each mutant is one deliberate bug in kernels/cuda, kernels/cpp or
kernels/triton (a barrier removed, a cp.async wait made shallower, a mask off by one, the online-softmax rescale
dropped, a shuffle lane changed, fragment registers swapped, a tail loop cut short...). For each, the script
builds the mutated kernel and runs the checks the tests run; a mutant is killed when a check fails (a race
report of the simulation's race checker, an `incorrect` result, a launch error, a crash). Every mutant must be
killed; the script prints the kill table and exits 1 if one survives.

    python scripts/mutants.py                 # every mutant (make mutants)
    python scripts/mutants.py --subset        # the few that tests/test_mutants.py runs in CI
    python scripts/mutants.py --only gemm     # mutants whose id contains "gemm"
    python scripts/mutants.py --list

How: the tracked sources are copied to .cache/mutants/tree (refreshed each run); a mutant is written into the
copy, the copy's build is brought up to date (only the mutated file recompiles), the checks run in a fresh
process importing the copy, and the file is restored. CUDA kernels run under the CPU simulation built with the
race checker (libkb_cuda_sim_race.so); C++ kernels in the copy's libkb_cpp.so; Triton kernels under
TRITON_INTERPRET=1. The checks: every "test" case of the kernel's suite at every dtype the backend runs here,
fresh inputs, against the suite's float64 reference and tolerance, plus the special-value inputs of
tests/special_values.py for the row and attention suites.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
WORK = Path(os.environ.get("KB_MUTANTS_DIR", ROOT / ".cache" / "mutants"))  # the copy and its builds
TREE = WORK / "tree"


@dataclass(frozen=True)
class Mutant:
    id: str
    path: str       # relative to the repository root
    old: str        # exact text; its `nth` occurrence (0: the first) is replaced
    new: str
    what: str
    nth: int = 0
    subset: bool = False   # run by tests/test_mutants.py (CI)
    checks: tuple[str, ...] = ()   # the checks that run (suites, "block_reduce"), when not derived from the path

    @property
    def backend(self) -> str:
        return self.path.split("/")[1]   # cuda | cpp | triton

    @property
    def suites(self) -> tuple[str, ...]:
        if self.checks:
            return self.checks
        name = Path(self.path).stem
        if name in ("kb_common", "common"):
            return ("softmax", "norm", "block_reduce")   # block_reduce: the helpers themselves (tests/sim_helpers.py)
        if name in ("rmsnorm", "layernorm", "simd"):
            return ("norm",)
        if name.startswith("gemm"):
            return ("gemm",)
        if name.startswith("attention"):
            return ("attention",)
        return (name,)


A = "kernels/cuda/attention_fwd.cu"
G = "kernels/cuda/gemm_tc.cu"
H = "kernels/cuda/include/kb_common.h"
MUTANTS = [
    # --- CUDA attention, tensor-core kernel (bf16/fp16) ---
    Mutant("cuda-attn-bar-q", A, "  kb::cp_async_wait_all();\n  __syncthreads();\n\n  // This warp's",
           "  kb::cp_async_wait_all();\n\n  // This warp's", "barrier after the Q tile's cp.async removed (line 60)"),
    Mutant("cuda-attn-bar-kv-reuse", A, "    __syncthreads();  // every warp is done with the previous K and V",
           "    // every warp is done with the previous K and V", "barrier before K/V tiles are overwritten removed (80)",
           subset=True),
    Mutant("cuda-attn-bar-k", A, "kb::cp_async_wait<1>();  // K has landed; V may still be in flight\n    __syncthreads();",
           "kb::cp_async_wait<1>();  // K has landed; V may still be in flight", "barrier after K lands removed (94)"),
    Mutant("cuda-attn-bar-v", A, "kb::cp_async_wait<0>();  // V has landed\n    __syncthreads();",
           "kb::cp_async_wait<0>();  // V has landed", "barrier after V lands removed (154)"),
    Mutant("cuda-attn-wait-k", A, "kb::cp_async_wait<1>();  // K", "kb::cp_async_wait<2>();  // K",
           "cp.async wait depth for K 1 -> 2 (K read in flight)"),
    Mutant("cuda-attn-wait-v", A, "kb::cp_async_wait<0>();  // V", "kb::cp_async_wait<1>();  // V",
           "cp.async wait depth for V 0 -> 1"),
    Mutant("cuda-attn-causal", A, "(p.causal && key > qrow[e / 2])", "(p.causal && key >= qrow[e / 2])",
           "causal mask off by one (diagonal masked)"),
    Mutant("cuda-attn-tail-mask", A, "const bool masked = key >= p.SK || (p.causal && key > qrow",
           "const bool masked = key > p.SK || (p.causal && key > qrow", "key tail mask off by one"),
    Mutant("cuda-attn-rescale-o", A, "        oacc[j][2 * h] *= alpha;\n        oacc[j][2 * h + 1] *= alpha;\n", "",
           "online-softmax rescale of the output accumulator dropped"),
    Mutant("cuda-attn-rescale-l", A, "      row_sum[h] *= alpha;\n", "", "online-softmax rescale of the row sum dropped"),
    Mutant("cuda-attn-shfl", A, "mx[h] = fmaxf(mx[h], __shfl_xor_sync(0xffffffffu, mx[h], 2));",
           "mx[h] = fmaxf(mx[h], __shfl_xor_sync(0xffffffffu, mx[h], 4));", "row-max shuffle lane 2 -> 4"),
    Mutant("cuda-attn-frag", A, "const uint32_t b0[2] = {r[0], r[1]}, b1[2] = {r[2], r[3]};\n"
           "        kb::Mma<T>::run(s[2 * np]", "const uint32_t b0[2] = {r[1], r[0]}, b1[2] = {r[2], r[3]};\n"
           "        kb::Mma<T>::run(s[2 * np]", "K fragment registers b0/b1 swapped"),
    Mutant("cuda-attn-frag-p", A, "kb::Mma<T>::pack(s[2 * ks][2], s[2 * ks][3]),\n                              "
           "kb::Mma<T>::pack(s[2 * ks + 1][0], s[2 * ks + 1][1]),",
           "kb::Mma<T>::pack(s[2 * ks + 1][0], s[2 * ks + 1][1]),\n                              "
           "kb::Mma<T>::pack(s[2 * ks][2], s[2 * ks][3]),", "P fragment registers a1/a2 swapped"),
    Mutant("cuda-attn-out-tail", A, "    if (qrow[h] >= p.SQ) continue;\n", "",
           "output row tail check dropped (rows past SQ written)"),
    # --- CUDA attention, fp32 kernel ---
    Mutant("cuda-attn32-bar-reuse", A, "    __syncthreads();  // previous K, V, P consumed", "    // previous K, V, P",
           "fp32 kernel: barrier before K/V/P reuse removed"),
    Mutant("cuda-attn32-bar-kv", A, "    kb::cp_async_wait_all();\n    __syncthreads();\n\n    // Scores",
           "    kb::cp_async_wait_all();\n\n    // Scores", "fp32 kernel: barrier after K/V land removed"),
    Mutant("cuda-attn32-syncwarp", A, "    __syncwarp();  // the quad's P values", "    // the quad's P values",
           "fp32 kernel: __syncwarp before the quad reads P removed"),
    Mutant("cuda-attn32-causal", A, "(p.causal && key > qi)", "(p.causal && key >= qi)",
           "fp32 kernel: causal mask off by one"),
    Mutant("cuda-attn32-wait", A, "    kb::cp_async_commit();\n    kb::cp_async_wait_all();\n    __syncthreads();\n\n    // Scores",
           "    kb::cp_async_commit();\n    __syncthreads();\n\n    // Scores",
           "fp32 kernel: cp.async wait for K/V removed (read in flight)"),
    # --- CUDA GEMM ---
    Mutant("cuda-gemm-bar", G, "    kb::cp_async_wait<STAGES - 2>();\n    __syncthreads();",
           "    kb::cp_async_wait<STAGES - 2>();", "main-loop barrier removed (line 102)", subset=True),
    Mutant("cuda-gemm-wait", G, "kb::cp_async_wait<STAGES - 2>();", "kb::cp_async_wait<STAGES - 1>();",
           "cp.async wait depth STAGES-2 -> STAGES-1 (tile read in flight)", subset=True),
    Mutant("cuda-gemm-b-row", G, "      kb::cp_async_16_zfill(Bs + r * B_LD + c, src, ok);",
           "      if (r != 5) kb::cp_async_16_zfill(Bs + r * B_LD + c, src, ok);",
           "cp.async path never loads row 5 of the B tile"),
    Mutant("cuda-gemm-mask-k", G, "As[r * A_LD + c] = (m0 + r < M && k0 + c < K)",
           "As[r * A_LD + c] = (m0 + r < M && k0 + c <= K)", "scalar path: A tile K mask off by one"),
    Mutant("cuda-gemm-mask-async", G, "const bool ok = (k0 + r < K) && (n0 + c < N);",
           "const bool ok = (k0 + r + 1 < K) && (n0 + c < N);", "cp.async path: B tile K mask off by one"),
    Mutant("cuda-gemm-frag", G, "bf[j][0] = r[0]; bf[j][1] = r[1];", "bf[j][0] = r[1]; bf[j][1] = r[0];",
           "B fragment registers b0/b1 swapped"),
    Mutant("cuda-gemm-ldmatrix", G, "kb::ldmatrix_x4(af[i], as + row * A_LD + kk + (lane / 16) * 8);",
           "kb::ldmatrix_x4(af[i], as + row * A_LD + kk + ((lane / 8) % 2) * 8);", "A ldmatrix lane addresses wrong"),
    Mutant("cuda-gemm-epi-col", G, "        if (col + 1 < N) c[1]", "        if (col + 1 < N - 1) c[1]",
           "epilogue column tail off by one (last odd column unwritten)"),
    # --- CUDA row kernels ---
    Mutant("cuda-blocksum-bar1", H, "  v = warp_sum(v);\n  __syncthreads();", "  v = warp_sum(v);",
           "block_sum: write-after-read barrier removed (kb_common.h line 72)", subset=True),
    Mutant("cuda-blocksum-bar2", H, "  if (lane == 0) scratch[warp] = v;\n  __syncthreads();\n  float r = lane < nwarps ? scratch[lane] : 0.0f;",
           "  if (lane == 0) scratch[warp] = v;\n  float r = lane < nwarps ? scratch[lane] : 0.0f;",
           "block_sum: read-after-write barrier removed"),
    # equivalent for every real kernel (softmax calls block_max first): killed by the helper-level check only
    Mutant("cuda-blockmax-bar1", H, "  v = warp_max(v);\n  __syncthreads();", "  v = warp_max(v);",
           "block_max: write-after-read barrier removed", checks=("block_reduce",), subset=True),
    Mutant("cuda-blockmax-bar2", H, "  if (lane == 0) scratch[warp] = v;\n  __syncthreads();\n  float r = lane < nwarps ? scratch[lane] : -INFINITY;",
           "  if (lane == 0) scratch[warp] = v;\n  float r = lane < nwarps ? scratch[lane] : -INFINITY;",
           "block_max: read-after-write barrier removed"),
    Mutant("cuda-warpsum-shfl", H, "for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync",
           "for (int o = 16; o > 1; o >>= 1) v += __shfl_xor_sync", "warp_sum: last shuffle step dropped"),
    Mutant("cuda-softmax-rescale", "kernels/cuda/softmax.cu", "s = s * expf(m - v) + 1.0f;", "s = s + 1.0f;",
           "softmax: online rescale dropped"),
    Mutant("cuda-softmax-merge", "kernels/cuda/softmax.cu", "s * expf(m - row_max);", "s;",
           "softmax: per-thread sums not rescaled to the block max"),
    Mutant("cuda-softmax-tail", "kernels/cuda/softmax.cu", "yr[c] = kb::from_f32<T>(expf(v - row_max) * inv);",
           "if (c + 1 < cols) yr[c] = kb::from_f32<T>(expf(v - row_max) * inv);", "softmax: last column never written"),
    Mutant("cuda-layernorm-cache", "kernels/cuda/layernorm.cu", "    if (cached) kb_row[c] = v;\n    s += v;",
           "    if (cached && c) kb_row[c] = v;\n    s += v;", "layernorm: column 0 not cached"),
    Mutant("cuda-rmsnorm-tail", "kernels/cuda/rmsnorm.cu", "for (int64_t c = threadIdx.x; c < cols; c += blockDim.x)",
           "for (int64_t c = threadIdx.x; c < cols - 1; c += blockDim.x)", "rmsnorm: first loop drops the last column"),
    # --- C++ ---
    Mutant("cpp-softmax-tail", "kernels/cpp/softmax.cpp",
           "for (; i < n; i += W) m0 = max(m0, loadn(x + i, int(n - i < W ? n - i : W), -FLT_MAX));",
           "", "softmax: max pass tail loop dropped"),
    Mutant("cpp-blocked-sum-tail", "kernels/cpp/simd.h",
           "    for (; i < b1; i += W) s0 = add(s0, f(i, int(b1 - i < W ? b1 - i : W)));\n", "",
           "blocked_sum (LayerNorm/RMSNorm sums): tail loop of each block dropped"),
    # --- Triton ---
    Mutant("triton-softmax-rescale", "kernels/triton/softmax.py", "s = s * tl.exp(m - shift) + ", "s = s + ",
           "looped softmax: online rescale dropped"),
    Mutant("triton-softmax-neginf", "kernels/triton/softmax.py",
           "shift = tl.where(m_new == -float(\"inf\"), 0.0, m_new)", "shift = m_new",
           "looped softmax: the fix for all -inf leading tiles reverted"),
    Mutant("triton-softmax-mask", "kernels/triton/softmax.py",
           "tl.store(y_row + cols, y.to(y_ptr.dtype.element_ty), mask=mask)",
           "tl.store(y_row + cols, y.to(y_ptr.dtype.element_ty), mask=cols < n_cols - 1)",
           "fused softmax: store mask off by one"),
]


def _tracked_files() -> list[str]:
    r = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=ROOT, capture_output=True,
                       text=True, check=True)
    return [p for p in r.stdout.split("\0") if p and not p.startswith("results/")]


def sync_tree() -> None:
    """Copy the sources into the mutant tree (files whose content changed only, so builds stay incremental)."""
    for rel in _tracked_files():
        src, dst = ROOT / rel, TREE / rel
        if not src.is_file():
            continue
        data = src.read_bytes()
        if dst.exists() and dst.read_bytes() == data:
            continue
        dst.parent.mkdir(parents=True, exist_ok=True)
        dst.write_bytes(data)


def _run(cmd, **kw):
    return subprocess.run(cmd, capture_output=True, text=True, **kw)


def build(backend: str, checks: tuple[str, ...] | None = None) -> tuple[bool, str]:
    """Bring the copy's build of `backend` up to date (what `checks` need; None: all); (ok, log tail)."""
    if backend == "triton":
        return True, ""
    if backend == "cuda":
        bdir, src = WORK / "sim-build", TREE / "kernels" / "cuda" / "sim"
        targets = [t for t, need in (("kb_cuda_sim_race", checks is None or set(checks) - {"block_reduce"}),
                                     ("kb_sim_tests_race", checks is None or "block_reduce" in checks)) if need]
        cfg = ["cmake", "-S", str(src), "-B", str(bdir), "-DCMAKE_BUILD_TYPE=Release"]
    else:
        bdir, src, targets = WORK / "build", TREE, ["kb_cpp"]
        cfg = ["cmake", "-S", str(src), "-B", str(bdir), "-DCMAKE_BUILD_TYPE=Release", "-DKB_NO_CUDA=ON"]
    if not (bdir / "CMakeCache.txt").exists():
        r = _run(cfg)
        if r.returncode:
            return False, (r.stdout + r.stderr)[-3000:]
    r = _run(["cmake", "--build", str(bdir), "-j", os.environ.get("JOBS", "2"), "--target", *targets])
    return r.returncode == 0, (r.stdout + r.stderr)[-3000:]


def run_checks(backend: str, suites: tuple[str, ...], timeout: float = 600) -> dict:
    """The checks in a fresh process importing the mutant tree; {"killed", "how", "detail"}."""
    env = dict(os.environ, PYTHONPATH=str(TREE), KB_BUILD_DIR=str(WORK / "build"),
               KB_MUTANT_SIM_LIB=str(WORK / "sim-build" / "lib" / "libkb_cuda_sim_race.so"),
               KB_MUTANT_SIM_TESTS_LIB=str(WORK / "sim-build" / "lib" / "libkb_sim_tests_race.so"))
    env.pop("KB_CPP_LIB", None)
    if backend == "triton":
        env["TRITON_INTERPRET"] = "1"
    cmd = [sys.executable, str(TREE / "scripts" / "mutants.py"), "--check", backend, *suites]
    try:
        r = _run(cmd, cwd=TREE, env=env, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"killed": True, "how": "timeout", "detail": f"checks ran past {timeout:.0f} s"}
    for line in reversed(r.stdout.splitlines()):
        if line.startswith("{"):
            return json.loads(line)
    return {"killed": True, "how": "crash", "detail": f"exit {r.returncode}: {(r.stderr or r.stdout)[-300:]}"}


# ------------------------------------------------------------------------------------------------------------
# the checks (run inside the mutant tree, in a fresh process)
def _variants_of(suite, backend: str) -> list:
    """Every variant of the suite on `backend`: native kernels by their declaration's backend (their setup
    lives in kernels/native.py), Triton ones by module. None is an error: a check of nothing kills nothing."""
    def ours(v) -> bool:
        if backend in ("cpp", "cuda"):
            return getattr(v.kernel, "backend", None) == backend
        return v.setup.__module__.startswith(f"kernels.{backend}.")
    out = [v for v in suite.variants.values() if ours(v)]
    if not out:
        raise SystemExit(f"mutants: suite {suite.name} has no {backend} variant to check")
    return out


def _check_main(backend: str, suites: list[str]) -> dict:
    import torch  # noqa: F401
    from harness.check import compare
    from harness.registry import Skip, all_suites
    from tests.special_values import GEMM_SHAPES, ROW_SUITES, assert_same_specials, special_inputs, torch_expected
    known = all_suites()
    helpers = "block_reduce" in suites     # kb_common.h's block reductions checked as helpers, after the suites
    suites = [s for s in suites if s != "block_reduce"]
    names = [n for s in suites for n in ((s,) if s in known else ("rmsnorm", "layernorm")) if n in known]
    if backend == "cuda":
        from kernels.cuda import lib as cuda_lib
        simlib = cuda_lib.bind(os.environ["KB_MUTANT_SIM_LIB"])
        cuda_lib.SIM.for_case = lambda case: simlib      # CPU cases of the CUDA kernels run on this build
    n = 0
    for name, variant in ((name, v) for name in names for v in _variants_of(known[name], backend)):
        suite = known[name]
        # what bench.py would run: the dtypes the variant declares (kb_cpp_attention_fwd_amx has no dtype argument
        # and reads fp32 as bf16), the cases the suite applies it to (quant_gemm: a scheme's own kernels)
        declared = variant.requires.dtypes
        dtypes = [d for d in suite.dtypes if (backend != "triton" or d != "bfloat16")
                  and (declared is None or d in declared)]
        for dtype in dtypes:
            for i, case in enumerate(suite.cases("test", "cpu", dtype)):
                if suite.applies is not None and not suite.applies(case, variant.name):
                    continue
                inputs = suite.make_inputs(case, seed=1000 + i)
                what = f"{name} {case.name} {dtype}"
                try:
                    out = variant.setup(case, **inputs)()
                except Skip:
                    continue
                except Exception as e:  # a launch error (race report) or a failed kernel call
                    how = "race" if "racecheck" in str(e) else "error"
                    return {"killed": True, "how": how, "detail": f"{what}: {str(e)[-400:]}"}
                r = compare(out, suite.compute_reference(case, inputs), *suite.tolerance(case))
                n += 1
                if not r.ok:
                    return {"killed": True, "how": "incorrect", "detail": f"{what}: {r.message[:300]}"}
            if name in ROW_SUITES or name in ("attention", "gemm"):   # special values
                from harness.registry import Case
                tests = suite.cases("test", "cpu", dtype)
                kinds = sorted({c.get("norm") for c in tests if c.get("norm") is not None}) or [None]
                rows = (dict(rows=6, cols=1000), dict(rows=6, cols=25000))
                shapes = ((dict(b=1, h=2, hkv=1, sq=129, sk=129, d=64, causal=True),) if name == "attention"
                          else GEMM_SHAPES if name == "gemm" else rows)
                for shape, kind in ((s, k) for s in shapes for k in kinds):
                    params = dict(tests[0].params, **shape)
                    if kind is not None:
                        params["norm"] = kind
                    case = Case(name, params, "cpu", dtype)
                    inputs = special_inputs(name, suite, case)
                    try:
                        out = variant.setup(case, **inputs)()
                        assert_same_specials(out, torch_expected(suite, case, inputs), f"{name} {dtype} special",
                                             *suite.tolerance(case))
                    except Skip:
                        continue
                    except AssertionError as e:
                        return {"killed": True, "how": "special values", "detail": str(e)[:300]}
                    except Exception as e:
                        how = "race" if "racecheck" in str(e) else "error"
                        return {"killed": True, "how": how, "detail": f"{name} special: {str(e)[-400:]}"}
    if helpers and backend == "cuda":
        import ctypes
        import numpy as np
        from tests.sim_helpers import check_block_reduce
        try:
            n += check_block_reduce(ctypes.CDLL(os.environ["KB_MUTANT_SIM_TESTS_LIB"]), np.random.default_rng(7))
        except AssertionError as e:
            how = "race (helper)" if "racecheck" in str(e) else "incorrect (helper)"
            return {"killed": True, "how": how, "detail": str(e)[-400:]}
    if n == 0:   # every case skipped (a library not found, a variant not on this backend): nothing was checked
        return {"killed": True, "how": "no checks", "detail": f"no {backend} case ran in {', '.join(names)}"}
    return {"killed": False, "how": "", "detail": f"{n} checks passed"}


def run_mutant(m: Mutant) -> dict:
    path = TREE / m.path
    original = path.read_text()
    count = original.count(m.old)
    if count < m.nth + 1:
        return {"killed": False, "how": "STALE", "detail": f"anchor found {count} times in {m.path}: update the mutant"}
    i = -1
    for _ in range(m.nth + 1):
        i = original.index(m.old, i + 1)
    t0 = time.time()
    try:
        path.write_text(original[:i] + m.new + original[i + len(m.old):])
        ok, log = build(m.backend, m.suites)
        if not ok:
            res = {"killed": False, "how": "BUILD FAILED", "detail": log[-300:]}
        else:
            res = run_checks(m.backend, m.suites)
    finally:
        path.write_text(original)
    res["seconds"] = round(time.time() - t0, 1)
    return res


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--subset", action="store_true", help="only the mutants tests/test_mutants.py runs")
    ap.add_argument("--only", default="", help="only mutants whose id contains this (comma: any of these)")
    ap.add_argument("--list", action="store_true")
    ap.add_argument("--json", help="also write the results here")
    ap.add_argument("--check", nargs="+", help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.check:
        print(json.dumps(_check_main(a.check[0], a.check[1:])), flush=True)
        return 0
    chosen = [m for m in MUTANTS if (not a.subset or m.subset) and any(o in m.id for o in a.only.split(","))]
    if a.list:
        for m in chosen:
            print(f"{m.id:26} {m.path:34} {m.what}")
        return 0
    if not chosen:
        print(f"no mutant matches --only {a.only!r}", file=sys.stderr)
        return 2
    for tool in ("cmake", "g++"):
        if shutil.which(tool) is None:
            print(f"{tool} not found: the mutants need cmake and g++", file=sys.stderr)
            return 2
    t0 = time.time()
    sync_tree()
    for backend in sorted({m.backend for m in chosen}):
        ok, log = build(backend)
        if not ok:
            print(f"the unmutated {backend} kernels do not build:\n{log}", file=sys.stderr)
            return 1
        base = run_checks(backend, tuple(sorted({s for m in chosen if m.backend == backend for s in m.suites})))
        if base["killed"]:
            print(f"the unmutated {backend} kernels fail their checks: {base['how']}: {base['detail']}",
                  file=sys.stderr)
            return 1
    rows = []
    for m in chosen:
        res = run_mutant(m)
        rows.append((m, res))
        status = "killed" if res["killed"] else "SURVIVED"
        print(f"{m.id:26} {status:8} {res['how']:15} {res['seconds']:6.1f}s  {res['detail'][:150]}", flush=True)
    survivors = [m.id for m, r in rows if not r["killed"]]
    print(f"\n| mutant | file | what | killed by | detail |\n|---|---|---|---|---|")
    for m, r in rows:
        by = r["how"] if r["killed"] else f"**SURVIVED** ({r['how'] or 'no check failed'})"
        detail = r["detail"].replace("|", "/").replace("\n", " ")[:120]
        print(f"| {m.id} | {m.path.removeprefix('kernels/')} | {m.what} | {by} | {detail} |")
    print(f"\n{len(rows) - len(survivors)}/{len(rows)} mutants killed in {time.time() - t0:.0f} s"
          + (f"; SURVIVED: {', '.join(survivors)}" if survivors else ""))
    if a.json:
        Path(a.json).write_text(json.dumps([dict(id=m.id, path=m.path, what=m.what, **r) for m, r in rows],
                                           indent=1))
    return 1 if survivors else 0


if __name__ == "__main__":
    sys.exit(main())
