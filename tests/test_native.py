"""The declaration mechanism itself (kernels/native.py): the ctypes argument types every declaration derives
agree with the C prototype in its source file, the one dtype-code table agrees with the C headers, and the
loader gives the real reason a library cannot be used. Needs no build: the sources are read as text."""
from __future__ import annotations

import ctypes
import re
from pathlib import Path

import pytest

from kernels import native
from kernels.cpp import lib as cpp
from kernels.cpp import probes  # noqa: F401  (declares the ceiling probes of libkb_cpp)
from kernels.cuda import lib as cuda

ROOT = Path(__file__).resolve().parent.parent
C_TYPES = {"const void*": ctypes.c_void_p, "void*": ctypes.c_void_p, "int64_t": ctypes.c_int64,
           "int": ctypes.c_int, "float": ctypes.c_float}
DECLARED = cpp.LIB.kernels + cuda.LIB.kernels


def prototype(kernel) -> list:
    """The ctypes of the C entry point's parameters, read from its source file."""
    text = (ROOT / kernel.source).read_text()
    m = re.search(rf"(?:extern \"C\"|KB_API) int {kernel.symbol}\(([^)]*)\)", text)
    assert m, f"{kernel.symbol} not found in {kernel.source}"
    types = []
    for param in " ".join(m.group(1).split()).split(","):
        kind = re.sub(r"\s*\b\w+$", "", param.strip())          # drop the parameter's name
        assert kind in C_TYPES, f"{kernel.symbol}: unknown C type {kind!r}"
        types.append(C_TYPES[kind])
    return types


@pytest.mark.parametrize("kernel", DECLARED, ids=lambda k: k.symbol)
def test_declared_arguments_match_the_c_prototype(kernel):
    assert [a.ctype for a in kernel.args] == prototype(kernel)


def test_the_prototype_reader_sees_a_wrong_declaration():
    """Dropping one argument from a declaration must be noticed (the test above can fail)."""
    k = cpp.SOFTMAX
    assert [a.ctype for a in k.args[:-1]] != prototype(k)


def test_one_dtype_table_matches_both_c_headers():
    for header, names in (("kernels/cpp/kb_cpp.h", ("F32", "BF16", "F16")),
                          ("kernels/cuda/include/kb_common.h", ("KB_F32", "KB_BF16", "KB_F16"))):
        text = (ROOT / header).read_text()
        codes = [int(re.search(rf"\b{n}\s*=\s*(\d+)", text).group(1)) for n in names]
        assert codes == list(native.DTYPE_CODES.values()), header


def test_loader_reasons(tmp_path, monkeypatch):
    monkeypatch.setenv("KB_BUILD_DIR", str(tmp_path))
    lib = native.Library("kb_x", device="cpu", error_symbol="kb_x_last_error", hint="x not built: run 'make build'")
    assert lib.load() is None and lib.reason() == f"x not built: run 'make build' ({tmp_path}/lib/libkb_x.so not found)"
    (tmp_path / "lib").mkdir()
    (tmp_path / "lib" / "libkb_x.so").write_bytes(b"\x7fELF garbage")
    lib2 = native.Library("kb_x", device="cpu", error_symbol="kb_x_last_error", hint="x not built")
    r = lib2.reason()   # a file that is there but does not load: never "not built"; the loader's own words
    assert r.startswith("libkb_x.so is built but not loadable") and str(tmp_path / "lib" / "libkb_x.so") in r
    assert "not built" not in r and ("invalid ELF header" in r or "too short" in r)


def test_kernel_names_and_backends():
    assert {k.backend for k in cpp.LIB.kernels} == {"cpp"} and {k.backend for k in cuda.LIB.kernels} == {"cuda"}
    assert cuda.SIM.kernels == cuda.LIB.kernels          # the simulation exports the same entry points
    assert cpp.SOFTMAX.name == "softmax" and cuda.ATTENTION.name == "attention_fwd"
