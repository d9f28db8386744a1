"""Load a model by name (`tiny`, `small`, `test`: trained here on first use, then cached) or from a
checkpoint directory (any transformers causal LM: `--model /path/to/checkpoint`).

Cache: `<repo>/.cache/models/<name>-<key>/` (or `$KB_MODELS_CACHE`), where `key` hashes the recipe, the
corpus and the split, so a changed recipe trains a new model. A cache entry is a plain transformers
checkpoint (config.json, model.safetensors: it loads with `--model <that dir>` too) plus `meta.json`: the
loss curve, training time, machine load, FLOPs, MFU, held-out bits per byte and the SHA-256 of the weights.
An entry whose meta, config or weights do not verify is rebuilt (a warning says why), never used. Entries
are written to a temporary directory and renamed into place; a file lock keeps two processes from training
the same model at once. Nothing is downloaded: HF_HUB_OFFLINE=1 and local_files_only everywhere.
"""
from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import sys
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import torch  # noqa: E402

from models import data  # noqa: E402
from models.configs import RECIPES, Recipe  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
WEIGHTS = "model.safetensors"


class ModelError(Exception):
    """Bad --model: unknown name, or not a causal LM checkpoint (one line, exit 2 at the command line)."""


@dataclass
class LM:
    """A causal LM and how to turn text into its tokens."""
    name: str
    model: Any                              # a transformers *ForCausalLM, eval mode
    context: int                            # evaluation window (training context for ours)
    byte_level: bool = True
    tokenizer: Any = None
    meta: dict = field(default_factory=dict)   # training record (ours); {} for user checkpoints
    path: Path | None = None

    def encode_bytes(self, b: bytes) -> torch.Tensor:
        if self.byte_level:
            return data.as_tensor(b)
        return torch.tensor(self.tokenizer(b.decode("utf-8", errors="replace"))["input_ids"], dtype=torch.long)

    def encode(self, text: str) -> torch.Tensor:
        return self.encode_bytes(text.encode("utf-8"))

    def decode(self, ids) -> str:
        return data.decode(ids) if self.byte_level else self.tokenizer.decode(list(ids))

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device


def cache_root() -> Path:
    return Path(os.environ.get("KB_MODELS_CACHE", ROOT / ".cache" / "models"))


def cache_key(recipe: Recipe) -> str:
    blob = json.dumps({"recipe": recipe.as_dict(), "corpus": data.corpus_digest(), "block": data.BLOCK,
                       "every": data.HELDOUT_EVERY, "seed": data.SPLIT_SEED}, sort_keys=True)
    return f"{recipe.name}-{hashlib.sha256(blob.encode()).hexdigest()[:12]}"


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def verify(entry: Path) -> str | None:
    """None when the cache entry is whole, else what is wrong with it."""
    try:
        meta = json.loads((entry / "meta.json").read_text())
    except (OSError, ValueError) as exc:
        return f"meta.json unreadable ({type(exc).__name__})"
    for f in ("config.json", WEIGHTS):
        if not (entry / f).is_file():
            return f"{f} missing"
    if meta.get("weights_sha256") != _sha256(entry / WEIGHTS):
        return f"{WEIGHTS} does not match the SHA-256 recorded in meta.json"
    return None


def _quiet_transformers() -> None:
    from transformers.utils import logging as hf_logging
    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()


def _load_checkpoint(path: Path, device: str, dtype: torch.dtype, attn: str):
    from transformers import AutoModelForCausalLM
    _quiet_transformers()
    model = AutoModelForCausalLM.from_pretrained(path, local_files_only=True, dtype=dtype,
                                                 attn_implementation=attn)
    return model.to(device).eval()


@contextmanager
def _lock(root: Path, name: str):
    root.mkdir(parents=True, exist_ok=True)
    with open(root / f".{name}.lock", "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def build(recipe: Recipe, device: str = "cpu", progress: bool = True, force: bool = False) -> Path:
    """The cache entry of `recipe`, trained now if missing or corrupt; returns its directory."""
    from models import evaluate
    from models.train import train
    root = cache_root()
    entry = root / cache_key(recipe)
    with _lock(root, entry.name):
        problem = "retraining asked for" if force else (verify(entry) if entry.exists() else None)
        if entry.exists() and problem is None:
            return entry
        if entry.exists():
            print(f"models: cache {entry} is not usable ({problem}): retraining", file=sys.stderr)
        print(f"models: training {recipe.name} on first use ({recipe.steps} steps on {device}; cached in {entry})",
              file=sys.stderr)
        model, meta = train(recipe, device=device, progress=progress)
        lm = LM(recipe.name, model, recipe.context, meta=meta)
        meta["heldout_bpb"] = evaluate.bits_per_byte(lm)
        meta["unigram_bpb"] = evaluate.unigram_bpb()
        meta["bigram_bpb"] = evaluate.bigram_bpb()
        tmp = root / f".{entry.name}.tmp{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        _quiet_transformers()
        model.save_pretrained(tmp)
        meta["weights_sha256"] = _sha256(tmp / WEIGHTS)
        (tmp / "meta.json").write_text(json.dumps(meta, indent=1))
        _plot_curve(meta, tmp / "loss_curve.png")
        shutil.rmtree(entry, ignore_errors=True)
        os.replace(tmp, entry)
        return entry


def _plot_curve(meta: dict, path: Path) -> None:
    """The training loss (bits per byte per step) with the held-out figure and the baselines."""
    import math

    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot([x / math.log(2) for x in meta["loss_curve"]], lw=0.8, label="training batch")
    for key, style in (("heldout_bpb", "-"), ("bigram_bpb", ":"), ("unigram_bpb", "--")):
        ax.axhline(meta[key], color="k", ls=style, lw=0.8, label=f"{key} {meta[key]:.3f}")
    ax.set_xlabel("step")
    ax.set_ylabel("bits per byte")
    ax.set_title(f"{meta['recipe']['name']}: {meta['n_params'] / 1e6:.2f}M parameters, "
                 f"{meta['train_seconds']:.0f} s")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def resolve(spec: str) -> Recipe | Path:
    """A recipe for a known name, or the checkpoint directory; ModelError (one line) otherwise."""
    if spec in RECIPES:
        return RECIPES[spec]
    p = Path(spec).expanduser()
    if p.is_dir():
        _check_checkpoint(p)
        return p
    raise ModelError(f"unknown model {spec!r}: choose from {', '.join(RECIPES)} or a checkpoint directory")


def load(spec: str = "tiny", device: str = "cpu", dtype: torch.dtype = torch.float32, attn: str = "sdpa",
         progress: bool = True) -> LM:
    """Load a model: a name in configs.RECIPES (trained on first use, cached) or a checkpoint directory."""
    target = resolve(spec)
    if isinstance(target, Recipe):
        entry = build(target, device=device, progress=progress)
        meta = json.loads((entry / "meta.json").read_text())
        return LM(target.name, _load_checkpoint(entry, device, dtype, attn), target.context, meta=meta,
                  path=entry)
    return _load_user(target, device, dtype, attn)


WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                "pytorch_model.bin.index.json")


def _check_checkpoint(path: Path):
    """The checkpoint's config if `path` holds a causal LM checkpoint (config + weights), else ModelError."""
    from transformers import AutoConfig, AutoModelForCausalLM
    if not (path / "config.json").is_file():
        raise ModelError(f"{path} is not a causal LM checkpoint: no config.json in it")
    try:
        cfg = AutoConfig.from_pretrained(path, local_files_only=True)
    except Exception as exc:
        raise ModelError(f"{path} is not a causal LM checkpoint: {_line(exc)}") from None
    if type(cfg) not in AutoModelForCausalLM._model_mapping:
        raise ModelError(f"{path} is not a causal LM checkpoint: {type(cfg).__name__} has no causal LM head")
    if not any((path / f).is_file() for f in WEIGHT_FILES):
        raise ModelError(f"{path} is not a causal LM checkpoint: no weights ({', '.join(WEIGHT_FILES)})")
    return cfg


def _load_user(path: Path, device: str, dtype: torch.dtype, attn: str) -> LM:
    from transformers import AutoTokenizer
    cfg = _check_checkpoint(path)
    try:
        model = _load_checkpoint(path, device, dtype, attn)
    except Exception as exc:
        raise ModelError(f"{path} is not a loadable causal LM checkpoint: {_line(exc)}") from None
    meta = {}
    if (path / "meta.json").is_file():
        try:
            meta = json.loads((path / "meta.json").read_text())
        except ValueError:
            meta = {}
    context = int(min(getattr(cfg, "max_position_embeddings", 512) or 512, 512))
    if cfg.vocab_size == 256:
        return LM(path.name, model, context, meta=meta, path=path)
    try:
        tok = AutoTokenizer.from_pretrained(path, local_files_only=True)
    except Exception as exc:
        raise ModelError(f"{path}: vocabulary of {cfg.vocab_size} is not byte-level and no tokenizer loads "
                         f"({_line(exc)})") from None
    return LM(path.name, model, context, byte_level=False, tokenizer=tok, meta=meta, path=path)


def _line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {lines[0] if lines else ''}"[:300]
