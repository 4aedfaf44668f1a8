"""Synthetic inputs shared by the benchmark scripts (speed does not depend on the text)."""
import torch


class ZipfStream:
    """Token windows with a Zipf-like frequency profile, as real text (a realistic spread of softmax targets);
    the `TokenStream.windows` interface."""

    def __init__(self, vocab: int):
        self.weights = 1.0 / torch.arange(1, vocab + 1, dtype=torch.float32)

    def windows(self, n, length, generator):
        return torch.multinomial(self.weights, n * length, replacement=True, generator=generator).view(n, length)
