"""One direction of a federated round: a compressor, with or without error feedback, over a stack of
updates, plus the size of the catch-up messages of partial participation."""

from __future__ import annotations

import numpy as np

from fedsim.compress.compressors import STC, Identity, Sign, TopK
from fedsim.kernels import golomb
from fedsim.params import ParamSpec


def sparse_vector_bits(positions: np.ndarray, size: int, value_bits: int = 32) -> int:
    """Encoded bits of a sparse vector sent as positions + values: a 32-bit count, the Golomb-Rice
    coded positions (parameter b* for density count / size) and ``value_bits`` per value."""
    return int(golomb.sparse_segment_bits(np.asarray(positions, np.int64), size, value_bits, 0))


class Channel:
    """Compress K updates at once, optionally with each sender's error-feedback residual.

    ``kind`` is ``identity``, ``topk``, ``stc`` or ``sign``; ``p`` the kept fraction of top-k and STC;
    ``settings`` any object with the federated config's compression fields (``compression_scope``,
    ``threshold``, ``sample_fraction``, ``sample_mode``).
    """

    def __init__(self, kind: str, p: float, spec: ParamSpec, settings):
        scope = settings.compression_scope
        if kind == "identity":
            self.compressor = Identity()
        elif kind == "topk":
            self.compressor = TopK(p, scope=scope)
        elif kind == "stc":
            self.compressor = STC(p, threshold=settings.threshold, sample_fraction=settings.sample_fraction,
                                  sample_mode=settings.sample_mode, scope=scope)
        elif kind == "sign":
            self.compressor = Sign(scope=scope)
        else:
            raise ValueError(f"compressor kind must be identity, topk, stc or sign, got {kind!r}")
        self.kind = kind
        self.layout = self.compressor.init(spec)

    def send(self, updates: np.ndarray, residuals: np.ndarray | None, rng: np.random.Generator):
        """``(sent (K, P), encoded bits (K,), analytic bits (K,), new residuals or None)``.

        With residuals (error feedback): a = x + r; sent = decompress(C(a)); r <- a - sent.
        """
        result = self.compressor.compress_batch(updates, self.layout, rng, residuals)
        return result.sent, result.encoded_bits, result.analytic_bits, result.residuals
