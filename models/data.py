"""The data: English text that ships with Python (pydoc_data.topics), byte-level; digits from scikit-learn.

Text: the 79 help topics of `pydoc_data.topics`, concatenated in sorted key order and UTF-8 encoded
(466,117 bytes with Python 3.11). The held-out split is fixed: the bytes are cut into 1,024-byte blocks and a
permutation seeded with 0 sends every tenth block (10%, about 46,600 bytes) to the held-out set; the rest is
training text. Blocks keep their order inside each split.

Digits: scikit-learn's bundled `load_digits` (1,797 8x8 images, no download), 25% test split, stratified,
random_state=0.
"""
from __future__ import annotations

import hashlib
from functools import lru_cache

import numpy as np
import torch

BLOCK = 1024
HELDOUT_EVERY = 10
SPLIT_SEED = 0


@lru_cache(maxsize=1)
def corpus() -> bytes:
    from pydoc_data.topics import topics
    return "".join(topics[k] for k in sorted(topics)).encode("utf-8")


def corpus_digest() -> str:
    return hashlib.sha256(corpus()).hexdigest()[:16]


@lru_cache(maxsize=1)
def split() -> tuple[bytes, bytes]:
    """(train, heldout) bytes: fixed, seeded block split of the corpus (see module docstring)."""
    data = corpus()
    n = (len(data) + BLOCK - 1) // BLOCK
    perm = np.random.default_rng(SPLIT_SEED).permutation(n)
    held = set(perm[: n // HELDOUT_EVERY].tolist())
    train = b"".join(data[i * BLOCK:(i + 1) * BLOCK] for i in range(n) if i not in held)
    heldout = b"".join(data[i * BLOCK:(i + 1) * BLOCK] for i in range(n) if i in held)
    return train, heldout


def as_tensor(b: bytes) -> torch.Tensor:
    return torch.frombuffer(bytearray(b), dtype=torch.uint8).long()


def encode(text: str) -> torch.Tensor:
    return as_tensor(text.encode("utf-8"))


def decode(ids) -> str:
    return bytes(int(i) for i in ids).decode("utf-8", errors="replace")


@lru_cache(maxsize=1)
def digits() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(x_train, y_train, x_test, y_test): pixels scaled to [0, 1] as float32, labels int64."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split
    d = load_digits()
    xtr, xte, ytr, yte = train_test_split(d.data / 16.0, d.target, test_size=0.25, random_state=0,
                                          stratify=d.target)
    f = lambda a: torch.tensor(a, dtype=torch.float32)  # noqa: E731
    return f(xtr), torch.tensor(ytr), f(xte), torch.tensor(yte)
