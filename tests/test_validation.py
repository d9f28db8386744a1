"""Every numeric option finite and in range, sub-command arguments, loader errors: one line and exit 2."""
import json

import pytest

from harness import baseline, cli
from tests.helpers import bench

BAD = [
    (["--budget", "nan"], "--budget must be a finite number in (0, 86400]"),
    (["--budget", "inf"], "--budget must be a finite number"),
    (["--budget", "-1"], "--budget must be a finite number"),
    (["--budget", "0"], "--budget must be a finite number"),
    (["--target-ci", "nan"], "--target-ci must be a finite number in (0, 1)"),
    (["--target-ci", "0"], "--target-ci must be"),
    (["--target-ci", "1.5"], "--target-ci must be"),
    (["--target-ci", "abc"], "argument --target-ci: invalid float value: 'abc'"),
    (["--row-timeout", "0"], "--row-timeout must be a finite number"),
    (["--row-timeout", "nan"], "--row-timeout must be a finite number"),
    (["--worker-memory", "-1"], "--worker-memory must be a finite number"),
    (["--worker-memory", "nan"], "--worker-memory must be a finite number"),
    (["--worker-memory", "0.1"], "too small to import torch"),
    (["--seed", "-1"], "--seed must be between 0 and 2**63-1"),
    (["--seed", "1.5"], "argument --seed: invalid int value"),
    (["--threads", "0"], "--threads must be between 1 and 4096"),
    (["--threads", "100000"], "--threads must be between 1 and 4096"),
    (["--resume"], "--resume needs --out DIR"),
    (["--no-isolate", "--row-timeout", "5"], "apply to isolated workers"),
]


@pytest.mark.parametrize("args,message", BAD, ids=[" ".join(a) for a, _ in BAD])
def test_bad_option_values(args, message, capsys):
    with pytest.raises(SystemExit) as e:      # argparse's own errors exit through _Parser.error
        raise SystemExit(cli.main(["--suite", "softmax", "--test-shapes", *args]))
    assert e.value.code == 2
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and "Traceback" not in err, err
    assert message in lines[0]


def test_budget_nan_end_to_end_no_traceback_no_run(tmp_path):
    p = bench("--suite", "softmax", "--budget", "nan", "--out", str(tmp_path / "r"), timeout=300)
    assert p.returncode == 2 and "Traceback" not in p.stderr and "--budget" in p.stderr
    assert not (tmp_path / "r").exists()                   # refused before anything is created


def test_kernels_report_out_is_checked_before_collecting(tmp_path, capsys, monkeypatch):
    import harness.kernels_report as kr
    monkeypatch.setattr(kr, "collect", lambda *a, **k: pytest.fail("collected before checking --out"))
    f = tmp_path / "file"
    f.write_text("x")
    for out, msg in ((f, "is a file, not a directory"), (f / "sub", "cannot create --out")):
        assert cli.main(["--kernels-report", "--out", str(out)]) == 2
        err = capsys.readouterr().err
        assert len(err.strip().splitlines()) == 1 and msg in err


def test_baseline_save_from_a_csv_without_samples(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("KB_RESULTS_DIR", str(tmp_path / "results"))
    csv = tmp_path / "results.csv"
    csv.write_text("run_id,suite,case,variant,dtype,device,status,median_ms\nr,s,c,v,float32,cpu,ok,1.0\n")
    assert baseline.main(["save", "nosamples", str(csv)]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "no samples_ms column" in err
    left = list((tmp_path / "results" / "baselines").glob("*")) if (tmp_path / "results" / "baselines").exists() else []
    assert left == []                                      # no temporary directory left behind


def test_a_corrupt_library_is_reported_with_the_loader_error(tmp_path, monkeypatch):
    from kernels.cpp import lib
    bad = tmp_path / "libkb_cpp.so"
    bad.write_bytes(b"not an ELF file")
    monkeypatch.setenv("KB_CPP_LIB", str(bad))
    monkeypatch.setattr(lib.LIB, "_cache", {})            # nothing loaded before this test counts
    reason = lib.missing_reason()
    assert "not built" not in reason and str(bad) in reason
    assert "invalid ELF header" in reason or "file too short" in reason     # the dynamic loader's own words


def test_results_dir_setting_is_used_by_the_runner(tmp_path, monkeypatch, capsys):
    from harness import registry
    from tests import faulty_suite
    registry.all_suites()
    monkeypatch.setitem(registry._SUITES, "faulty", faulty_suite.SUITE)
    monkeypatch.setenv("KB_RESULTS_DIR", str(tmp_path / "res"))
    assert cli.main(["--suite", "faulty", "--variant", "good", "--test-shapes", "--budget", "0.02", "--no-isolate",
                     "--no-progress"]) == 0
    (run,) = (tmp_path / "res").iterdir()
    assert json.loads((run / "manifest.json").read_text())["run_id"] == run.name
    from harness.baseline import latest_run
    assert latest_run() == run                              # and the readers find it there
