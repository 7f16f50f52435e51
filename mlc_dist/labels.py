"""LabelSpace: label names <-> indices and multi-hot encoding; saved with the model.

Owns the label vocabulary only; reading label columns from files is data/labels.py's job.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True)
class LabelSpace:
    names: tuple[str, ...]
    # Per-label category names for labels with more than two values; absent means binary.
    categories: dict[str, tuple[str, ...]] = field(default_factory=dict)

    def __post_init__(self):
        if not self.names:
            raise ValueError("a label space needs at least one label")
        dupes = sorted({n for n in self.names if self.names.count(n) > 1})
        if dupes:
            raise ValueError(f"duplicate label names: {dupes}")

    @classmethod
    def from_names(cls, names: Iterable[str]) -> "LabelSpace":
        return cls(tuple(str(n) for n in names))

    @classmethod
    def from_file(cls, path: str) -> "LabelSpace":
        """One label name per line (GoEmotions `labels.txt`); ids are 0-based line numbers, so a
        blank line before the last name is an error (skipping it would shift every later id).
        Final blank lines and a UTF-8 byte-order mark are fine. ValueError names the file."""
        import pyarrow.fs as pafs

        fs, p = pafs.FileSystem.from_uri(path) if "://" in path else (pafs.LocalFileSystem(), path)
        with fs.open_input_stream(p) as f:
            lines = [line.strip() for line in f.read().decode("utf-8-sig").splitlines()]
        while lines and not lines[-1]:
            lines.pop()
        if "" in lines:
            raise ValueError(f"{path}: line {lines.index('') + 1} is blank; label ids are line "
                             "numbers, so remove it or name the label")
        try:
            return cls.from_names(lines)
        except ValueError as exc:
            raise ValueError(f"{path}: {exc}") from None

    def __len__(self) -> int:
        return len(self.names)

    def index(self, name: str) -> int:
        return self._index[name]

    @property
    def _index(self) -> dict[str, int]:
        # Built lazily and cached on the frozen instance.
        cached = self.__dict__.get("_index_cache")
        if cached is None:
            cached = {n: i for i, n in enumerate(self.names)}
            object.__setattr__(self, "_index_cache", cached)
        return cached

    def resolve(self, value: str | int) -> int:
        """A label given as a name or as a 0-based id; KeyError if it is neither."""
        if isinstance(value, (int, np.integer)):
            if 0 <= int(value) < len(self.names):
                return int(value)
            raise KeyError(value)
        text = str(value).strip()
        if text in self._index:
            return self._index[text]
        if text.lstrip("-").isdigit() and 0 <= int(text) < len(self.names):
            return int(text)
        raise KeyError(value)

    def multi_hot(self, labels: Sequence[str | int]) -> np.ndarray:
        out = np.zeros(len(self.names), dtype=np.float32)
        for value in labels:
            out[self.resolve(value)] = 1.0
        return out

    def decode(self, row: Sequence[float], threshold: float | Sequence[float] = 0.5) -> list[str]:
        thresholds = np.broadcast_to(np.asarray(threshold, dtype=np.float64), (len(self.names),))
        return [n for n, v, t in zip(self.names, row, thresholds) if v >= t]

    def to_dict(self) -> dict:
        return {"names": list(self.names),
                "categories": {k: list(v) for k, v in self.categories.items()}}

    @classmethod
    def from_dict(cls, d: dict) -> "LabelSpace":
        return cls(tuple(d["names"]), {k: tuple(v) for k, v in d.get("categories", {}).items()})
