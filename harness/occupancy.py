"""Theoretical occupancy of a GPU kernel, one formula for the CUDA and Triton rows of the kernels report
(harness/kernels_report.py and kernels/triton/aot.py both import it; it imports neither).

It follows the CUDA occupancy calculator: resident blocks per SM are limited by threads, by the block-count
limit, by registers (allocated per warp in units of 256, from a register file split over 4 sub-partitions)
and by shared memory (allocated in units of 128 bytes plus 1 KiB reserved per block on sm_80+);
occupancy = resident warps / maximum warps per SM.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass


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
    ("sm_80", "sm_90a"...)."""
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
