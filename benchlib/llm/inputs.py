"""Synthetic requests: seeded random token ids and prompt lengths from a fixed, uniform or normal law.

Every backend gets the same prompts for the same ``(seed, index)``; EOS is ignored everywhere, so a
request always produces exactly ``output_len`` tokens. Token ids are drawn from [1, vocab), leaving
id 0 for padding.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

Distribution = Literal["fixed", "uniform", "normal"]


@dataclass(frozen=True)
class Batch:
    """The prompts of one generation (one per request) and the number of tokens each must produce."""

    prompts: tuple[np.ndarray, ...]
    output_len: int

    @property
    def lengths(self) -> np.ndarray:
        return np.array([len(prompt) for prompt in self.prompts], dtype=np.int64)

    def padded(self, left: bool = False, pad_id: int = 0) -> tuple[np.ndarray, np.ndarray]:
        """Token ids ``[batch, longest]`` padded on the right (or left) and the 0/1 attention mask."""
        longest = int(self.lengths.max())
        tokens = np.full((len(self.prompts), longest), pad_id, dtype=np.int64)
        mask = np.zeros_like(tokens)
        for row, prompt in enumerate(self.prompts):
            span = slice(longest - len(prompt), longest) if left else slice(0, len(prompt))
            tokens[row, span] = prompt
            mask[row, span] = 1
        return tokens, mask


@dataclass(frozen=True)
class InputSpec:
    """How to draw requests: batch size, prompt length law, output length, vocabulary, seed.

    ``uniform`` draws lengths in [L(1 - s), L(1 + s)]; ``normal`` draws N(L, (sL)^2), rounded and
    clipped to [L(1 - 3s), L(1 + 3s)]; both never below 1. L is ``input_len``, s ``spread``.
    """

    batch: int
    input_len: int
    output_len: int
    vocab: int
    distribution: Distribution = "fixed"
    spread: float = 0.25
    seed: int = 42

    def length_bounds(self) -> tuple[int, int]:
        if self.distribution == "fixed":
            return self.input_len, self.input_len
        width = self.spread * (3.0 if self.distribution == "normal" else 1.0)
        low = max(1, int(np.ceil(self.input_len * (1.0 - width))))
        high = max(low, int(np.floor(self.input_len * (1.0 + width))))
        return low, high

    @property
    def max_input_len(self) -> int:
        return self.length_bounds()[1]

    def lengths(self, rng: np.random.Generator) -> np.ndarray:
        low, high = self.length_bounds()
        if self.distribution == "uniform":
            return rng.integers(low, high + 1, size=self.batch)
        if self.distribution == "normal":
            drawn = np.rint(rng.normal(self.input_len, self.spread * self.input_len, size=self.batch))
            return np.clip(drawn, low, high).astype(np.int64)
        return np.full(self.batch, self.input_len, dtype=np.int64)

    def batch_at(self, index: int) -> Batch:
        """The ``index``-th generation's prompts; the same for every backend and every run."""
        rng = np.random.default_rng([self.seed, index])
        prompts = tuple(rng.integers(1, self.vocab, size=int(n), dtype=np.int64) for n in self.lengths(rng))
        return Batch(prompts, self.output_len)
