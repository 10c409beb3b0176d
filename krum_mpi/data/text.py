"""A text file as character windows, for the character-level language model (``char-transformer``).

``data.name = "text"``, ``data.path = FILE`` (UTF-8), ``data.context = T``. The vocabulary is the
sorted set of characters of the whole file (``n_classes`` = its size). The last ``test_fraction``
of the file is held out (a contiguous tail, since windows overlap). Training sample i is the window
starting at character i: X = the T token ids text[i : i+T] (as float32, exact below 2^24), y = the
id of text[i+T], the character that follows. The model predicts every next character of the window:
targets text[i+1 : i+T] from X itself and y for the last position; accuracy is next-character
accuracy at the end of each window. Test samples are non-overlapping windows of the held-out tail.
"""
from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np

from ..errors import DataError
from .base import Dataset
from .paths import require_file, resolve

MAX_VOCABULARY = 4096


class TextDataset(Dataset):
    def __init__(self, path: Path, cfg, seed: int):
        super().__init__(split=cfg.split, alpha=cfg.alpha, gamma=cfg.gamma, seed=seed)
        raw = path.read_bytes()
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise DataError(f"{path}: not UTF-8 text (byte {exc.start}): give a UTF-8 text file") from None
        self.vocabulary = sorted(set(text))
        if len(self.vocabulary) > MAX_VOCABULARY:
            raise DataError(f"{path}: {len(self.vocabulary)} distinct characters (at most {MAX_VOCABULARY})")
        lookup = {c: i for i, c in enumerate(self.vocabulary)}
        tokens = np.fromiter((lookup[c] for c in text), dtype=np.int32, count=len(text))
        T = int(cfg.context)
        n_test_chars = int(round(len(tokens) * cfg.test_fraction))
        self.train_tokens, self.test_tokens = tokens[:len(tokens) - n_test_chars], tokens[len(tokens) - n_test_chars:]
        self.context = T
        self.name = f"text:{path.name}"
        self.n_features = T
        self.n_classes = max(len(self.vocabulary), 2)
        self.n_train = len(self.train_tokens) - T
        if cfg.max_train > 0:
            self.n_train = min(self.n_train, int(cfg.max_train))
        self.n_test = max(len(self.test_tokens) - 1, 0) // T
        if self.n_train < 1 or self.n_test < 1:
            raise DataError(f"{path}: {len(tokens)} characters leave no training or no test window of "
                            f"data.context = {T} (test_fraction {cfg.test_fraction}): use a longer file "
                            "or a shorter context")
        self.provenance = {"source": "text file", "file": str(path), "sha256": hashlib.sha256(raw).hexdigest(),
                           "characters": len(tokens), "vocabulary": len(self.vocabulary), "context": T,
                           "test_split": f"the last {n_test_chars} characters"}

    def _windows(self, tokens, starts):
        starts = np.asarray(starts, dtype=np.int64)
        idx = starts[:, None] + np.arange(self.context + 1)
        w = tokens[idx]
        return np.ascontiguousarray(w[:, :-1], dtype=np.float32), w[:, -1].astype(np.int64)

    def read_train(self, indices):
        return self._windows(self.train_tokens, indices)

    def train_labels(self):
        return self.train_tokens[self.context:self.context + self.n_train].astype(np.int64)

    def test_set(self):
        return self._windows(self.test_tokens, np.arange(self.n_test) * self.context)


def load(cfg, seed: int) -> TextDataset:
    if not cfg.path:
        raise DataError("data.name = 'text' needs data.path = a UTF-8 text file")
    path = resolve(cfg.path, "")
    require_file(path, "text file", "check data.path")
    return TextDataset(path, cfg, seed)
