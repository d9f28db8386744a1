"""The project's attention kernels inside the model, through transformers' attention interface.

`register()` adds `kb_cpp` (kernels/cpp, CPU), `kb_cuda_flash` (kernels/cuda, GPU) and `kb_triton`
(kernels/triton, GPU) to `AttentionInterface`; `model.set_attn_implementation("kb_cpp")` then routes every
layer's attention through that kernel, so a kernel's win (or loss) shows end to end in suites/model.py.

The kernels take no mask: causal masking is top-left aligned inside the kernel. That covers the two shapes a
KV-cached generation produces with a DynamicCache: prefill from an empty cache (queries == keys, causal) and
one-token decode (one query sees every cached key: not causal). Other shapes (a chunk appended to a
non-empty cache, a StaticCache's padded buffers, padding masks) raise ValueError rather than compute a
wrong answer. No mask function is registered for these names, so transformers passes attention_mask=None.
"""
from __future__ import annotations

import torch

NAMES = ("kb_cpp", "kb_cuda_flash", "kb_triton")


def _causal(sq: int, sk: int) -> bool:
    if sq == sk:
        return sq > 1
    if sq == 1:
        return False
    raise ValueError(f"project attention kernels take prefill from an empty cache or one-token decode; got "
                     f"{sq} queries against {sk} keys (use a DynamicCache, and no chunked prefill)")


def _cpp(q, k, v, out, causal):
    from kernels.cpp import lib
    lib.ATTENTION(q=q, k=k, v=v, causal=causal, out=out)       # the declared kernel (kernels/native.py)


def _cuda(q, k, v, out, causal):
    from kernels.cuda import lib
    lib.ATTENTION(lib.LIB.require(), q=q, k=k, v=v, causal=causal, out=out)


def _triton(q, k, v, out, causal):
    from kernels.triton.attention_fwd import attention_fwd
    attention_fwd(q, k, v, out, causal)


_RUN = {"kb_cpp": _cpp, "kb_cuda_flash": _cuda, "kb_triton": _triton}


def _forward(name: str):
    run = _RUN[name]

    def forward(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
        """query [b, h, sq, d], key/value [b, hkv, sk, d] -> ([b, sq, h, d], None) as transformers expects."""
        if attention_mask is not None:
            raise ValueError(f"{name}: attention masks (padding) are not supported")
        if dropout and module.training:
            raise ValueError(f"{name}: attention dropout is not supported")
        d = query.shape[-1]
        if scaling is not None and abs(scaling * d ** 0.5 - 1.0) > 1e-6:
            raise ValueError(f"{name}: the kernels scale by 1/sqrt(head_dim); the model asks for {scaling}")
        causal = _causal(query.shape[2], key.shape[2])
        q, k, v = query.contiguous(), key.contiguous(), value.contiguous()
        out = torch.empty_like(q)
        run(q, k, v, out, causal)
        return out.transpose(1, 2).contiguous(), None
    forward.__name__ = f"{name}_attention_forward"
    return forward


def register() -> None:
    """Add the kernels to transformers' global attention interface (idempotent)."""
    from transformers import AttentionInterface
    for name in NAMES:
        AttentionInterface.register(name, _forward(name))


def missing_reason(name: str, device: str) -> str | None:
    """None when kernel `name` can run on `device`, else why not (a skipped row)."""
    if name == "kb_cpp":
        from kernels.cpp import lib
        return "runs on the CPU only" if device != "cpu" else lib.missing_reason()
    if device != "cuda":
        return "runs on CUDA GPUs only"
    if name == "kb_cuda_flash":
        from kernels.cuda import lib
        return lib.missing_reason()
    from types import SimpleNamespace

    from kernels.triton.common import missing_reason as triton_missing
    return triton_missing(SimpleNamespace(device=device, dtype=None))
