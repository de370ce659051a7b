"""Compressors of the federated (STC) family: identity, top-k, STC and sign.

Each is a frozen dataclass (its configuration, validated on construction) whose state is the segment
:class:`~fedsim.compress.base.Layout` (``init(spec_or_size)``); see :mod:`fedsim.compress.base` for the
interface, the messages and their wire formats, :mod:`fedsim.kernels.sparsify` for the exact definitions
(kept set, ties, mu), and :class:`~fedsim.compress.ErrorFeedback` for error accumulation.

Budgets: a segment of N entries keeps ``k = ceil(p N)`` entries (:func:`~fedsim.compress.base.ceil_product`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from fedsim.compress import bits as analytic
from fedsim.compress.base import (
    SCOPES,
    Compressor,
    DenseMessage,
    Layout,
    SignMessage,
    SparseMessage,
    TernaryMessage,
    ceil_product,
    check_update,
)
from fedsim.kernels import sparsify

THRESHOLDS = ("exact", "sampled")
SAMPLE_MODES = ("uniform", "window")
SIGN_SCALES = ("none", "mean")
# The sampled threshold keeps at least this many expected entries in its sample: n_s >= ceil(100 / p).
MIN_SAMPLED_ENTRIES = 100


def _check_fraction(name: str, value) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)) \
            or not (0 < value <= 1):
        raise ValueError(f"{name} must be a number in (0, 1], got {value!r}")
    return float(value)


def _check_choice(name: str, value, allowed) -> str:
    if value not in allowed:
        raise ValueError(f"{name} must be one of {allowed}, got {value!r}")
    return value


def _float_bits(dtype) -> int:
    return 8 * np.dtype(dtype).itemsize


def _segment_offsets_array(layout: Layout) -> np.ndarray:
    return np.asarray(layout.segment_offsets, np.int64)


def _check_finite(x: np.ndarray) -> None:
    if not sparsify.all_finite(x):
        raise ValueError(sparsify.NONFINITE_MESSAGE)


@dataclass(frozen=True)
class Identity(Compressor):
    """No compression: the message is the update itself (32 bits per entry, 64 in float64)."""

    scope: str = "tensor"   # irrelevant for a dense message; accepted for a uniform interface

    def __post_init__(self):
        _check_choice("scope", self.scope, SCOPES)

    def compress(self, x, state, rng=None):
        x = check_update(x, state)
        _check_finite(x)
        return DenseMessage(x.copy()), state

    def _compress_rows(self, updates, state, rng):
        _check_finite(updates)
        n_rows, size = updates.shape
        encoded = np.full(n_rows, _float_bits(updates.dtype) * size, np.int64)
        estimated = np.full(n_rows, analytic.dense_analytic_bits(size), np.float64)
        return updates.copy(), encoded, estimated


@dataclass(frozen=True)
class TopK(Compressor):
    """Top-k sparsification (as in DGC-style methods): the ``ceil(p N)`` largest-magnitude entries of each
    segment, values kept exactly; ties at the threshold go to the lowest indices; zeros are never sent.

    Message: :class:`~fedsim.compress.base.SparseMessage`.
    """

    p: float                # fraction of entries kept per segment, in (0, 1]
    scope: str = "tensor"   # "tensor": per parameter tensor (the reference); "global": whole vector

    def __post_init__(self):
        object.__setattr__(self, "p", _check_fraction("p", self.p))
        _check_choice("scope", self.scope, SCOPES)

    def budgets(self, state: Layout) -> np.ndarray:
        """k = ceil(p N) per segment."""
        return np.array([ceil_product(self.p, size) for size in state.sizes], np.int64)

    def compress(self, x, state, rng=None):
        x = check_update(x, state)
        positions, values = [], []
        for (start, stop), k in zip(state.segments(), self.budgets(state)):
            segment_positions = np.empty(min(k, stop - start), np.int64)
            segment_values = np.empty(min(k, stop - start), x.dtype)
            count = sparsify.top_k_sparsify(x[start:stop], k, segment_positions, segment_values)
            positions.append(segment_positions[:count] + start)
            values.append(segment_values[:count])
        return SparseMessage(state.segment_offsets, np.concatenate(positions), np.concatenate(values)), state

    def _compress_rows(self, updates, state, rng):
        n_rows = updates.shape[0]
        sent = np.zeros_like(updates)
        counts = np.zeros((n_rows, state.n_segments), np.int64)
        encoded = np.zeros(n_rows, np.int64)
        empty = np.zeros(0, np.int64)
        sparsify.sparse_compress_batch(updates, _segment_offsets_array(state), self.budgets(state), False,
                                       _float_bits(updates.dtype), False, empty, np.zeros(1, np.int64),
                                       empty, sent, counts, encoded)
        return sent, encoded, analytic.top_k_analytic_bits(counts, state.sizes)


@dataclass(frozen=True)
class STC(Compressor):
    """Sparse ternary compression (Sattler et al., arXiv 1903.02891).

    Per segment of N entries: k = ceil(p N); keep the kept set K of the k largest nonzero magnitudes
    (exactly min(k, nonzeros) entries; ties at the threshold to the lowest indices) and send
    ``mu * sign(x_i)`` there, mu = mean |x_i| over K (:func:`fedsim.kernels.sparsify.ternarize`).

    With ``threshold="sampled"`` the threshold and mu are estimated from a sample of
    ``n_s = min(max(ceil(N f), ceil(100 / p)), N)`` entries with ``k_s = ceil(n_s p)``, and every entry
    with ``|x_i| >= threshold`` is sent (falling back to the exact computation when that threshold is 0 or
    equals max |x_i|; :func:`fedsim.kernels.sparsify.sampled_ternarize`). The sample is drawn from the
    Generator passed to ``compress``: ``"uniform"`` (the default, a uniform subset without replacement:
    an unbiased estimate of the quantile) or ``"window"`` (the reference's contiguous window at a uniform
    random offset, biased when magnitudes vary along the tensor).

    Message: :class:`~fedsim.compress.base.TernaryMessage`.
    """

    p: float                        # fraction of entries kept per segment, in (0, 1]
    threshold: str = "exact"        # "exact" or "sampled"
    sample_fraction: float = 0.01   # f in (0, 1]: sample share of each segment (sampled threshold only)
    sample_mode: str = "uniform"    # "uniform" subset without replacement, or the reference's "window"
    scope: str = "tensor"           # "tensor": per parameter tensor (the reference); "global": whole vector

    def __post_init__(self):
        object.__setattr__(self, "p", _check_fraction("p", self.p))
        _check_choice("threshold", self.threshold, THRESHOLDS)
        object.__setattr__(self, "sample_fraction", _check_fraction("sample_fraction", self.sample_fraction))
        _check_choice("sample_mode", self.sample_mode, SAMPLE_MODES)
        _check_choice("scope", self.scope, SCOPES)

    def budgets(self, state: Layout) -> np.ndarray:
        """k = ceil(p N) per segment."""
        return np.array([ceil_product(self.p, size) for size in state.sizes], np.int64)

    def sample_sizes(self, state: Layout) -> np.ndarray:
        """n_s = min(max(ceil(N f), ceil(100 / p)), N) per segment."""
        floor_size = ceil_product(MIN_SAMPLED_ENTRIES / self.p, 1)
        return np.array([min(max(ceil_product(self.sample_fraction, size), floor_size), size)
                         for size in state.sizes], np.int64)

    def sample_budgets(self, state: Layout) -> np.ndarray:
        """k_s = ceil(n_s p) per segment."""
        return np.array([ceil_product(self.p, n) for n in self.sample_sizes(state)], np.int64)

    def draw_sample(self, size: int, sample_size: int, rng: np.random.Generator) -> np.ndarray:
        """Sample positions within a segment of ``size`` entries (int64; nothing drawn if empty)."""
        if sample_size == 0:
            return np.zeros(0, np.int64)
        if self.sample_mode == "uniform":
            return rng.choice(size, size=sample_size, replace=False, shuffle=False).astype(np.int64)
        offset = int(rng.integers(0, size - sample_size + 1))
        return np.arange(offset, offset + sample_size, dtype=np.int64)

    def _check_rng(self, rng):
        if self.threshold == "sampled" and not isinstance(rng, np.random.Generator):
            raise ValueError("STC with threshold='sampled' needs a numpy.random.Generator (rng), "
                             f"got {type(rng).__name__}")

    def compress(self, x, state, rng=None):
        x = check_update(x, state)
        self._check_rng(rng)
        budgets = self.budgets(state)
        sample_sizes = self.sample_sizes(state)
        sample_budgets = self.sample_budgets(state)
        positions, signs, mu = [], [], np.zeros(state.n_segments, x.dtype)
        for j, (start, stop) in enumerate(state.segments()):
            segment = x[start:stop]
            if self.threshold == "exact":
                length = min(budgets[j], stop - start)
                segment_positions = np.empty(length, np.int64)
                segment_signs = np.empty(length, np.int8)
                count, mu[j] = sparsify.ternarize(segment, budgets[j], segment_positions, segment_signs)
            else:
                sample = self.draw_sample(stop - start, sample_sizes[j], rng)
                segment_positions = np.empty(stop - start, np.int64)
                segment_signs = np.empty(stop - start, np.int8)
                count, mu[j], _ = sparsify.sampled_ternarize(segment, sample, sample_budgets[j], budgets[j],
                                                             segment_positions, segment_signs)
            positions.append(segment_positions[:count] + start)
            signs.append(segment_signs[:count])
        message = TernaryMessage(state.segment_offsets, np.concatenate(positions), np.concatenate(signs), mu)
        return message, state

    def _compress_rows(self, updates, state, rng):
        self._check_rng(rng)
        n_rows = updates.shape[0]
        sent = np.zeros_like(updates)
        counts = np.zeros((n_rows, state.n_segments), np.int64)
        encoded = np.zeros(n_rows, np.int64)
        sampled = self.threshold == "sampled"
        if sampled:
            sample_sizes = self.sample_sizes(state)
            samples = [self.draw_sample(stop - start, sample_sizes[j], rng)
                       for _ in range(n_rows) for j, (start, stop) in enumerate(state.segments())]
            sample_starts = np.concatenate(([0], np.cumsum([s.size for s in samples]))).astype(np.int64)
            sample_positions = np.concatenate(samples).astype(np.int64)
        else:
            sample_positions = np.zeros(0, np.int64)
            sample_starts = np.zeros(1, np.int64)
        sparsify.sparse_compress_batch(updates, _segment_offsets_array(state), self.budgets(state), True,
                                       _float_bits(updates.dtype), sampled, sample_positions, sample_starts,
                                       self.sample_budgets(state), sent, counts, encoded)
        return sent, encoded, analytic.stc_analytic_bits(counts, state.sizes)


@dataclass(frozen=True)
class Sign(Compressor):
    """signSGD's compressor (Bernstein et al., arXiv 1802.04434): sign(x_i) in {-1, 0, +1}.

    ``scale="none"``: the message is the signs alone (the signSGD method scales by the server's learning
    rate). ``scale="mean"``: each segment's signs are multiplied by its mean magnitude, which is sent too
    (32 bits, analytically). Zero entries are sent exactly (see the sign format in
    :mod:`fedsim.compress.base`).

    Message: :class:`~fedsim.compress.base.SignMessage`.
    """

    scale: str = "none"     # "none" or "mean" (mean |x_i| per segment)
    scope: str = "tensor"   # segments the scales (and the zero codes) refer to

    def __post_init__(self):
        _check_choice("scale", self.scale, SIGN_SCALES)
        _check_choice("scope", self.scope, SCOPES)

    def compress(self, x, state, rng=None):
        x = check_update(x, state)
        signs = np.empty(state.size, np.int8)
        scales = np.ones(state.n_segments, x.dtype)
        for j, (start, stop) in enumerate(state.segments()):
            sparsify.sign(x[start:stop], signs[start:stop])
            if self.scale == "mean":
                scales[j] = sparsify.mean_magnitude(x[start:stop])
        return SignMessage(state.segment_offsets, signs, scales, self.scale == "mean"), state

    def _compress_rows(self, updates, state, rng):
        n_rows = updates.shape[0]
        sent = np.empty_like(updates)
        scales = np.empty((n_rows, state.n_segments), updates.dtype)
        encoded = np.zeros(n_rows, np.int64)
        scaled = self.scale == "mean"
        sparsify.sign_compress_batch(updates, _segment_offsets_array(state), scaled,
                                     _float_bits(updates.dtype), sent, scales, encoded)
        estimated = np.full(n_rows, analytic.sign_analytic_bits(state.size, state.n_segments if scaled else 0))
        return sent, encoded, estimated


COMPRESSORS = {"none": Identity, "identity": Identity, "topk": TopK, "stc": STC, "sign": Sign}


def make_compressor(name: str, **options) -> Compressor:
    """A compressor by name: "none" / "identity", "topk", "stc" or "sign", with its options."""
    if name not in COMPRESSORS:
        raise ValueError(f"compressor must be one of {tuple(COMPRESSORS)}, got {name!r}")
    return COMPRESSORS[name](**options)
