"""bench.py under torchrun: one rank per device, rows gathered by rank 0 into one run directory.

`torchrun --nproc-per-node N bench.py --suite ...` starts N copies of bench.py with RANK, WORLD_SIZE,
LOCAL_RANK, LOCAL_WORLD_SIZE, MASTER_ADDR and MASTER_PORT set (SLURM jobs get the same from
harness/slurm.py). Each rank:
- measures on its own device: on CUDA, CUDA_VISIBLE_DEVICES is narrowed to the rank's GPU before CUDA starts,
  so the rank's process, its isolated workers and its NVML telemetry all see that one GPU as device 0;
- runs the same plan (`--dist-plan same`, the default: every GPU of a node side by side, which one is slow?)
  or its shard of it (`--dist-plan shard`: row i goes to rank i % world_size). Rows of a distributed suite
  (collectives, train: `Suite(distributed=...)`) run on every rank, in lockstep, in the rank's own process
  (it holds the process group), with the timing loop's decisions agreed between ranks (`Lockstep`);
- publishes each row, as it is measured, to the job's key-value store (torchrun's c10d TCPStore, which the
  launcher hosts: it outlives a crashed rank), then a final record (status, host, device, telemetry info).
Rank 0 owns the run directory (harness/rundir.py): its rows are written as usual, every row carries `rank`,
`world_size`, `local_rank` and `host`; at the end it takes every other rank's published rows into the same
table and writes `ranks` into the manifest (per rank: host, device, telemetry source, rows, status). A rank
that has not reported within `--rank-timeout` seconds, or that failed, is reported there and on stderr, its
rows up to then are kept, and rank 0 exits 1 instead of waiting for it. The other ranks write nothing to
disk (a temporary directory they delete).

Collectives have a timeout (`--rank-timeout`, the process group's timeout): a rank stuck in one because a
peer died makes that row an `error` row rather than a hang.
"""
from __future__ import annotations

import datetime as _dt
import os
import pickle
import socket
import sys
import time
from dataclasses import dataclass, field
from typing import Any

DEFAULT_TIMEOUT_S = 300.0
PREFIX = "kbench/"


def env_world() -> tuple[int, int, int, int]:
    """(rank, world_size, local_rank, local_world_size) from torchrun's (or SLURM's via harness/slurm.py)
    environment; (0, 1, 0, 1) outside a launcher."""
    def num(name: str, default: int) -> int:
        try:
            return int(os.environ.get(name, default))
        except ValueError:
            return default
    world = num("WORLD_SIZE", 1)
    return num("RANK", 0), world, num("LOCAL_RANK", 0), num("LOCAL_WORLD_SIZE", world)


def launched() -> bool:
    """True under torchrun (or a SLURM task of bench.py slurm) with more than one rank."""
    return env_world()[1] > 1 and "MASTER_ADDR" in os.environ


def pin_device(device_arg: str) -> str | None:
    """Before CUDA starts: narrow CUDA_VISIBLE_DEVICES to this rank's GPU (LOCAL_RANK-th of those visible).
    Returns the reason when there are fewer GPUs than ranks on this node (bad input), else None."""
    if not launched() or device_arg == "cpu":
        return None
    _, _, local_rank, local_world = env_world()
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        ids = [x for x in visible.split(",") if x.strip()]
    else:
        count = _gpu_count()
        if count == 0:
            if device_arg == "cuda":
                return f"--device cuda under torchrun, but no CUDA GPU is visible on {socket.gethostname()}"
            return None                             # auto: the CPU, every rank
        ids = [str(i) for i in range(count)]
    if local_world > len(ids):
        return (f"{local_world} ranks on {socket.gethostname()} but only {len(ids)} GPU(s) visible there; "
                f"use --nproc-per-node <= {len(ids)} (or --device cpu)")
    os.environ["CUDA_VISIBLE_DEVICES"] = ids[local_rank]
    return None


def _gpu_count() -> int:
    """GPUs on this node, read through NVML so that CUDA is not started before CUDA_VISIBLE_DEVICES is set."""
    try:
        import pynvml
        pynvml.nvmlInit()
        try:
            return int(pynvml.nvmlDeviceGetCount())
        finally:
            pynvml.nvmlShutdown()
    except Exception:   # noqa: BLE001 - no driver, no library: no GPU
        return 0


@dataclass
class Dist:
    """This process's place in a multi-rank run, and the channels to the others."""
    rank: int
    world_size: int
    local_rank: int
    local_world_size: int
    host: str
    backend: str                                  # of the default group: "gloo" (CPU) or "nccl" (CUDA)
    timeout_s: float
    store: Any = None                             # the job's key-value store (torch.distributed.Store)
    control: Any = None                           # a gloo group for the timing loop's agreements
    published: int = 0
    ranks_info: list[dict[str, Any]] = field(default_factory=list)

    @property
    def columns(self) -> dict[str, Any]:
        return {"rank": self.rank, "world_size": self.world_size, "local_rank": self.local_rank}

    # ---- the key-value store: rows and records survive a rank that dies -------------------------------
    def _key(self, *parts: Any) -> str:
        return PREFIX + "/".join(map(str, parts))

    def put(self, key: str, value: Any) -> None:
        self.store.set(self._key(key), pickle.dumps(value))

    def get(self, key: str, timeout_s: float | None = None) -> Any:
        k = self._key(key)
        deadline = time.monotonic() + (self.timeout_s if timeout_s is None else timeout_s)
        while not self.store.check([k]):
            if time.monotonic() > deadline:
                raise TimeoutError(f"no {key!r} from the other ranks within {timeout_s or self.timeout_s:g} s")
            time.sleep(0.05)
        return pickle.loads(self.store.get(k))

    def has(self, key: str) -> bool:
        return bool(self.store.check([self._key(key)]))

    def publish_row(self, row: dict[str, Any], timeseries: list[dict[str, Any]]) -> None:
        """A rank > 0 hands one measured row (with its telemetry samples) to rank 0."""
        self.put(f"row/{self.rank}/{self.published}", (row, timeseries))
        self.published += 1
        self.put(f"rows/{self.rank}", self.published)

    def report(self, status: str, info: dict[str, Any]) -> None:
        """A rank's final record: 'ok', 'interrupted (SIGTERM)', 'failed: ...'."""
        self.put(f"done/{self.rank}", {**info, "status": status, "rows": self.published,
                                       "finished": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")})

    def collect(self, wait_s: float) -> tuple[list[tuple[dict, list]], list[dict[str, Any]]]:
        """Rank 0: every other rank's rows and final records, waiting up to `wait_s` for their reports. A rank
        without a report by then is recorded as such (its rows so far are still taken)."""
        deadline = time.monotonic() + wait_s
        pending = set(range(1, self.world_size))
        while pending and time.monotonic() < deadline:
            pending = {r for r in pending if not self.has(f"done/{r}")}
            if pending:
                time.sleep(0.1)
        rows: list[tuple[dict, list]] = []
        records: list[dict[str, Any]] = []
        for r in range(1, self.world_size):
            n = pickle.loads(self.store.get(self._key(f"rows/{r}"))) if self.has(f"rows/{r}") else 0
            for i in range(n):
                rows.append(pickle.loads(self.store.get(self._key(f"row/{r}/{i}"))))
            if r in pending:
                records.append({"rank": r, "rows": n, "status": "no report (failed or hung)" if not wait_s else
                                f"no report within {wait_s:g} s (failed or hung)"})
            else:
                records.append({"rank": r, **pickle.loads(self.store.get(self._key(f"done/{r}")))})
        return rows, records

    # ---- lockstep decisions of the timing loop (harness/timing.py) ------------------------------------
    def lockstep(self) -> "Lockstep":
        return Lockstep(self.control)


class Lockstep:
    """Agreement between ranks on the timing loop's decisions (when warm-up ends, how many calls per sample,
    when to stop), so that every rank makes the same number of collective calls. One small all_reduce on a
    gloo group per decision, outside the timed region."""

    def __init__(self, group: Any):
        self.group = group

    def _reduce(self, value: float, op: str) -> float:
        import torch
        import torch.distributed as dist
        t = torch.tensor([float(value)], dtype=torch.float64)
        dist.all_reduce(t, op=getattr(dist.ReduceOp, op), group=self.group)
        return float(t.item())

    def all(self, flag: bool) -> bool:
        return self._reduce(1.0 if flag else 0.0, "MIN") > 0.5

    def any(self, flag: bool) -> bool:
        return self._reduce(1.0 if flag else 0.0, "MAX") > 0.5

    def max(self, x: float) -> float:
        return self._reduce(x, "MAX")


_CURRENT: Dist | None = None


def current() -> Dist | None:
    """The Dist of this process (None outside a multi-rank run): the distributed suites read it."""
    return _CURRENT


def world() -> tuple[int, int]:
    """(rank, world_size) for suites: (0, 1) in a single process."""
    d = current()
    return (d.rank, d.world_size) if d is not None else (0, 1)


def start(device: str, timeout_s: float | None = None) -> Dist:
    """Join the process group of the launched job (gloo on the CPU, NCCL on CUDA) and a gloo control group."""
    global _CURRENT
    import torch
    import torch.distributed as dist
    rank, world_size, local_rank, local_world = env_world()
    timeout_s = float(timeout_s or DEFAULT_TIMEOUT_S)
    backend = "nccl" if device == "cuda" else "gloo"
    if device == "cuda":
        torch.cuda.set_device(0)                  # the rank's GPU (pin_device narrowed the visible ones)
    dist.init_process_group(backend=backend, timeout=_dt.timedelta(seconds=timeout_s))
    control = dist.new_group(backend="gloo", timeout=_dt.timedelta(seconds=timeout_s)) if backend != "gloo" \
        else dist.group.WORLD
    from torch.distributed import distributed_c10d as c10d
    store = c10d._get_default_store()
    d = Dist(rank, world_size, local_rank, local_world, socket.gethostname(), backend, timeout_s, store, control)
    _CURRENT = d
    return d


def stop() -> None:
    global _CURRENT
    try:
        import torch.distributed as dist
        if dist.is_initialized():
            dist.destroy_process_group()
    except Exception:   # noqa: BLE001 - a broken group (a peer died): nothing left to tidy
        pass
    _CURRENT = None


def shard(plan: list, d: Dist | None, mode: str) -> list:
    """This rank's rows: all of them (`same`), or every world_size-th (`shard`); a distributed suite's rows
    always run on every rank."""
    if d is None or mode != "shard":
        return plan
    return [p for i, p in enumerate(plan) if p.suite.distributed is not None or i % d.world_size == d.rank]


def resumable(rows: list[dict[str, Any]], d: Dist, suites: list) -> tuple[list[dict[str, Any]], set[tuple]]:
    """Rank 0 resuming: the rows to keep and the keys (with their rank) not to measure again. A row of a
    distributed suite counts only when every rank has it (its ranks measure together); partial ones are
    dropped and measured again on every rank."""
    from harness.runner import ROW_KEY, row_key
    spanning = {s.name for s in suites if s.distributed is not None}
    ranks_of: dict[tuple, set[str]] = {}
    for r in rows:
        if r.get("suite") in spanning:
            ranks_of.setdefault(row_key(r)[:-1], set()).add(str(r.get("rank")))
    everyone = {str(i) for i in range(d.world_size)}
    kept = [r for r in rows if r.get("suite") not in spanning or ranks_of[row_key(r)[:-1]] >= everyone]
    assert ROW_KEY[-1] == "rank"
    return kept, {row_key(r) for r in kept}


def say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)
