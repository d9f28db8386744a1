"""Peak memory of one call: resident set size on the CPU, allocator peak on CUDA.

CPU: the kernel's high-water mark of the process's resident set (VmHWM) is reset by writing "5" to
/proc/self/clear_refs (Linux >= 4.0), the call runs, and VmHWM is read back: the peak RSS of the whole
process during the call (Python, torch and the model's weights included, not just the call's buffers).
CUDA: torch.cuda.reset_peak_memory_stats() then max_memory_allocated() (tensors only, not the allocator's
cached blocks or the CUDA context). None where neither can be read.
"""
from __future__ import annotations

import re
from typing import Callable

import torch


def _vm_hwm_bytes() -> int | None:
    try:
        with open("/proc/self/status") as f:
            m = re.search(r"VmHWM:\s+(\d+)\s+kB", f.read())
        return int(m.group(1)) * 1024 if m else None
    except OSError:
        return None


def peak_memory_bytes(fn: Callable[[], object], device: str) -> int | None:
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        fn()
        torch.cuda.synchronize()
        return int(torch.cuda.max_memory_allocated())
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        fn()
        return None
    fn()
    return _vm_hwm_bytes()
