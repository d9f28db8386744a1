"""The CUDA simulation models mma.sp (m16n8k32, bf16/fp16, sparsity selector 0) with the PTX ISA metadata layout:
a tile from the project's 2:4 format (sparsity/formats.py) matches the dense product; a planted metadata bug
(the two metadata lanes of a group swapped) gives wrong results; metadata that does not name two increasing
positions is a launch error naming the nibble (undefined behaviour on the GPU). The kernels built on it are
checked at every test case of suites/sparse_gemm.py by tests/test_cuda_sim_kernels.py.
"""
from __future__ import annotations

import ctypes
import zlib

import numpy as np
import pytest
import torch

from kernels.cuda.sim.build import SimBuildError, missing_tools, sim_library
from sparsity import formats, masks
from tests.test_cuda_sim import last_error, ptr, to_16bit

pytestmark = pytest.mark.skipif(missing_tools() is not None, reason=str(missing_tools()))


@pytest.fixture(scope="module")
def lib():
    try:
        so = ctypes.CDLL(str(sim_library("kb_sim_tests", "kb_sim_tests_asan")[0]))
    except SimBuildError as e:
        pytest.fail(str(e))
    so.kb_sim_last_error.restype = ctypes.c_char_p
    return so


def _tiles(dtype: int, tiles: int, seed: int):
    rng = np.random.default_rng(seed)
    a_bits_all, meta_all, dense_all = [], [], []
    for _ in range(tiles):
        w = torch.tensor(rng.standard_normal((16, 32)), dtype=torch.float32)
        w = w * masks.mask_for(w, masks.Pattern("2:4"))
        packed = formats.pack_24(w)
        bits, vals = to_16bit(packed["vals"].numpy(), dtype)              # the kept values, rounded
        a_bits_all.append(bits)
        meta_all.append(packed["meta"].numpy().view(np.uint32)[:, 0])
        dense_all.append(formats.unpack_24(torch.tensor(vals), packed["meta"], 32).numpy())
    b_bits, b = to_16bit(rng.standard_normal((tiles, 32, 8)), dtype)
    c = rng.standard_normal((tiles, 16, 8)).astype(np.float32)
    return (np.ascontiguousarray(np.stack(a_bits_all)), np.ascontiguousarray(np.stack(meta_all)), b_bits, c,
            np.stack(dense_all) @ b + c)


def _run(lib, a, e, b, c, dtype, mode):
    d = np.full(c.shape, np.nan, np.float32)
    rc = lib.simtest_mma_sp(ptr(d), ptr(a), ptr(e), ptr(b), ptr(c), c.shape[0], dtype, mode)
    return rc, d


@pytest.mark.parametrize("dtype", [1, 2], ids=["bf16", "f16"])
def test_mma_sp_matches_the_dense_product(lib, dtype):
    a, e, b, c, ref = _tiles(dtype, 3, zlib.crc32(b"mma_sp") + dtype)
    rc, d = _run(lib, a, e, b, c, dtype, 0)
    assert rc == 0, last_error(lib)
    np.testing.assert_allclose(d, ref, rtol=1e-6, atol=1e-5)
    rc, bad = _run(lib, a, e, b, c, dtype, 1)                 # lanes 4g and 4g+1 swap their metadata halves
    assert rc == 0, last_error(lib)
    assert np.abs(bad - ref).max() > 0.1, "metadata supplied by the wrong lane went unnoticed"


def test_mma_sp_rejects_metadata_that_is_not_two_increasing_positions(lib):
    a, e, b, c, _ = _tiles(1, 1, 7)
    rc, _ = _run(lib, a, e, b, c, 1, 2)
    assert rc != 0
    assert "metadata nibble 0x0" in last_error(lib) and "mma.sp" in last_error(lib)
