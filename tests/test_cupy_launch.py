"""deploy/cupy_launch.py without a GPU: the device-only source NVRTC would compile (host code stripped; it
compiles device-only with nvcc, every name expression instantiated), the kernel-name mapping, the launch
configurations against the sources' constants and kb-report lines, and the Python entry points (validation,
instantiation, grid, block, shared memory, arguments) through the kernels' own declarations."""
import re
import shutil
import subprocess

import pytest
import torch

from deploy import cupy_launch as cl
from kernels.cuda import lib as cuda

SOURCES = ("softmax.cu", "rmsnorm.cu", "layernorm.cu", "attention_fwd.cu", "gemm_tc.cu", "quant_int8_gemm.cu",
           "quant_w4a16_gemm.cu", "sparse_24_mma_sp.cu", "sparse_bsr.cu", "decode_paged.cu")


def _globals(text):
    return set(re.findall(r"__global__\s+void\s+(?:__launch_bounds__\([^)]*\)\s+)?(\w+)", text))


@pytest.mark.parametrize("cu", SOURCES)
def test_device_source_has_every_kernel_and_no_host_code(cu):
    src = cl.device_source(cu)
    original = (cl.CUDA_DIR / cu).read_text()
    assert _globals(original) and _globals(original) <= _globals(src)
    assert not [item for kind, item in cl._items(src) if kind == "block" and cl.is_host_function(item)]
    code = re.sub(r"//[^\n]*|/\*.*?\*/", "", src, flags=re.S)
    for host in ('extern "C"', "KB_LAUNCH", "KB_SET_MAX_DYNAMIC_SMEM", "cudaGetLastError", "kb_set_error(KB_EINVAL"):
        assert host not in code, f"{cu}: host code {host!r} left in the device source"
    includes = re.findall(r'#\s*include\s*[<"]([^>"]+)', src)
    assert set(includes) <= {"cuda_fp16.h", "cuda_bf16.h", "stdint.h"}, includes   # NVRTC has these (or the #else)
    assert "kb::block_sum" in src or "mma_m16n8k16" in src or "cp_async" in src  # the shared device code came along


def test_host_function_detection():
    assert cl.is_host_function("template <typename T>\nstatic int launch(const void* x) { return 0; }")
    assert cl.is_host_function('extern "C" int kb_cuda_x(int a) { return a; }')
    assert not cl.is_host_function("template <typename T>\n__global__ void k(T* x) { }")
    assert not cl.is_host_function("__device__ __forceinline__ float f(float x) { return x; }")
    assert not cl.is_host_function("template <> struct Mma<__half> { static __device__ void run(); };")
    assert not cl.is_host_function("namespace kb { __device__ int g() { return 1; } }")


@pytest.mark.skipif(shutil.which("nvcc") is None, reason="nvcc not installed")
def test_assembled_sources_compile_device_only_with_every_instantiation(tmp_path):
    """The assembled source plus a reference to every name expression, compiled to PTX (device code only): a
    missing instantiation, a leftover host call or a header NVRTC lacks fails here."""
    procs = []
    for cu, names in cl.all_instantiations().items():
        f = tmp_path / cu
        f.write_text(cl.device_source(cu) + "\nvoid kb_refs() {\n" + "".join(f"  (void)&{n};\n" for n in names) + "}\n")
        procs.append((cu, names, subprocess.Popen(
            ["nvcc", "-arch=sm_80", "--ptx", "-std=c++17", "-diag-suppress", "177", str(f), "-o",
             str(f.with_suffix(".ptx"))], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)))
    for cu, names, p in procs:
        out = p.communicate(timeout=600)[0]
        assert p.returncode == 0, f"{cu}: {out[-2000:]}"
        entries = re.findall(r"\.entry\s+(\w+)", (tmp_path / cu).with_suffix(".ptx").read_text())
        assert len(entries) == len(names), (cu, entries, names)


def test_every_declared_cuda_kernel_has_a_cupy_launcher():
    declared = {k.symbol for k in cuda.LIB.kernels}
    assert declared == set(cl.ENTRY_POINTS) | set(cl.NOT_YET), f"declared {declared}, CuPy launchers " \
        f"{set(cl.ENTRY_POINTS)}, listed as not yet {set(cl.NOT_YET)}"
    assert not set(cl.ENTRY_POINTS) & set(cl.NOT_YET)
    every = {n.split("<")[0] for names in cl.all_instantiations().values() for n in names}
    assert every == set().union(*(_globals((cl.CUDA_DIR / cu).read_text()) for cu in SOURCES))


def test_launch_constants_match_the_sources():
    common = (cl.CUDA_DIR / "include" / "kb_common.h").read_text()
    assert re.search(r"#define KB_ROW_CACHE_BYTES \((\d+) \* (\d+)\)", common).groups() == ("96", "1024")
    gemm = (cl.CUDA_DIR / "gemm_tc.cu").read_text()
    consts = dict(re.findall(r"\b(BM|BN|BK|STAGES|THREADS) = (\d+)", gemm))
    assert {k: int(v) for k, v in consts.items()} == cl.GEMM
    for cu, table in (("quant_int8_gemm.cu", cl.W8A8), ("quant_w4a16_gemm.cu", cl.W4A16),
                      ("sparse_24_mma_sp.cu", cl.SP24), ("sparse_bsr.cu", cl.BSR)):
        text = (cl.CUDA_DIR / cu).read_text()
        assert {k: int(re.search(rf"\b{k} = (\d+)", text).group(1)) for k in table} == table, cu
    decode = (cl.CUDA_DIR / "decode_paged.cu").read_text()
    assert {k: int(re.search(rf"#define {k} (\d+)", decode).group(1)) for k in cl.DECODE} == cl.DECODE
    for cu in SOURCES:
        for name, threads, smem in re.findall(r"kb-report: (\w+) threads=(\d+) smem_dynamic=(\d+)",
                                              (cl.CUDA_DIR / cu).read_text()):
            if name == "kb_gemm_tc_kernel":
                launch = cl.gemm_launch(1, 0, 4096, 4096, 4096, 4096, 4096, 0, 0)
            elif name.startswith("kb_attn"):
                launch = cl.attention_launch(0 if "f32" in name else 1, 64, 1, 8, 512)
            elif name in OTHER_LAUNCHES:
                launch = OTHER_LAUNCHES[name]()
            else:                                   # "as launched for 1024 columns"
                launch = cl.row_launch(name, 0, 8, 1024)
            assert (launch.block[0], launch.smem) == (int(threads), int(smem)), name


OTHER_LAUNCHES = {"kb_gemm_w8a8_kernel": lambda: cl.w8a8_launch(0, 64, 64),
                  "kb_gemm_w4a16_kernel": lambda: cl.w4a16_launch(1, 64, 64),
                  "kb_sparse24_mma_sp_kernel": lambda: cl.sparse24_launch(1, 64, 64),
                  "kb_bsr_mma_kernel": lambda: cl.bsr_launch(1, 16, 64, 64),
                  "kb_decode_paged_kernel": lambda: cl.decode_launches(1, 1, 64, 2, 2, 3)[0],
                  "kb_decode_merge_kernel": lambda: cl.decode_launches(1, 1, 64, 2, 2, 3)[1]}


@pytest.mark.parametrize("cols,threads,smem", [(1, 32, 4), (127, 32, 508), (129, 64, 516), (1000, 256, 4000),
                                               (4096, 512, 16384), (24576, 512, 98304), (24577, 512, 0)])
def test_row_launch(cols, threads, smem):
    launch = cl.row_launch("kb_softmax_kernel", 2, 7, cols)
    assert launch.name == "kb_softmax_kernel<__half>" and launch.grid == (7,)
    assert launch.block == (threads,) and launch.smem == smem and launch.args == (int(smem > 0),)


def test_attention_and_gemm_launches():
    a = cl.attention_launch(1, 128, 2, 8, 1000)
    assert (a.name, a.grid, a.block) == ("kb_attn_fwd_mma_kernel<__nv_bfloat16, 128, 32>", (16, 8, 2), (128,))
    assert cl.attention_launch(0, 64, 1, 4, 33).grid == (2, 4, 1)
    g = cl.gemm_launch(2, 0, 1000, 129, 64, 64, 129, 0, 0)
    assert g.name == "kb_gemm_tc_kernel<__half, float, false>"     # N = 129: not a multiple of 8
    assert g.grid == (2, 8) and g.smem == 56832
    assert cl.gemm_launch(1, 1, 128, 128, 64, 64, 128, 256, 512).name.endswith("__nv_bfloat16, true>")


class RecordingLib(cl.CupyLib):
    """CupyLib with the launch recorded instead of run, on CPU tensors (the entry points' logic only)."""
    device = "cpu"

    def __init__(self):
        self.error, self.launches = "", []

    def launch(self, cu_file, launch, args, stream):
        self.launches.append((cu_file, launch, args))
        return cl.KB_OK

    def stream(self):
        return 0


def _bind(kernel, **tensors):
    from harness.registry import Case
    lib = RecordingLib()
    out = tensors.pop("out")
    call = kernel.bind(lib, Case("t", {"causal": tensors.pop("causal", False)}), tensors, out)
    return lib, call


def test_softmax_entry_point_through_the_declaration():
    x = torch.randn(129, 1000, dtype=torch.float16)
    out = torch.empty_like(x)
    lib, call = _bind(cuda.SOFTMAX, x=x, out=out)
    call()
    cu, launch, args = lib.launches[0]
    assert cu == "softmax.cu" and launch == cl.row_launch("kb_softmax_kernel", 2, 129, 1000)
    assert [int(a) for a in args] == [x.data_ptr(), out.data_ptr(), 1000, 1000, 1000, 1]
    assert [a.dtype.name for a in args] == ["uint64", "uint64", "int64", "int64", "int64", "int32"]


def test_rmsnorm_and_layernorm_pass_eps_and_weights():
    x = torch.randn(3, 64)
    lib, call = _bind(cuda.LAYERNORM, x=x, weight=torch.ones(64), bias=torch.zeros(64), out=torch.empty_like(x),
                      eps=1e-5)
    call()
    args = lib.launches[0][2]
    assert len(args) == 4 + 3 + 2 and args[-2].dtype.name == "float32" and abs(float(args[-2]) - 1e-5) < 1e-9


def test_entry_points_validate_like_the_c_code():
    lib = RecordingLib()
    softmax = cl.ENTRY_POINTS["kb_cuda_softmax"](lib)
    assert softmax(0, 0, 0, 0, 5, 5, 5, 0) == cl.KB_OK and not lib.launches        # no rows: nothing launched
    assert softmax(0, 0, 0, 3, 0, 5, 5, 0) == cl.KB_EINVAL and "bad shape" in lib.error
    assert softmax(0, 0, 7, 3, 5, 5, 5, 0) == cl.KB_EINVAL and "dtype" in lib.error
    with pytest.raises(Exception, match="unknown dtype code 7"):
        lib.check(cl.KB_EINVAL, "kb_cuda_softmax")
    gemm = cl.ENTRY_POINTS["kb_cuda_gemm"](lib)
    assert gemm(0, 0, 0, 1, 2, 8, 8, 8, 8, 8, 8, 0) == cl.KB_EINVAL and "out_dtype" in lib.error
    attn = cl.ENTRY_POINTS["kb_cuda_attention_fwd"](lib)
    assert attn(16, 16, 16, 16, 1, 1, 4, 2, 8, 8, 96, 0, 0.0, *[8] * 12, 0) == cl.KB_EINVAL
    assert "head dim 96" in lib.error


def test_attention_entry_packs_the_args_struct():
    q = torch.randn(1, 4, 33, 64)
    k, v = torch.randn(1, 2, 40, 64), torch.randn(1, 2, 40, 64)
    lib, call = _bind(cuda.ATTENTION, q=q, k=k, v=v, out=torch.empty_like(q), causal=True)
    call()
    cu, launch, (arg,) = lib.launches[0]
    assert launch == cl.attention_launch(0, 64, 1, 4, 33)
    assert (int(arg["H"]), int(arg["group"]), int(arg["SQ"]), int(arg["SK"]), int(arg["causal"])) == (4, 2, 33, 40, 1)
    assert int(arg["q"]) == q.data_ptr() and int(arg["k_ss"]) == 64 and int(arg["v_sh"]) == 40 * 64
    assert abs(float(arg["scale_log2"]) - 1.4426950408889634 / 8) < 1e-6
    assert arg.dtype.itemsize == 4 * 8 + 6 * 4 + 12 * 8                       # KbAttnArgs' C size (aligned)


def test_without_cupy_the_variants_are_skipped_with_the_reason():
    from harness.registry import all_suites
    if cl.reason() is None:
        pytest.skip("cupy is usable here: the skip path is not taken")
    suites = all_suites()
    names = {"softmax": "cupy_rowcache", "rmsnorm": "cupy_rowcache", "layernorm": "cupy_rowcache",
             "attention": "cupy_flash", "gemm": "cupy_mma", "decode": "cupy", "quant_gemm": "cupy_mma",
             "sparse_gemm": "cupy_24_mma_sp"}
    for suite, variant in names.items():
        v = suites[suite].variants[variant]
        case = suites[suite].cases("test", "cuda", suites[suite].dtypes[0])[0]
        assert v.requires.check(case) == cl.reason(case) and "cupy" in cl.reason(case)


def test_quantized_and_sparse_launches():
    w = cl.w8a8_launch(1, 129, 50)
    assert (w.name, w.grid, w.block) == ("kb_gemm_w8a8_kernel<__nv_bfloat16>", (2, 3), (128,))    # 64 x 32 per block
    w4 = cl.w4a16_launch(2, 129, 40)
    assert (w4.name, w4.grid, w4.block) == ("kb_gemm_w4a16_kernel<__half>", (2, 3), (128,))          # 64 x 32 per block
    sp = cl.sparse24_launch(2, 33, 100)
    assert (sp.name, sp.grid, sp.block) == ("kb_sparse24_mma_sp_kernel<__half>", (2, 2), (128,))  # 64 W rows x 32
    b = cl.bsr_launch(1, 32, 129, 96)
    assert (b.name, b.grid, b.block) == ("kb_bsr_mma_kernel<__nv_bfloat16, 32>", (3, 2), (128,))  # 128 x rows
    split, merge = cl.decode_launches(2, 4, 128, 3, 2, 5)
    assert (split.name, split.grid) == ("kb_decode_paged_kernel<__half, uint8_t, 4>", (3, 2, 5))
    assert (merge.name, merge.grid, merge.block) == ("kb_decode_merge_kernel<__half>", (3, 2), (128,))
    assert cl.decode_launches(0, 0, 32, 1, 1, 1)[0].name == "kb_decode_paged_kernel<float, float, 1>"
    assert cl.decode_launches(1, 3, 64, 1, 1, 1)[0].name == "kb_decode_paged_kernel<__nv_bfloat16, int8_t, 2>"


def _suite_call(suite_name, variant, pick):
    """Bind a suite's CUDA kernel declaration to the recording CuPy library on the suite's own test inputs (CPU
    tensors): the argument mapping the real launcher would receive."""
    from harness.registry import all_suites
    suite = all_suites()[suite_name]
    kernel = suite.variants[variant].kernel
    dtype = "float32" if suite_name in ("decode", "quant_gemm") else "bfloat16"
    case = next(c for c in suite.cases("test", "cpu", dtype) if pick(c))
    inputs = suite.make_inputs(case, 0)
    lib = RecordingLib()
    spec = kernel.out(case, **inputs)
    shape, dt = spec if (isinstance(spec, tuple) and len(spec) == 2 and not isinstance(spec[1], int)) else (spec, None)
    out = case.poisoned(shape, dt)
    call = kernel.bind(lib, case, inputs, out)
    call()
    return case, inputs, out, lib


def test_w8a8_entry_through_the_declaration():
    case, inp, out, lib = _suite_call("quant_gemm", "cuda_mma", lambda c: c.get("scheme") == "w8a8" and c.m == 129)
    (cu, launch, args), = lib.launches
    m, k = inp["a"].shape
    n = inp["w"].shape[0]
    assert cu == "quant_int8_gemm.cu" and launch == cl.w8a8_launch(0, m, n)
    assert [int(a) for a in args] == [inp["a"].data_ptr(), inp["sa"].data_ptr(), inp["w"].data_ptr(),
                                      inp["sw"].data_ptr(), out.data_ptr(), m, n, k, k, k, n]


def test_w4a16_entry_through_the_declaration():
    from harness.registry import all_suites
    suite = all_suites()["quant_gemm"]
    case = next(c for c in suite.cases("test", "cpu", "bfloat16") if c.get("scheme") == "w4" and c.m == 129)
    inp = suite.make_inputs(case, 0)
    lib = RecordingLib()
    kernel = suite.variants["cuda_w4a16"].kernel          # the declaration cupy_w4a16 binds to the CuPy library
    out = case.poisoned(kernel.out(case, **inp))
    kernel.bind(lib, case, inp, out)()
    (cu, launch, args), = lib.launches
    m, k = inp["x"].shape
    n = inp["packed"].shape[0]
    assert cu == "quant_w4a16_gemm.cu" and launch == cl.w4a16_launch(1, m, n)
    assert [int(a) for a in args] == [inp["x"].data_ptr(), inp["packed"].data_ptr(), inp["scale"].data_ptr(),
                                      inp["zero"].data_ptr(), out.data_ptr(), m, n, k, case.group, k, n]
    assert [a.dtype.name for a in args[5:]] == ["int64", "int64", "int64", "int32", "int64", "int64"]


def test_sparse_entries_through_the_declarations():
    case, inp, out, lib = _suite_call("sparse_gemm", "cuda_24_mma_sp", lambda c: c.get("pattern") == "2:4")
    (cu, launch, args), = lib.launches
    m, k = inp["x"].shape
    n = inp["w"].shape[0]
    assert cu == "sparse_24_mma_sp.cu" and launch == cl.sparse24_launch(1, m, n)
    assert [int(a) for a in args] == [inp["x"].data_ptr(), inp["v24_vals"].data_ptr(), inp["v24_meta"].data_ptr(),
                                      out.data_ptr(), m, n, k, k, n]
    assert [a.dtype.name for a in args[4:]] == ["int32", "int32", "int32", "int64", "int64"]
    case, inp, out, lib = _suite_call("sparse_gemm", "cuda_bsr", lambda c: c.get("pattern") == "bsr" and c.block == 32)
    (cu, launch, args), = lib.launches
    assert cu == "sparse_bsr.cu" and launch == cl.bsr_launch(1, 32, inp["x"].shape[0], inp["w"].shape[0])
    assert [int(a) for a in args] == [inp["x"].data_ptr(), inp["bsr_rowptr"].data_ptr(), inp["bsr_cols"].data_ptr(),
                                      inp["bsr_vals"].data_ptr(), out.data_ptr(), inp["x"].shape[0],
                                      inp["x"].shape[1], out.shape[1]]


def test_decode_struct_fields_follow_the_c_declaration():
    body = re.search(r"struct KbDecodeArgs \{(.*?)\};", (cl.CUDA_DIR / "decode_paged.cu").read_text(), re.S).group(1)
    names, types = [], []
    for decl in body.split(";"):
        m = re.match(r"\s*(const \w+\*|\w+\*|int64_t|int|float)\s+(.*)", decl.strip())
        if m:
            for v in m.group(2).split(","):
                names.append(v.strip().lstrip("*").strip())
                types.append("u8" if "*" in m.group(1) else {"int64_t": "i8", "int": "i4", "float": "f4"}[m.group(1)])
    assert [f for f, _ in cl.DECODE_FIELDS] == names and [t for _, t in cl.DECODE_FIELDS] == types


# speculative cases (sq > 1: R != G), and the fp8 one
@pytest.mark.parametrize("kv,sq", [("native", 3), ("int8", 2), ("fp8", 1)])
def test_decode_entry_packs_the_args_struct(kv, sq):
    case, inp, out, lib = _suite_call("decode", "cuda", lambda c: c.get("kv") == kv and c.sq == sq)
    (cu, split, (arg,)), (_, merge, (arg2,)) = lib.launches
    q, kc = inp["q"], inp["k_cache"]
    b, sq, h, d = q.shape
    nb, bs, hkv, _ = kc.shape
    nsplit = int(arg["nsplit"])
    code = {"native": 0, "int8": 3, "fp8": 4}[kv]
    assert cu == "decode_paged.cu" and (split, merge) == cl.decode_launches(0, code, d, b, hkv, nsplit)
    assert arg == arg2 and 1 <= nsplit <= inp["block_tables"].shape[1]
    assert [int(arg[f]) for f in ("q", "k", "v", "tables", "lens", "o")] == [
        q.data_ptr(), kc.data_ptr(), inp["v_cache"].data_ptr(), inp["block_tables"].data_ptr(),
        inp["seq_lens"].data_ptr(), out.data_ptr()]
    assert bool(int(arg["ks"])) == (kv != "native") and bool(int(arg["vs"])) == (kv != "native")
    maxb = inp["block_tables"].shape[1]
    assert [int(arg[f]) for f in ("B", "SQ", "H", "HKV", "D", "NB", "BS", "MAXB", "pps", "G", "R")] == [
        b, sq, h, hkv, d, nb, bs, maxb, -(-maxb // nsplit), h // hkv, h // hkv * sq]
    assert abs(float(arg["scale_log2"]) - 1.4426950408889634 / d ** 0.5) < 1e-6
    assert arg.dtype.itemsize == 9 * 8 + 12 * 4 + 2 * 8 + 8                    # KbDecodeArgs' C size (aligned)


def test_new_entry_points_validate_like_the_c_code():
    lib = RecordingLib()
    w8 = cl.ENTRY_POINTS["kb_cuda_gemm_w8a8"](lib)
    assert w8(8, 8, 8, 8, 8, 4, 4, 1 << 17, 1 << 17, 1 << 17, 4, 0, 0) == cl.KB_EINVAL and "overflow" in lib.error
    assert w8(8, 8, 8, 8, 8, 4, 4, 8, 4, 8, 4, 0, 0) == cl.KB_EINVAL and "bad arguments" in lib.error   # lda < K
    w4 = cl.ENTRY_POINTS["kb_cuda_gemm_w4a16"](lib)
    assert w4(8, 8, 8, 8, 8, 4, 4, 96, 64, 96, 4, 1, 0) == cl.KB_EINVAL and "group=64" in lib.error   # 64 !| 96
    assert w4(8, 8, 8, 8, 8, 4, 4, 96, 24, 96, 4, 1, 0) == cl.KB_EINVAL and "multiple of 16" in lib.error
    assert w4(8, 8, 8, 8, 8, 4, 4, 96, 32, 96, 4, 0, 0) == cl.KB_EINVAL and "dtype 0" in lib.error
    assert w4(8, 8, 8, 8, 8, 0, 4, 96, 32, 96, 4, 1, 0) == cl.KB_OK and not lib.launches          # no rows
    sp = cl.ENTRY_POINTS["kb_cuda_gemm_24"](lib)
    assert sp(8, 8, 8, 8, 4, 4, 6, 6, 4, 1, 0) == cl.KB_EINVAL and "K % 4" in lib.error
    assert sp(8, 8, 8, 8, 4, 4, 8, 8, 4, 0, 0) == cl.KB_EINVAL and "dtype 0" in lib.error
    bsr = cl.ENTRY_POINTS["kb_cuda_bsr_gemm"](lib)
    assert bsr(8, 8, 8, 8, 8, 4, 48, 48, 48, 48, 24, 1, 0) == cl.KB_EINVAL and "block=24" in lib.error
    assert bsr(8, 8, 8, 8, 8, 0, 48, 48, 48, 48, 16, 1, 0) == cl.KB_OK and not lib.launches     # no rows
    dec = cl.ENTRY_POINTS["kb_cuda_decode_paged"](lib)
    good = dict(q=8, kc=8, vc=8, tables=8, lens=8, ks=None, vs=None, out=8, ws=8, ws_bytes=1 << 20, b=2, sq=1, h=4,
                d=64, nb=4, bs=16, hkv=2, kd=64, vnb=4, vbs=16, vhkv=2, vd=64, tb_rows=2, maxb=2, n_lens=2, ks_rows=0,
                ks_cols=0, ks_b=0, vs_rows=0, vs_cols=0, vs_b=0, nsplit=2, scale=0.125, q_dtype=1, kv_dtype=1,
                stream=0)
    assert dec(*good.values()) == cl.KB_OK and len(lib.launches) == 2
    for bad, msg in ((dict(d=96, kd=96, vd=96), "head dim 96"), (dict(vbs=8), "v_cache"), (dict(h=5), "multiple"),
                     (dict(kv_dtype=2), "float cache must have q's dtype"), (dict(kv_dtype=3), "scales"),
                     (dict(ws_bytes=64), "workspace"), (dict(h=34), "query rows"), (dict(tables=0), "null"),
                     (dict(kd=32, vd=32), "head_dim of q")):
        assert dec(*{**good, **bad}.values()) == cl.KB_EINVAL and msg in lib.error, (bad, lib.error)
