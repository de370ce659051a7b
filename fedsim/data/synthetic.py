"""Synthetic(alpha, beta): the natively non-IID federated data of FedProx (Li et al., arXiv 1812.06127).

Generative model, for every device k = 1..K (n_features d = 60, n_classes C = 10 by default)::

    u_k ~ N(0, alpha),  B_k ~ N(0, beta)                      device priors (scalars)
    W_k ~ N(u_k, 1)   (d x C),   b_k ~ N(u_k, 1)   (C)        the device's labelling model
    v_k ~ N(B_k, 1)   (d)                                     the device's feature mean
    x ~ N(v_k, Sigma),  Sigma = diag(j^(-1.2)), j = 1..d       every sample of device k
    y = argmax softmax(x W_k + b_k) = argmax (x W_k + b_k)

``alpha`` moves the labelling models apart, ``beta`` the feature distributions. The paper writes
N(0, alpha); its generator code draws ``normal(0, alpha)``, i.e. with **standard deviation** alpha. fedsim
follows the code by default (``prior_scale="std"``), which is what produced the published Synthetic
datasets; ``prior_scale="variance"`` reads the paper's N(0, alpha) as a variance (std sqrt(alpha)). For
alpha, beta in {0, 1} the two agree.

A property of this model worth knowing: W_k and b_k share the same mean u_k, so u_k adds
``u_k * (sum_j x_j + 1)`` to every class's logit alike and the argmax ignores it. Given the same standard
normal draws, alpha therefore changes W_k and b_k but not the labels (up to floating-point near-ties);
the label skew between devices comes from the per-device noise in W_k, b_k and from beta through v_k.

Samples per device follow a heavy-tailed law: the paper says "a power law", its code draws
``floor(lognormal(4, 2)) + 50`` (:class:`LognormalCounts`).

A population too large to hold (a million devices of ~450 samples: ~27 GB of float32 features) is generated
per device on demand (:class:`SyntheticPopulation`), each device from a stream of its own, so its data does
not depend on which other devices were generated, or in which order.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass, field

import numpy as np

from fedsim.constraints import Integer, OneOf, Optional, Real
from fedsim.data.dataset import Dataset
from fedsim.data.preprocess import float_dtype


@dataclass(frozen=True)
class LognormalCounts:
    """Samples per device: ``n_k = floor(exp(N(log_mean, log_sigma^2))) + minimum``, then the cap.

    The FedProx generator's law is the default (log_mean 4, log_sigma 2, minimum 50): median about
    105 samples, mean about 453, and a long tail (one device in a thousand draws more than 26,000).
    """

    log_mean: float = 4.0               # mean of the underlying normal (mu of the lognormal)
    log_sigma: float = 2.0              # standard deviation of the underlying normal (>= 0)
    minimum: int = 50                   # added to every draw, so every device has at least this many
    max_per_device: int | None = None   # explicit cap: n_k = min(n_k, max_per_device); None = no cap

    def __post_init__(self):
        Real().check("LognormalCounts: log_mean", self.log_mean)
        Real(low=0).check("LognormalCounts: log_sigma", self.log_sigma)
        Integer(low=1).check("LognormalCounts: minimum", self.minimum)
        Optional(Integer(low=self.minimum), "no cap").check("LognormalCounts: max_per_device", self.max_per_device)

    def draw(self, n_devices: int, rng: np.random.Generator) -> np.ndarray:
        """Sample counts of ``n_devices`` devices, an int64 array."""
        draws = rng.lognormal(self.log_mean, self.log_sigma, size=n_devices)
        # a float64 beyond 2^62 would overflow int64; such a count could never be generated anyway
        if not np.all(draws < 2.0 ** 62):
            raise ValueError(f"LognormalCounts: a device drew {draws.max():.3g} samples; lower log_mean or "
                             f"log_sigma, or set max_per_device")
        counts = np.floor(draws).astype(np.int64) + self.minimum
        if self.max_per_device is not None:
            counts = np.minimum(counts, self.max_per_device)
        return counts


def _sample_counts(samples, n_devices: int, rng: np.random.Generator) -> np.ndarray:
    if isinstance(samples, LognormalCounts):
        return samples.draw(n_devices, rng)
    if isinstance(samples, (int, np.integer)) and not isinstance(samples, bool):
        if samples < 1:
            raise ValueError(f"samples must be >= 1 per device, got {samples}")
        return np.full(n_devices, int(samples), dtype=np.int64)
    counts = np.asarray(samples)
    if counts.shape != (n_devices,) or not np.issubdtype(counts.dtype, np.integer) or counts.min() < 1:
        raise ValueError(f"samples must be a LognormalCounts law, an integer >= 1, or {n_devices} integers "
                         f">= 1 (one per device), got {samples!r}")
    return counts.astype(np.int64)


def _check_model(alpha, beta, n_devices, n_features, n_classes, test_fraction, prior_scale, extra) -> None:
    """The settings of :func:`make_synthetic` and :class:`SyntheticPopulation`; ``extra``: (name, value, low)."""
    for name, value in (("alpha", alpha), ("beta", beta)):
        Real(low=0).check(name, value)
    for name, value, low in (("n_devices", n_devices, 1), ("n_features", n_features, 1),
                             ("n_classes", n_classes, 2), *extra):
        Integer(low=low).check(name, value)
    Real(0, 1, high_open=True).check("test_fraction", test_fraction)
    OneOf("std", "variance").check("prior_scale", prior_scale)


def _device_samples(rng: np.random.Generator, model_mean: float, feature_prior: float, count: int,
                    n_features: int, n_classes: int, dtype) -> tuple[np.ndarray, np.ndarray]:
    """One device's ``count`` samples given its priors u_k and B_k; draws v_k, W_k, b_k, then the noise."""
    # Sigma_jj = j^(-1.2), j = 1..d; x = v_k + sqrt(Sigma) * standard normal
    feature_std = np.arange(1, n_features + 1, dtype=np.float64) ** -0.6
    feature_mean = feature_prior + rng.standard_normal(n_features)                    # v_k
    weights = model_mean + rng.standard_normal((n_features, n_classes))               # W_k
    bias = model_mean + rng.standard_normal(n_classes)                                # b_k
    noise = rng.standard_normal((count, n_features))
    x = (feature_mean + noise * feature_std).astype(dtype)                            # x ~ N(v_k, Sigma)
    y = np.argmax(x.astype(np.float64) @ weights + bias, axis=1)                      # argmax softmax
    return x, y


class TooManySamples(ValueError):
    """:func:`make_synthetic` was asked for more samples than it may hold."""

    def __init__(self, total: int, limit: int, message: str):
        super().__init__(message)
        self.total, self.limit = total, limit


#: Features of FedProx's Synthetic data (d = 60), unless a caller asks for others.
FEATURES = 60

#: The purpose key of a population's streams (a stable integer of the name, as fedsim.rng keys purposes).
POPULATION_KEY = zlib.crc32(b"synthetic-population")


@dataclass(frozen=True)
class SyntheticPopulation:
    """Synthetic(alpha, beta) on ``n_devices`` devices, each device's data generated when asked for.

    ``counts`` (n_devices,) are drawn at construction from ``SeedSequence([seed, POPULATION_KEY])``;
    :meth:`device` draws device k's u_k, B_k (in that order), then v_k, W_k, b_k and its samples from
    ``SeedSequence([seed, POPULATION_KEY, k])``, and splits them as :func:`make_synthetic` does.
    """

    alpha: float
    beta: float
    n_devices: int
    seed: int = 0
    n_features: int = FEATURES
    n_classes: int = 10
    test_fraction: float = 0.2
    dtype: str = "float32"
    samples: object = LognormalCounts()
    prior_scale: str = "std"
    counts: np.ndarray = field(init=False, repr=False, compare=False)
    train_counts: np.ndarray = field(init=False, repr=False, compare=False)   # (n_devices,) training samples

    def __post_init__(self):
        _check_model(self.alpha, self.beta, self.n_devices, self.n_features, self.n_classes, self.test_fraction,
                     self.prior_scale, [("seed", self.seed, 0)])
        rng = np.random.default_rng(np.random.SeedSequence([self.seed, POPULATION_KEY]))
        object.__setattr__(self, "counts", _sample_counts(self.samples, self.n_devices, rng))
        object.__setattr__(self, "train_counts",
                           self.counts - np.floor(self.test_fraction * self.counts).astype(np.int64))

    def device(self, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Device ``k``'s ``(x_train, y_train, x_test, y_test)``, the same whenever it is asked for."""
        Integer(0, self.n_devices - 1).check("device", k)
        rng = np.random.default_rng(np.random.SeedSequence([self.seed, POPULATION_KEY, int(k)]))
        scale = (self.alpha, self.beta) if self.prior_scale == "std" else (np.sqrt(self.alpha), np.sqrt(self.beta))
        model_mean = scale[0] * rng.standard_normal()              # u_k ~ N(0, alpha)
        feature_prior = scale[1] * rng.standard_normal()           # B_k ~ N(0, beta)
        x, y = _device_samples(rng, model_mean, feature_prior, int(self.counts[k]), self.n_features, self.n_classes,
                               np.dtype(self.dtype))
        n_train = int(self.train_counts[k])
        return x[:n_train], y[:n_train], x[n_train:], y[n_train:]

    def training_data(self, devices) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The training splits of ``devices``, concatenated in the order given: ``(x, y, offsets)``, device
        ``devices[i]``'s rows at ``offsets[i]:offsets[i + 1]``."""
        parts = [self.device(k) for k in devices]
        offsets = np.concatenate(([0], np.cumsum([len(part[1]) for part in parts]))).astype(np.int64)
        return self._joined(parts, 0), self._joined(parts, 1), offsets

    def evaluation_data(self, n_devices: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """``(x_train, y_train, x_test, y_test)`` of devices ``0 .. n_devices - 1`` (all, when there are fewer):
        every device is an independent draw of the generator, so the first ones are a uniform sample."""
        parts = [self.device(k) for k in range(min(int(n_devices), self.n_devices))]
        return tuple(self._joined(parts, column) for column in range(4))

    def _joined(self, parts: list, column: int) -> np.ndarray:
        """Entry ``column`` of each of the :meth:`device` tuples ``parts``, concatenated (also of no device):
        features (columns 0 and 2) or int64 labels (1 and 3)."""
        empty = np.zeros((0, self.n_features), self.dtype) if column in (0, 2) else np.zeros(0, np.int64)
        return np.concatenate([empty, *(part[column] for part in parts)])


def make_synthetic(alpha: float, beta: float, n_devices: int, rng: np.random.Generator,
                   n_features: int = FEATURES, n_classes: int = 10, test_fraction: float = 0.2,
                   dtype=np.float32, samples=LognormalCounts(), prior_scale: str = "std",
                   max_total_samples: int = 2_000_000) -> Dataset:
    """Generate Synthetic(alpha, beta) (the module docstring) on ``n_devices`` devices (FedProx used 30).

    ``rng`` is the only source of randomness; draw order: sample counts, u (K), B (K), then per device
    v_k, W_k, b_k and the samples' noise. Device k keeps its first ``n_k - floor(test_fraction * n_k)``
    samples for training and the rest for testing (i.i.d. samples: a uniformly random split). The model
    draws are float64; x is stored in ``dtype`` and labels are the argmax of the logits of x as stored.
    ``samples``: a law, one count for every device, or one per device. More than ``max_total_samples`` in
    all is refused (ValueError), not clipped: raise it, or cap with ``LognormalCounts(max_per_device=...)``.

    The splits are concatenated in device order; ``client_indices[k]`` are device k's training rows.
    """
    _check_model(alpha, beta, n_devices, n_features, n_classes, test_fraction, prior_scale,
                 [("max_total_samples", max_total_samples, 1)])
    dtype = float_dtype(dtype)
    if not isinstance(rng, np.random.Generator):
        raise ValueError(f"rng must be a numpy.random.Generator, got {type(rng).__name__}")

    counts = _sample_counts(samples, n_devices, rng)
    if counts.sum() > max_total_samples:
        raise TooManySamples(int(counts.sum()), max_total_samples,
                             f"Synthetic({alpha}, {beta}) would hold {counts.sum()} samples, more than "
                             f"max_total_samples = {max_total_samples}; raise max_total_samples or cap the "
                             f"devices with samples=LognormalCounts(max_per_device=...)")
    test_counts = np.floor(test_fraction * counts).astype(np.int64)
    train_counts = counts - test_counts
    train_offsets = np.concatenate(([0], np.cumsum(train_counts)))
    test_offsets = np.concatenate(([0], np.cumsum(test_counts)))

    alpha_std, beta_std = (alpha, beta) if prior_scale == "std" else (np.sqrt(alpha), np.sqrt(beta))
    model_means = alpha_std * rng.standard_normal(n_devices)     # u_k ~ N(0, alpha)
    feature_priors = beta_std * rng.standard_normal(n_devices)   # B_k ~ N(0, beta)

    x_train = np.empty((int(train_offsets[-1]), n_features), dtype=dtype)
    x_test = np.empty((int(test_offsets[-1]), n_features), dtype=dtype)
    y_train = np.empty(len(x_train), dtype=np.int64)
    y_test = np.empty(len(x_test), dtype=np.int64)
    for device in range(n_devices):
        x, y = _device_samples(rng, model_means[device], feature_priors[device], int(counts[device]),
                               n_features, n_classes, dtype)
        n_train = int(train_counts[device])
        x_train[train_offsets[device]:train_offsets[device + 1]] = x[:n_train]
        y_train[train_offsets[device]:train_offsets[device + 1]] = y[:n_train]
        x_test[test_offsets[device]:test_offsets[device + 1]] = x[n_train:]
        y_test[test_offsets[device]:test_offsets[device + 1]] = y[n_train:]

    client_indices = tuple(np.arange(train_offsets[k], train_offsets[k + 1], dtype=np.int64)
                           for k in range(n_devices))
    return _dataset(alpha, beta, n_classes, (x_train, y_train, x_test, y_test),
                    f"{n_devices} devices, {n_features} features, {n_classes} classes, priors read as {prior_scale}, "
                    f"samples per device {samples!r}, test_fraction {test_fraction:g}", client_indices=client_indices)


def population_dataset(population: SyntheticPopulation, eval_devices: int) -> Dataset:
    """A :class:`~fedsim.data.dataset.Dataset` of ``population``: its splits are the evaluation sample of
    :meth:`SyntheticPopulation.evaluation_data`; a run draws its participants' training data from
    ``dataset.population``."""
    shown = min(int(eval_devices), population.n_devices)
    return _dataset(population.alpha, population.beta, population.n_classes,
                    population.evaluation_data(eval_devices),
                    f"generated per device on demand: {population.n_devices} devices, {population.n_features} "
                    f"features, {population.n_classes} classes, {int(population.train_counts.sum())} training "
                    f"samples in all; evaluated on devices 0-{shown - 1}", population=population)


def _dataset(alpha: float, beta: float, n_classes: int, splits: tuple, how: str, **fields) -> Dataset:
    """The Dataset of Synthetic(alpha, beta) ``splits`` (x_train, y_train, x_test, y_test); ``how`` describes it."""
    x_train, y_train, x_test, y_test = splits
    return Dataset(name=f"synthetic({alpha:g},{beta:g})", x_train=x_train, y_train=y_train, x_test=x_test,
                   y_test=y_test, n_classes=int(n_classes),
                   description=f"FedProx Synthetic(alpha={alpha:g}, beta={beta:g}) (arXiv 1812.06127): {how}; "
                               f"{len(y_train)} train and {len(y_test)} test samples", **fields)
