"""`python -m deploy export|quality|backends [--model tiny]`.

- `export`: the model's ONNX graphs (prefill, decode) and the digits MLP's, exported and checked unless cached;
  prints each file, its export time and size.
- `quality`: held-out bits per byte of the eager float32 model, ONNX Runtime float32 and each ORT
  quantization (dynamic int8, static int8, static fp8), with the delta against eager in %.
- `backends`: each optional backend and why it is missing, if it is.
Bad input (an unknown model): one line, exit 2.
"""
from __future__ import annotations

import argparse
import sys
import time


def _lm(spec: str):
    from models import zoo
    return zoo.load(spec, progress=True, attn="eager")


def cmd_export(args) -> int:
    from deploy import export, variants
    lm = _lm(args.model)
    paths = [export.export_lm(lm, g) for g in ("prefill", "decode")] + [export.export_digits(variants.digits_model())]
    for p in paths:
        rec = export.record(p)
        print(f"{p}  ({p.stat().st_size / 2**20:.1f} MiB, exported in {rec['export_s']} s, {rec['checker']})")
    return 0


def cmd_quality(args) -> int:
    import torch

    from deploy import export, ort_quant, variants
    from models import evaluate, zoo
    torch.set_num_threads(args.threads)
    lm = _lm(args.model)
    ref = evaluate.bits_per_byte(lm, limit=args.limit)
    print(f"{lm.name}: held-out bits per byte over the first {args.limit} bytes (threads={args.threads})")
    print(f"{'variant':22s} {'bpb':>8s} {'delta':>9s} {'seconds':>8s}")
    print(f"{'eager float32':22s} {ref:8.4f} {'':>9s}")
    for method in ("fp32",) + ort_quant.METHODS:
        t0 = time.perf_counter()
        if method == "fp32":
            s = variants.session(export.export_lm(lm, "prefill"), "cpu")
            fwd = variants.GraphLM(lambda ids, s=s: s.run(input_ids=ids)[0], "cpu")
        else:
            fwd, _ = ort_quant.lm_forward(lm, method)
        v = evaluate.bits_per_byte(zoo.LM(lm.name, fwd, lm.context), limit=args.limit)
        print(f"{'onnxruntime ' + method:22s} {v:8.4f} {100 * (v - ref) / ref:+8.3f}% "
              f"{time.perf_counter() - t0:8.1f}")
    return 0


def cmd_backends(args) -> int:
    from deploy import guards
    for b in guards.BACKENDS:
        print(f"{b:14s} {guards.missing(b) or 'ok'}")
    return 0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m deploy", description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    for name in ("export", "quality"):
        p = sub.add_parser(name)
        p.add_argument("--model", default="tiny", help="tiny, small, test or a checkpoint directory")
        if name == "quality":
            p.add_argument("--limit", type=int, default=8192, help="held-out bytes scored (default 8192)")
            p.add_argument("--threads", type=int, default=1)
    sub.add_parser("backends")
    args = ap.parse_args(argv)
    from models.zoo import ModelError
    try:
        return {"export": cmd_export, "quality": cmd_quality, "backends": cmd_backends}[args.cmd](args)
    except ModelError as exc:
        print(f"python -m deploy: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
