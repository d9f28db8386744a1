"""Models for the pipelines (quantization, distillation, sparsity, KV cache, streaming) and suites/model.py.

    from models import load, evaluate
    lm = load("tiny")                       # trained here on first use (cached), or load("/path/to/ckpt")
    evaluate.bits_per_byte(lm)              # held-out bits per byte (lower is better)
    ref = evaluate.greedy_tokens(lm)        # before a change ...
    evaluate.greedy_agreement(lm2, ref)     # ... and after: share of identical greedy tokens

`lm.model` is a transformers LlamaForCausalLM (any causal LM for a checkpoint directory). Modules:
configs (sizes and recipes), data (corpus, fixed split, digits), train (training loop, FLOPs, MFU),
zoo (load, cache), evaluate, generate (KV-cached greedy decoding), attention (project kernels inside the
model), digits (the classifier task), cli (`python bench.py model`). docs/models.md has the details.
"""
from models.zoo import LM, ModelError, load, resolve  # noqa: F401
