"""Output directories never lose a run: unique ids and temp files, no overwrite, --resume, signals, full disk."""
import errno
import json
import os
import signal
import subprocess
import sys
import threading
import time

import pandas as pd
import pytest

from harness import cli, registry, rundir
from harness.registry import UsageError
from harness.results import ResultWriter, atomic_write, load
from harness.runner import RunOptions, Runner, build_plan
from harness.timing import TimingConfig
from tests import faulty_suite
from tests.helpers import ROOT

KEY = ["suite", "case", "variant", "dtype", "device"]
GOOD = ["--suite", "faulty", "--variant", "good,also_good", "--no-progress", "--no-auto-peak"]   # 4 x 2 = 8 rows


@pytest.fixture(autouse=True)
def faulty_registered(monkeypatch):
    """In-process cli.main sees the faulty suite as bench.py does with KB_EXTRA_SUITES."""
    registry.all_suites()
    monkeypatch.setitem(registry._SUITES, "faulty", faulty_suite.SUITE)


def start(*args, **env):
    return subprocess.Popen([sys.executable, str(ROOT / "bench.py"), *args], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1", "KB_EXTRA_SUITES": "tests.faulty_suite",
                                 **env})


def finish(p, timeout=600):
    out, err = p.communicate(timeout=timeout)
    return p.returncode, out, err


def wait_rows(out, n, proc, timeout=300):
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            if len(load(out)) >= n:
                return
        except (FileNotFoundError, OSError, ValueError):
            pass
        if proc.poll() is not None:
            raise AssertionError(f"the run ended before {n} rows: {proc.communicate()}")
        time.sleep(0.1)
    proc.kill()
    raise AssertionError("no rows appeared")


def one_error_line(err):
    lines = [ln for ln in err.splitlines() if ln.strip() and "Warning" not in ln]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


# ---- ids and temporary files --------------------------------------------------------------------------------

def test_run_ids_are_unique_within_one_second(tmp_path, monkeypatch):
    monkeypatch.setenv("KB_RESULTS_DIR", str(tmp_path))
    dirs = [rundir.claim(None, "cpu") for _ in range(20)]        # well within one second
    try:
        assert len({d.path for d in dirs}) == len({d.run_id for d in dirs}) == 20
        assert all(d.path.parent == tmp_path for d in dirs)      # KB_RESULTS_DIR is where runs go
    finally:
        for d in dirs:
            d.release()


def test_concurrent_writers_of_one_file_never_share_a_temporary(tmp_path):
    target, errors = tmp_path / "results.csv", []

    def write(i):
        try:
            for j in range(40):
                atomic_write(target, lambda p: p.write_text(f"{i},{j}\n" * 100))
        except Exception as e:   # noqa: BLE001
            errors.append(e)
    threads = [threading.Thread(target=write, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and len(set(target.read_text().splitlines())) == 1
    assert not list(tmp_path.glob(".*"))


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
    target = tmp_path / "results.csv"
    target.write_text("old\n")

    def full_disk(p):
        p.write_text("half")
        raise OSError(errno.ENOSPC, "No space left on device")
    with pytest.raises(OSError):
        atomic_write(target, full_disk)
    assert target.read_text() == "old\n" and not list(tmp_path.glob(".*"))


# ---- --out: refused, locked, resumed -----------------------------------------------------------------------

def test_out_at_an_existing_run_is_refused_and_the_run_untouched(tmp_path, capsys):
    out = tmp_path / "run"
    assert cli.main([*GOOD, "--test-shapes", "--budget", "0.02", "--no-isolate", "--out", str(out)]) == 0
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    capsys.readouterr()
    assert cli.main([*GOOD, "--test-shapes", "--budget", "0.02", "--no-isolate", "--out", str(out)]) == 2
    line = one_error_line(capsys.readouterr().err)
    assert f"--out {out} holds a run already" in line and "--resume" in line
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before           # errors.log included
    (tmp_path / "file").write_text("x")
    for bad, msg in ((tmp_path / "file", "is a file, not a directory"), (tmp_path / "file" / "sub", "cannot create")):
        assert cli.main([*GOOD, "--test-shapes", "--no-isolate", "--out", str(bad)]) == 2
        assert msg in one_error_line(capsys.readouterr().err)
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    assert cli.main([*GOOD, "--test-shapes", "--no-isolate", "--out", str(tmp_path / "other")]) == 2
    assert "is not empty" in one_error_line(capsys.readouterr().err)


def test_a_directory_being_written_is_refused(tmp_path):
    held = rundir.claim(tmp_path / "run", "cpu")
    try:
        with pytest.raises(UsageError, match="being written by another run"):
            rundir.claim(tmp_path / "run", "cpu", resume=True)
    finally:
        held.release()
    rundir.claim(tmp_path / "run", "cpu", resume=True).release()      # free again once released


def test_concurrent_runs_keep_every_row_of_both(tmp_path):
    """Same second: two default run dirs, an explicit --out, and two runs racing for one --out."""
    args = [*GOOD, "--budget", "0.05", "--no-isolate"]
    env = {"KB_RESULTS_DIR": str(tmp_path / "results")}
    procs = [start(*args, **env), start(*args, **env), start(*args, "--out", str(tmp_path / "mine"), **env),
             start(*args, "--out", str(tmp_path / "same"), **env), start(*args, "--out", str(tmp_path / "same"), **env)]
    res = [finish(p) for p in procs]
    assert [r[0] for r in res[:3]] == [0, 0, 0], [r[2] for r in res]
    runs = sorted(d for d in (tmp_path / "results").iterdir() if d.name != "peaks")
    assert len(runs) == 2 and len({json.loads((r / "manifest.json").read_text())["run_id"] for r in runs}) == 2
    for d in runs + [tmp_path / "mine"]:
        df = load(d)
        assert len(df) == 8 and (df.status == "ok").all() and not df.duplicated(KEY).any()
        assert not list(d.glob(".*"))
    codes = sorted(r[0] for r in res[3:])
    assert codes == [0, 2], [r[2] for r in res[3:]]
    loser = next(r for r in res[3:] if r[0] == 2)
    assert "--out" in one_error_line(loser[2])
    assert len(load(tmp_path / "same")) == 8


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM, signal.SIGKILL], ids=lambda s: s.name)
def test_resume_after_a_signal_completes_the_table(tmp_path, sig):
    out = tmp_path / "run"
    p = start(*GOOD, "--budget", "0.3", "--out", str(out))
    wait_rows(out, 2, p)
    workers = _children(p.pid)
    assert workers                                              # isolated: the rows run in a worker
    p.send_signal(sig)
    code, _, err = finish(p, timeout=120)
    m = json.loads((out / "manifest.json").read_text())
    kept = load(out)
    assert 2 <= len(kept) < 8
    deadline = time.time() + 10
    while any(_alive(w) for w in workers) and time.time() < deadline:
        time.sleep(0.1)
    assert not any(_alive(w) for w in workers)                  # no orphan worker, even after SIGKILL
    if sig == signal.SIGKILL:
        assert code == -signal.SIGKILL and "finished" not in m
    else:
        assert code == 128 + sig, err
        assert "Traceback" not in err and "--resume" in err
        assert m["interrupted"] is True and m["signal"] == sig.name and m["rows"] == len(kept)
    code, _, err = finish(start(*GOOD, "--budget", "0.3", "--out", str(out), "--resume"))
    assert code == 0, err
    df = load(out)
    assert len(df) == 8 and not df.duplicated(KEY).any() and (df.status == "ok").all()
    same = KEY + ["median_ms", "n", "timestamp", "run_id", "speedup"]           # the kept rows, unchanged
    pd.testing.assert_frame_equal(df.iloc[:len(kept)][same].reset_index(drop=True), kept[same], check_dtype=False)
    assert df.samples_ms.iloc[:len(kept)].tolist() == kept.samples_ms.tolist()
    assert df.run_id.nunique() == 1 and df.speedup.notna().all()
    m = json.loads((out / "manifest.json").read_text())
    assert m["interrupted"] is False and m["rows"] == 8 and len(m["sessions"]) == 2
    assert m["sessions"][1]["rows_before"] == len(kept)
    assert not list(out.glob(".*"))


def _children(pid: int) -> list[int]:
    kids = []
    for d in os.listdir("/proc"):
        try:
            if d.isdigit() and int(open(f"/proc/{d}/stat").read().rsplit(")", 1)[1].split()[1]) == pid:
                kids.append(int(d))
        except (OSError, IndexError, ValueError):
            pass
    return kids


def _alive(pid: int) -> bool:
    try:
        return open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def test_resume_refuses_other_settings(tmp_path, capsys):
    out = tmp_path / "run"
    assert cli.main([*GOOD, "--test-shapes", "--budget", "0.02", "--no-isolate", "--out", str(out)]) == 0
    capsys.readouterr()
    assert cli.main([*GOOD, "--test-shapes", "--budget", "0.05", "--no-isolate", "--out", str(out), "--resume"]) == 2
    line = one_error_line(capsys.readouterr().err)
    assert "measured with other settings" in line and "timing" in line
    assert cli.main([*GOOD, "--test-shapes", "--budget", "0.02", "--no-isolate", "--out", str(out), "--resume"]) == 0
    assert len(load(out)) == 2                                   # nothing left to measure, nothing duplicated


# ---- a full disk -------------------------------------------------------------------------------------------

def _runner(out, **kw):
    suite = faulty_suite.SUITE
    opts = RunOptions(suites=[suite], device="cpu", dtypes=["float32"], mode="quick", out=out,
                      variants=["good", "also_good"], timing=TimingConfig(budget_s=0.02, min_samples=3),
                      progress=False, isolate=False, auto_peak=False, **kw)
    return Runner(opts, []), build_plan(opts)


def test_a_write_error_stops_the_run_cleanly(tmp_path, monkeypatch):
    runner, plan = _runner(tmp_path / "run")
    real, calls = ResultWriter.flush, []

    def flush(self):
        calls.append(1)
        if len(calls) == 4:
            raise OSError(errno.ENOSPC, "No space left on device")
        real(self)
    monkeypatch.setattr(ResultWriter, "flush", flush)
    try:
        assert runner.run(plan) == 1
    finally:
        runner.close()
    assert "No space left on device" in runner.stop_reason and "was not saved" in runner.stop_reason
    df = load(tmp_path / "run")
    assert len(df) == 3 and (df.status == "ok").all()              # the rows written before stay valid
    m = json.loads((tmp_path / "run" / "manifest.json").read_text())
    assert m["rows"] == 3 and "No space left" in m["stopped"]


def test_a_full_tmpfs_stops_the_run_cleanly(tmp_path):
    mnt = tmp_path / "small"
    mnt.mkdir()
    # 16 MiB: room for the run's own files however long a loaded machine makes it (its telemetry grows with time;
    # 2 MiB filled up before the filler could be created in a CI run at load), then the filler takes the rest
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", str(mnt)], capture_output=True).returncode:
        pytest.skip("cannot mount a tmpfs here (needs root/CAP_SYS_ADMIN); the injected write error covers it")
    try:
        out = mnt / "run"
        p = start(*GOOD, "--budget", "0.3", "--out", str(out))
        wait_rows(out, 2, p)
        with open(mnt / "filler", "wb") as f:                     # fill the disk while the run goes on
            try:
                while True:
                    f.write(b"\0" * 65536)
                    f.flush()
            except OSError:
                pass
        code, _, err = finish(p)
        assert code == 1, err
        assert "Traceback" not in err and "No space left on device" in err
        df = load(out)                                             # complete files, every row they hold valid
        assert 2 <= len(df) < 8 and (df.status == "ok").all()
        assert not list(out.glob(".*.tmp"))
        os.unlink(mnt / "filler")
        code, _, err = finish(start(*GOOD, "--budget", "0.3", "--out", str(out), "--resume"))
        assert code == 0, err
        assert len(load(out)) == 8
    finally:
        subprocess.run(["umount", "-l", str(mnt)])


@pytest.mark.parametrize("sig", [signal.SIGHUP, signal.SIGTERM], ids=lambda s: s.name)
def test_hangup_and_terminate_are_interrupts_with_their_signal(tmp_path, sig):
    """In-process (fast): the signal arrives after the second row; rows kept, 128+signal, manifest says which."""
    runner, plan = _runner(tmp_path / "run")
    seen = []

    def on_row(row):
        seen.append(row)
        if len(seen) == 2:
            os.kill(os.getpid(), sig)
    try:
        assert runner.run(plan, on_row) == 128 + sig
    finally:
        runner.close()
    assert signal.getsignal(sig) is signal.SIG_DFL or callable(signal.getsignal(sig))   # handlers restored
    df = load(tmp_path / "run")
    m = json.loads((tmp_path / "run" / "manifest.json").read_text())
    assert len(df) == 2 and m["interrupted"] is True and m["signal"] == sig.name and m["rows"] == 2
