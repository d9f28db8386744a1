"""Collectives across ranks: all_reduce, all_gather, reduce_scatter, all_to_all, broadcast (torch.distributed:
gloo on CPUs, NCCL on GPUs), with the algorithm and bus bandwidth that nccl-tests report.

Run under torchrun (`torchrun --nproc-per-node 2 bench.py --suite collectives`); in a single process every
row is `skipped` (a collective needs world_size >= 2). Every rank measures the same rows in lockstep
(harness/distributed.py): the timing loop's decisions are agreed between ranks so they make the same calls.

Sizes: `size` is nccl-tests' S, in bytes: the buffer of all_reduce and broadcast, the total (all ranks')
data of all_gather, reduce_scatter and all_to_all, whose element count is rounded down to a multiple of
the world size. 1 KiB to 1 GiB on GPUs, up to 4 MiB quick / 64 MiB full on CPUs (gloo over loopback TCP).

Bandwidth (nccl-tests' doc/PERFORMANCE.md): algbw = S / t; busbw = algbw * factor, the factor that makes it
comparable to the link's bandwidth whatever the rank count n: all_reduce 2(n-1)/n, all_gather and
reduce_scatter and all_to_all (n-1)/n, broadcast 1. The `gbps` column is algbw; `busbw_gbps` the bus figure.

Correctness, with known values per rank: all ranks draw the same integer-valued tensor u (seeded), rank r
holds x_r = u * (r + 1) + r; the float64 reference of each op on rank r follows from u alone (all_reduce:
u * n(n+1)/2 + n(n-1)/2; all_gather: the x_j concatenated; reduce_scatter: rank r's chunk of the sum;
all_to_all: chunk r of every x_j; broadcast from rank 0: x_0). Integer values keep float32 sums exact.
all_reduce is timed in place, as DDP and nccl-tests' timing loop use it: after the checked call the values
grow by a factor n per call and may reach inf, which costs an adder nothing (no data-dependent timing).
"""
from __future__ import annotations

import torch

from harness import distributed
from harness.registry import Requires, Suite

OPS = ("all_reduce", "all_gather", "reduce_scatter", "all_to_all", "broadcast")
BUS_FACTOR = {                                   # busbw / algbw for n ranks (nccl-tests)
    "all_reduce": lambda n: 2 * (n - 1) / n,
    "all_gather": lambda n: (n - 1) / n,
    "reduce_scatter": lambda n: (n - 1) / n,
    "all_to_all": lambda n: (n - 1) / n,
    "broadcast": lambda n: 1.0,
}
KiB, MiB, GiB = 1 << 10, 1 << 20, 1 << 30


def _needs_ranks(world: int) -> str | None:
    return None                                   # any world size: sizes are rounded to a multiple of it


SUITE = Suite(
    name="collectives",
    description="torch.distributed collectives across ranks (gloo / NCCL): algbw and busbw as nccl-tests",
    baseline="torch_dist",
    dtypes=("float32", "bfloat16"),
    # integer-valued inputs: float32 sums are exact; bfloat16 holds integers up to 256 exactly, then rounds
    tolerances={"float32": (0.0, 0.0), "bfloat16": (0.0, 8e-3)},
    default_dtype={"cpu": "float32", "cuda": "float32"},
    case_name=lambda p: f"{p['op']}-{_size_name(p['size'])}",
    distributed=_needs_ranks,
)


def _size_name(n: int) -> str:
    for unit, v in (("G", GiB), ("M", MiB), ("K", KiB)):
        if n >= v and n % v == 0:
            return f"{n // v}{unit}"
    return f"{n}B"


# odd element counts where the op allows them (all_reduce, broadcast: 127 and 1025 float32 elements)
SUITE.add_cases("test", [dict(op=op, size=s) for op in OPS for s in (4 * 127 + 1, 4 * 1025 + 3)])
SUITE.add_cases("quick", [dict(op=op, size=s) for op in OPS for s in (KiB, 64 * KiB, MiB, 4 * MiB)], devices=("cpu",))
SUITE.add_cases("full", [dict(op=op, size=KiB << i) for op in OPS for i in range(0, 17, 2)], devices=("cpu",))
SUITE.add_cases("quick", [dict(op=op, size=s) for op in OPS for s in (KiB, MiB, 64 * MiB, GiB)], devices=("cuda",))
SUITE.add_cases("full", [dict(op=op, size=KiB << i) for op in OPS for i in range(21)], devices=("cuda",))


def count(case, world: int) -> int:
    """Elements of S; a multiple of the world size where the op splits it (all_gather, reduce_scatter,
    all_to_all)."""
    n = case.size // case.itemsize
    return n if case.op in ("all_reduce", "broadcast") else max(world, n // world * world)


@SUITE.inputs
def make_inputs(case, rng):
    _, world = distributed.world()
    n = count(case, world)
    m = n // world if case.op == "all_gather" else n      # all_gather: each rank holds S / n; the others S
    u = torch.randint(-8, 9, (m,), generator=rng, device=case.device).to(case.dtype)
    return {"u": u}


def _x(u: torch.Tensor, rank: int) -> torch.Tensor:
    return u * (rank + 1) + rank


@SUITE.reference
def reference(case, u):
    rank, world = distributed.world()
    xs = [_x(u, r) for r in range(world)]
    if case.op == "all_reduce":
        return sum(xs)
    if case.op == "all_gather":
        return torch.cat(xs)
    if case.op == "reduce_scatter":
        return sum(xs).chunk(world)[rank]
    if case.op == "all_to_all":
        return torch.cat([x.chunk(world)[rank] for x in xs])
    return xs[0]                                            # broadcast from rank 0


@SUITE.flops
def flops(case):
    _, world = distributed.world()                         # reductions: (n-1) adds per element of S
    return count(case, world) * (world - 1) if case.op in ("all_reduce", "reduce_scatter") else 0


@SUITE.bytes
def nbytes(case):
    _, world = distributed.world()
    return count(case, world) * case.itemsize              # S: algbw = S / t is the `gbps` column


def _ranks(case) -> str | None:
    """needs world_size >= 2 (torchrun)"""
    _, world = distributed.world()
    if world < 2:
        return ("a collective needs world_size >= 2: run under torchrun --nproc-per-node 2 (or bench.py slurm); "
                "this is a single process")
    return None


@SUITE.variant("torch_dist", requires=Requires(check=_ranks),
               config=lambda launcher: getattr(launcher, "backend", None))
def torch_dist(case, u):
    """torch.distributed on the default process group (gloo on the CPU, NCCL on CUDA)"""
    import torch.distributed as dist
    rank, world = distributed.world()
    x = _x(u, rank).contiguous()
    # torch >= 2.10 names them *_single (the *_tensor names warn); older torch has only the latter
    _all_gather = getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor
    _reduce_scatter = getattr(dist, "reduce_scatter_single", None) or dist.reduce_scatter_tensor
    op = case.op
    if op == "all_reduce":
        def launch():
            dist.all_reduce(x)
            return x
    elif op == "all_gather":
        out = case.poisoned((x.numel() * world,))

        def launch():
            _all_gather(out, x)
            return out
    elif op == "reduce_scatter":
        out = case.poisoned((x.numel() // world,))

        def launch():
            _reduce_scatter(out, x)
            return out
    elif op == "all_to_all":
        out = case.poisoned((x.numel(),))

        def launch():
            dist.all_to_all_single(out, x)
            return out
    else:
        def launch():
            dist.broadcast(x, src=0)
            return x
    launch.backend = dist.get_backend()
    return launch


@SUITE.model_columns
def bus_columns(case, launcher, row):
    """busbw (nccl-tests): algbw times the op's factor for this world size."""
    _, world = distributed.world()
    algbw = nbytes(case) / (row["median_ms"] / 1e3) / 1e9 if row.get("median_ms") else None
    return {"algbw_gbps": algbw, "busbw_gbps": algbw * BUS_FACTOR[case.op](world) if algbw else None}
