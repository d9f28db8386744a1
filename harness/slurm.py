"""`bench.py slurm`: run bench.py on a SLURM cluster through submitit, and gather every job's rows into one run.

    bench.py slurm --nodes 2 --gpus-per-node 8 --partition gpu --time 60 -- --suite collectives,train
    bench.py slurm --nodes 1 --gpus-per-node 1 --partition gpu --time 30 --sweep suite=gemm,attention -- --full
    bench.py slurm --resume --out results/<dir>            # resubmit the jobs that did not complete

One job spans `--nodes` nodes with one task per GPU (`--gpus-per-node`; on CPU partitions `--gpus-per-node 0
--tasks-per-node T`). Its tasks are the ranks of one bench.py run (harness/distributed.py): each task sets
RANK, WORLD_SIZE, LOCAL_RANK, LOCAL_WORLD_SIZE, MASTER_ADDR (the job's first host) and MASTER_PORT from
submitit's JobEnvironment, as torchrun would, and runs bench.py in a fresh interpreter; rank 0 writes the
job's run directory. `--sweep NAME=V1,V2` (repeatable: the product) submits a job array, one job per
value, adding `--NAME V` to the bench arguments (a sweep of suites, dtypes, configurations).

Layout of `--out DIR`: `jobs/<tag>/` holds each job's own run directory, `slurm/` submitit's logs,
`slurm.json` the jobs (tag, arguments, SLURM job id, state); `results.parquet`, `results.csv` and
`manifest.json` at the top are every job's rows in one table (with `job` and `slurm_job_id` columns), written
again whenever a job ends, so `bench.py report|compare DIR` read it like any run.

Every job runs bench.py with `--resume --out jobs/<tag>`, so a job that was preempted or hit its time limit
(SLURM sends SIGTERM: bench.py keeps its rows and marks its manifest interrupted) is reported as such and
`bench.py slurm --resume --out DIR` resubmits it (and any other job that did not complete), which measures
only the rows it lacks. Progress (state changes, rows so far) is printed while the jobs run.

Bad input is one line and exit 2: sbatch missing ("sbatch not found"), an unknown partition, more GPUs per
node or more nodes than the partition has, a world size the suites cannot use, bench arguments bench.py
itself would refuse.
"""
from __future__ import annotations

import argparse
import datetime as _dt
import itertools
import json
import logging
import os
import re
import secrets
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
FINAL = {"COMPLETED", "FAILED", "INTERRUPTED", "CANCELLED", "ENDED"}


class SlurmUsage(Exception):
    """Bad input: one line, exit 2."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:
        raise SlurmUsage(message)


def parser() -> argparse.ArgumentParser:
    p = _Parser(prog="bench.py slurm", description="Run bench.py on a SLURM cluster (submitit) and gather every "
                "job's rows into one run directory. Bench arguments go after --.")
    p.add_argument("--nodes", type=int, default=1, help="nodes per job (default 1)")
    p.add_argument("--gpus-per-node", type=int, default=None, help="GPUs per node, one rank each (0: a CPU job)")
    p.add_argument("--tasks-per-node", type=int, default=None,
                   help="ranks per node of a CPU job (default: --gpus-per-node, or 1)")
    p.add_argument("--cpus-per-task", type=int, default=1, help="CPUs per rank (default 1)")
    p.add_argument("--partition", default=None, help="SLURM partition")
    p.add_argument("--time", default="60", help="time limit per job: minutes, or [D-]HH:MM:SS (default 60)")
    p.add_argument("--sweep", action="append", default=[], metavar="NAME=V1,V2",
                   help="a job array: one job per value of bench option --NAME (repeatable: every combination)")
    p.add_argument("--out", default=None, help="output directory (default results/<date>-slurm-<hex>)")
    p.add_argument("--resume", action="store_true", help="resubmit the jobs of --out that did not complete")
    p.add_argument("--poll", type=float, default=2.0, help="seconds between progress checks (default 2)")
    p.add_argument("--rank-timeout", type=float, default=None,
                   help="passed to bench.py: seconds rank 0 waits for the other ranks")
    return p


# ---- validation ---------------------------------------------------------------------------------------------
def parse_time(t: str) -> int:
    """Minutes from 'M', 'HH:MM:SS' or 'D-HH:MM:SS' (SLURM's forms); SlurmUsage otherwise."""
    m = re.fullmatch(r"(?:(\d+)-)?(\d+):(\d{1,2}):(\d{1,2})", t.strip())
    if m:
        d, h, mi, s = (int(x or 0) for x in m.groups())
        minutes = d * 1440 + h * 60 + mi + (1 if s else 0)
    elif t.strip().isdigit():
        minutes = int(t)
    else:
        raise SlurmUsage(f"--time {t!r}: give minutes or [D-]HH:MM:SS")
    if minutes < 1:
        raise SlurmUsage(f"--time {t!r}: at least one minute")
    return minutes


def _run(cmd: list[str]) -> str:
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=30, check=True).stdout
    except FileNotFoundError:
        raise SlurmUsage(f"{cmd[0]} not found (SLURM client commands are not installed)") from None
    except subprocess.CalledProcessError as exc:
        line = (exc.stderr or exc.stdout or "").strip().splitlines()
        raise SlurmUsage(f"{' '.join(cmd[:2])} failed: {line[-1] if line else f'exit {exc.returncode}'} "
                         "(is the cluster up?)") from None
    except subprocess.TimeoutExpired:
        raise SlurmUsage(f"{cmd[0]} did not answer within 30 s (is slurmctld up?)") from None


def partition_facts(partition: str) -> dict[str, Any]:
    """Nodes, CPUs and GPUs (gres gpu:N) of a partition, read with sinfo; SlurmUsage when it does not exist."""
    names = [n.strip().rstrip("*") for n in _run(["sinfo", "-h", "-o", "%P"]).split()]
    if partition not in names:
        raise SlurmUsage(f"unknown partition {partition!r}; partitions here: {', '.join(names) or 'none'}")
    nodes, gpus, cpus = 0, 0, 0
    for line in _run(["sinfo", "-h", "-N", "-p", partition, "-o", "%N %c %G"]).splitlines():
        parts = line.split()
        if len(parts) < 3:
            continue
        nodes += 1
        cpus = max(cpus, int(re.sub(r"\D", "", parts[1]) or 0))
        for g in parts[2].split(","):
            m = re.match(r"gpu(?::[^:(]+)?:(\d+)", g)
            if m:
                gpus = max(gpus, int(m.group(1)))
    return {"nodes": nodes, "gpus_per_node": gpus, "cpus_per_node": cpus}


def sweep_values(specs: list[str]) -> list[list[str]]:
    """--sweep NAME=V1,V2 ... -> for each job, the bench arguments it adds (the product of every sweep)."""
    axes = []
    for spec in specs:
        name, sep, values = spec.partition("=")
        vals = [v for v in values.split(",") if v]
        if not sep or not re.fullmatch(r"[a-z][a-z0-9-]*", name) or not vals:
            raise SlurmUsage(f"--sweep {spec!r}: write NAME=V1,V2 with NAME a bench.py option (suite, dtype...)")
        axes.append([(name, v) for v in vals])
    if not axes:
        return [[]]
    return [[x for nv in combo for x in (f"--{nv[0]}", nv[1])] for combo in itertools.product(*axes)]


def _tag(extra: list[str], i: int) -> str:
    if not extra:
        return "job"
    return re.sub(r"[^A-Za-z0-9_.=,-]+", "_", ",".join(f"{a.lstrip('-')}={b}" for a, b in zip(extra[::2], extra[1::2])))


def check_bench_args(bench: list[str], world: int) -> None:
    """The bench arguments as bench.py would take them, and a world size every suite named can use."""
    from harness import cli
    forbidden = {"--out", "--resume", "--list", "--kernels-report"} & {a.split("=")[0] for a in bench}
    if forbidden:
        raise SlurmUsage(f"bench argument {sorted(forbidden)[0]} is set by bench.py slurm (give --out to slurm)")
    try:
        args = cli.parser().parse_args(bench)
    except SystemExit:
        raise SlurmUsage(f"bench arguments {' '.join(bench)!r} are not valid bench.py arguments") from None
    from harness.registry import UsageError, all_suites, get_suites
    try:
        names = cli._split(args.suite) or ["attention"]
        suites = list(all_suites().values()) if names == ["all"] else [s for n in names for s in get_suites(n)]
    except UsageError as exc:
        raise SlurmUsage(str(exc)) from None
    for s in suites:
        why = s.distributed(world) if s.distributed is not None else None
        if why:
            raise SlurmUsage(f"suite {s.name} cannot run on {world} rank(s): {why}")


# ---- inside a SLURM task --------------------------------------------------------------------------------------
def run_task(root: str, python: str, bench: list[str], out: str, status_dir: str) -> dict[str, Any]:
    """One rank of a job (called by submitit in every task): torchrun's environment from SLURM's, then bench.py."""
    import socket

    import submitit
    env = dict(os.environ)
    job = submitit.JobEnvironment()
    world = job.num_tasks
    if world > 1:
        env.update(RANK=str(job.global_rank), WORLD_SIZE=str(world), LOCAL_RANK=str(job.local_rank),
                   LOCAL_WORLD_SIZE=str(world // job.num_nodes), MASTER_ADDR=job.hostnames[0],
                   MASTER_PORT=str(20000 + int(re.sub(r"\D", "", str(job.job_id)) or 0) % 20000))
    env["PYTHONUNBUFFERED"] = "1"
    cmd = [python, str(Path(root) / "bench.py"), *bench, "--no-progress", "--resume", "--out", out]
    rc = subprocess.run(cmd, cwd=root, env=env).returncode
    result = {"rc": rc, "rank": job.global_rank, "host": socket.gethostname()}
    # read back by the submitting side without sacct (clusters may run without accounting)
    Path(status_dir, f"{Path(out).name}.rank{job.global_rank}.json").write_text(json.dumps(result))
    return result


# ---- submission, progress, gathering ----------------------------------------------------------------------------
def _executor(folder: Path, a: argparse.Namespace, tasks_per_node: int, minutes: int):
    import submitit
    logging.getLogger("submitit").setLevel(logging.ERROR)    # 'sacct' errors where accounting is off
    ex = submitit.SlurmExecutor(folder=str(folder), python=sys.executable)
    params: dict[str, Any] = dict(partition=a.partition, time=minutes, nodes=a.nodes, ntasks_per_node=tasks_per_node,
                                  cpus_per_task=a.cpus_per_task, job_name="kbench", signal_delay_s=60)
    if a.gpus_per_node:
        params["gpus_per_node"] = a.gpus_per_node
    ex.update_parameters(**params)
    return ex


def _squeue_states(ids: list[str]) -> dict[str, str]:
    if not ids:
        return {}
    try:
        out = subprocess.run(["squeue", "-h", "-r", "-o", "%i %T", "-j", ",".join(ids)], capture_output=True,
                             text=True, timeout=30).stdout
    except (OSError, subprocess.TimeoutExpired):
        return {}
    states = {}
    for line in out.splitlines():
        parts = line.split()
        if len(parts) == 2:
            states[parts[0]] = parts[1]
    return states


def _job_rows(d: Path) -> int:
    try:
        import pandas as pd
        return len(pd.read_csv(d / "results.csv", usecols=["status"])) if (d / "results.csv").exists() else 0
    except Exception:   # noqa: BLE001 - being replaced right now: next poll
        return 0


def _ended_state(rec: dict[str, Any], jobdir: Path) -> str:
    """What became of a job that left the queue: rank 0's exit status (written by run_task) and its run's
    manifest. No sacct: clusters may run without accounting."""
    try:
        rc = json.loads((jobdir.parent.parent / "slurm" / f"{jobdir.name}.rank0.json").read_text())["rc"]
    except (OSError, ValueError, KeyError):    # killed before it could write (time limit, preemption, node lost)
        rc = None
    manifest = {}
    try:
        manifest = json.loads((jobdir / "manifest.json").read_text())
    except (OSError, ValueError):
        pass
    if manifest.get("interrupted"):
        rec["detail"] = f"interrupted by {manifest.get('signal')} (time limit or preemption): resumable"
        return "INTERRUPTED"
    if rc == 0 and manifest.get("finished"):
        return "COMPLETED"
    if not manifest:
        rec["detail"] = "bench.py never started its run (see the job's log in slurm/)"
    else:
        rec["detail"] = f"bench.py exited {rc}" if rc is not None else "ended without a result (killed?)"
    return "FAILED"


def gather(out: Path, records: list[dict[str, Any]], command: list[str]) -> int:
    """Every job's rows in one table at the top of `out` (columns `job`, `slurm_job_id` added)."""
    from harness import results
    rows: list[dict[str, Any]] = []
    for rec in records:
        d = out / "jobs" / rec["tag"]
        if (d / "results.parquet").exists() or (d / "results.csv").exists():
            try:
                df = results.load(d)
            except Exception:   # noqa: BLE001 - a job's files being replaced: the next gather takes them
                continue
            for r in df.to_dict("records"):
                rows.append({**r, "job": rec["tag"], "slurm_job_id": rec.get("job_id")})
    manifest = {"kind": "slurm", "command": " ".join(["bench.py", "slurm", *command]),
                "gathered": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
                "jobs": records, "rows": len(rows), "run_id": out.name}
    results.ResultWriter(out, manifest, rows=rows).flush()
    return len(rows)


def main(argv: list[str]) -> int:
    argv = list(argv)
    bench = argv[argv.index("--") + 1:] if "--" in argv else []
    own = argv[:argv.index("--")] if "--" in argv else argv
    try:
        return _main(own, bench)
    except SlurmUsage as exc:
        print(f"bench.py slurm: error: {exc}", file=sys.stderr)
        return 2


def _main(own: list[str], bench: list[str]) -> int:
    a = parser().parse_args(own)
    if shutil.which("sbatch") is None:
        raise SlurmUsage("sbatch not found: SLURM is not installed here (or not on PATH)")
    try:
        import submitit  # noqa: F401
    except ImportError:
        raise SlurmUsage("submitit is not installed (pip install submitit; it is in pyproject.toml)") from None
    out = Path(a.out) if a.out else None
    state_file = out / "slurm.json" if out else None
    if a.resume:
        if out is None or not state_file.exists():
            raise SlurmUsage("--resume needs --out DIR of an earlier bench.py slurm run (with its slurm.json)")
        saved = json.loads(state_file.read_text())
        a = parser().parse_args(saved["own"])
        bench = saved["bench"]
        a.out, a.resume = str(out), True
    if a.partition is None:
        raise SlurmUsage("--partition is required (sinfo lists them)")
    for opt, v, lo in (("--nodes", a.nodes, 1), ("--gpus-per-node", a.gpus_per_node, 0),
                       ("--tasks-per-node", a.tasks_per_node, 1), ("--cpus-per-task", a.cpus_per_task, 1)):
        if v is not None and v < lo:
            raise SlurmUsage(f"{opt} must be at least {lo}, not {v}")
    minutes = parse_time(a.time)
    gpus = a.gpus_per_node or 0
    if gpus and a.tasks_per_node is not None and a.tasks_per_node != gpus:
        raise SlurmUsage("--tasks-per-node and --gpus-per-node differ: a GPU job runs one rank per GPU")
    tasks_per_node = gpus or a.tasks_per_node or 1
    world = a.nodes * tasks_per_node
    jobs_extra = sweep_values(a.sweep)
    for extra in jobs_extra:
        check_bench_args(bench + extra, world)
    if gpus == 0 and "--device" not in bench:
        bench = bench + ["--device", "cpu"]
    if a.rank_timeout is not None:
        bench = bench + ["--rank-timeout", str(a.rank_timeout)]
    facts = partition_facts(a.partition)
    if a.nodes > facts["nodes"]:
        raise SlurmUsage(f"--nodes {a.nodes}: partition {a.partition} has {facts['nodes']} node(s)")
    if gpus > facts["gpus_per_node"]:
        raise SlurmUsage(f"--gpus-per-node {gpus}: the nodes of partition {a.partition} have "
                         f"{facts['gpus_per_node']} GPU(s) (sinfo gres)")
    if gpus == 0 and tasks_per_node * a.cpus_per_task > facts["cpus_per_node"] > 0:
        raise SlurmUsage(f"{tasks_per_node} task(s) x {a.cpus_per_task} CPU(s) per node: partition {a.partition}'s "
                         f"nodes have {facts['cpus_per_node']} CPUs")

    if out is None:
        from harness.result_sets import results_root
        out = results_root() / f"{_dt.datetime.now():%Y%m%d-%H%M%S}-slurm-{secrets.token_hex(3)}"
    if not a.resume and out.exists() and any(out.iterdir()):
        raise SlurmUsage(f"--out {out} is not empty; choose a new directory, or --resume to continue it")
    out.mkdir(parents=True, exist_ok=True)
    state_file = out / "slurm.json"
    records: list[dict[str, Any]] = []
    if a.resume:
        records = json.loads(state_file.read_text())["jobs"]
    else:
        records = [{"tag": _tag(extra, i), "args": bench + extra, "state": "NEW"} for i, extra in enumerate(jobs_extra)]
        if len({r["tag"] for r in records}) != len(records):
            raise SlurmUsage("--sweep gives two jobs the same arguments")
    todo = [r for r in records if r["state"] != "COMPLETED"]
    queued = _squeue_states([r["job_id"] for r in todo if r.get("job_id")]) if a.resume else {}
    # still queued or running (an earlier follow was stopped): follow them rather than submit them again
    attached = {r["tag"] for r in todo if r.get("job_id") in queued or f"{r.get('job_id')}_0" in queued}
    if not todo:
        print(f"bench.py slurm: every job of {out} completed; nothing to resubmit")
        gather(out, records, own)
        return 0

    ex = _executor(out / "slurm", a, tasks_per_node, minutes)
    jobs = {}
    submit = [r for r in todo if r["tag"] not in attached]
    for rec in submit:                   # the previous attempt's exit records
        for f in (out / "slurm").glob(f"{rec['tag']}.rank*.json"):
            f.unlink()
    with ex.batch() if len(submit) > 1 else _nullcontext():
        for rec in submit:
            jobs[rec["tag"]] = ex.submit(run_task, str(ROOT), sys.executable, rec["args"],
                                         str(out / "jobs" / rec["tag"]), str(out / "slurm"))
    for rec in submit:
        rec.update(job_id=str(jobs[rec["tag"]].job_id), state="PENDING", detail="",
                   submitted=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"))
    _save(state_file, own, bench, records, a)
    kind = f"array of {len(submit)} jobs" if len(submit) > 1 else f"{len(submit)} job"
    print(f"bench.py slurm: submitted {kind} ({a.nodes} node(s) x {tasks_per_node} rank(s), partition "
          f"{a.partition}, {minutes} min): " + ", ".join(f"{r['tag']}={r['job_id']}" for r in submit)
          + (f"; following {len(attached)} still queued" if attached else "") + f" -> {out}", flush=True)
    return _follow(out, own, bench, records, todo, a)


class _nullcontext:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def _save(state_file: Path, own: list[str], bench: list[str], records: list[dict], a) -> None:
    saved_own = [x for x in own if x != "--resume"] if not a.resume else json.loads(state_file.read_text())["own"]
    from harness.results import atomic_write
    data = {"own": saved_own, "bench": bench, "jobs": records}
    atomic_write(state_file, lambda p: p.write_text(json.dumps(data, indent=2)))


def _follow(out: Path, own, bench, records, todo, a) -> int:
    """Stream progress until every submitted job has ended; gather the rows whenever one ends."""
    shown: dict[str, tuple] = {}
    try:
        while True:
            live = [r for r in todo if r["state"] not in FINAL]
            states = _squeue_states([r["job_id"] for r in live])
            for rec in live:
                jobdir = out / "jobs" / rec["tag"]
                s = states.get(rec["job_id"])
                if s is None and rec["job_id"] + "_0" not in states:
                    s = _ended_state(rec, jobdir)
                rec["state"] = s
                now = (s, _job_rows(jobdir))
                if shown.get(rec["tag"]) != now:
                    shown[rec["tag"]] = now
                    detail = f" ({rec['detail']})" if rec.get("detail") and s in FINAL else ""
                    print(f"  {rec['tag']} [{rec['job_id']}]: {s}, {now[1]} row(s){detail}", flush=True)
                if s in FINAL:
                    _save(out / "slurm.json", own, bench, records, a)
                    gather(out, records, own)
            if all(r["state"] in FINAL for r in todo):
                break
            time.sleep(a.poll)
    except KeyboardInterrupt:
        _save(out / "slurm.json", own, bench, records, a)
        print(f"bench.py slurm: stopped following; the jobs keep running. bench.py slurm --resume --out {out} "
              "follows and gathers them once they end (it resubmits only jobs that did not complete)", file=sys.stderr)
        return 130
    n = gather(out, records, own)
    bad = [r for r in records if r["state"] != "COMPLETED"]
    print(f"bench.py slurm: {n} rows from {len(records)} job(s) in {out}")
    if bad:
        for r in bad:
            print(f"bench.py slurm: job {r['tag']} [{r.get('job_id')}] {r['state']}: {r.get('detail', '')}",
                  file=sys.stderr)
        print(f"bench.py slurm: --resume --out {out} resubmits them (they keep the rows they have)", file=sys.stderr)
        return 1
    return 0
