"""Model sizes, built in code (nothing is downloaded): Llama architecture through transformers' LlamaConfig.

Every size is a decoder with RMSNorm, rotary position embeddings, grouped-query attention and a SwiGLU MLP,
byte-level (vocabulary 256: a token is one UTF-8 byte, so no tokenizer is needed). Head dim 64, so the
project's attention kernels (C++, CUDA, Triton: head dims 64/128) plug into every size.

Parameter counts (tied embeddings): test 0.09M, tiny 0.43M, small 22.7M.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

VOCAB = 256


@dataclass(frozen=True)
class Recipe:
    """One model size and how it is trained (everything the cache key depends on)."""
    name: str
    hidden: int
    layers: int
    heads: int
    kv_heads: int
    intermediate: int
    context: int            # training sequence length (and max_position_embeddings)
    steps: int              # optimizer steps
    batch: int              # sequences per step
    lr: float
    warmup: int
    seed: int = 0
    weight_decay: float = 0.1

    def config(self, attn_implementation: str = "sdpa"):
        from transformers import LlamaConfig
        cfg = LlamaConfig(
            vocab_size=VOCAB, hidden_size=self.hidden, intermediate_size=self.intermediate,
            num_hidden_layers=self.layers, num_attention_heads=self.heads, num_key_value_heads=self.kv_heads,
            head_dim=self.hidden // self.heads, max_position_embeddings=self.context, rms_norm_eps=1e-5,
            rope_theta=10000.0, tie_word_embeddings=True, attention_bias=False, mlp_bias=False,
            bos_token_id=None, eos_token_id=None, pad_token_id=None)
        cfg._attn_implementation = attn_implementation
        return cfg

    def as_dict(self) -> dict:
        return asdict(self)

    @property
    def tokens_per_step(self) -> int:
        return self.batch * self.context


# tiny: the default model; trained on first use. Recipe chosen by measurement (docs/models.md, "choosing the
# recipe"): at the same 1,500 steps and about the same CPU time, 256-byte windows x 8 (2.03 bits per byte)
# beat 128 x 16 (2.08) and the earlier 64 x 16 at lr 1e-2 (2.54; 2.18 at 3,000 steps).
TINY = Recipe("tiny", hidden=128, layers=2, heads=2, kv_heads=1, intermediate=384, context=256,
              steps=1500, batch=8, lr=6e-3, warmup=30)
# small: for GPUs (22.6M parameters, 512 tokens of context); trains on first use wherever it runs.
SMALL = Recipe("small", hidden=512, layers=8, heads=8, kv_heads=2, intermediate=1408, context=512,
               steps=2000, batch=32, lr=1.5e-3, warmup=100)
# test: seconds, for the unit tests (a few steps).
TEST = Recipe("test", hidden=64, layers=2, heads=2, kv_heads=1, intermediate=128, context=64,
              steps=20, batch=8, lr=3e-3, warmup=2)

RECIPES: dict[str, Recipe] = {r.name: r for r in (TINY, SMALL, TEST)}
