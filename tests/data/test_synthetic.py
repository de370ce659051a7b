"""Synthetic(alpha, beta) of FedProx: shapes, the per-device partition, seeding, its statistics, and the
population generated per device on demand (SyntheticPopulation)."""

import numpy as np
import pytest

from fedsim.data.dataset import Dataset
from fedsim.data.synthetic import LognormalCounts, SyntheticPopulation, make_synthetic


def _make(alpha=1.0, beta=1.0, n_devices=30, seed=0, **kwargs):
    return make_synthetic(alpha, beta, n_devices, np.random.default_rng(seed), **kwargs)


def _label_skew(labels, client_indices, n_classes=10):
    """Mean total-variation distance between each device's label histogram and the pooled one."""
    pooled = np.bincount(labels, minlength=n_classes) / len(labels)
    return np.mean([0.5 * np.abs(np.bincount(labels[i], minlength=n_classes) / len(i) - pooled).sum()
                    for i in client_indices])


def test_shapes_dtypes_and_name():
    data = _make(0.5, 0.5, n_devices=12)
    assert isinstance(data, Dataset)
    assert data.name == "synthetic(0.5,0.5)"
    assert data.x_train.shape[1] == data.x_test.shape[1] == data.n_features == 60
    assert data.x_train.dtype == data.x_test.dtype == np.float32
    assert data.y_train.dtype == data.y_test.dtype == np.int64
    assert data.n_classes == 10
    assert data.y_train.min() >= 0 and data.y_train.max() < 10 and data.y_test.max() < 10
    assert _make(dtype=np.float64, n_devices=2).x_train.dtype == np.float64
    other = _make(n_devices=3, n_features=7, n_classes=3)
    assert other.x_train.shape[1] == 7 and other.y_train.max() <= 2


def test_client_indices_partition_the_train_set_and_test_fraction():
    data = _make(n_devices=25, seed=3)
    indices = data.client_indices
    assert len(indices) == 25
    np.testing.assert_array_equal(np.concatenate(indices), np.arange(len(data.y_train)))
    assert all(idx.dtype == np.int64 and len(idx) >= 1 for idx in indices)
    # the sample counts are the generator's first draw, so the same seed reproduces them
    counts = LognormalCounts().draw(25, np.random.default_rng(3))
    test_sizes = np.floor(0.2 * counts).astype(np.int64)
    np.testing.assert_array_equal([len(idx) for idx in indices], counts - test_sizes)
    assert len(data.y_test) == test_sizes.sum()


def test_explicit_sample_counts():
    data = _make(n_devices=3, samples=[10, 20, 30], test_fraction=0.5)
    assert [len(idx) for idx in data.client_indices] == [5, 10, 15]
    assert len(data.y_test) == 30
    data = _make(n_devices=4, samples=100, test_fraction=0.0)
    assert [len(idx) for idx in data.client_indices] == [100] * 4 and len(data.y_test) == 0


def test_sample_count_law():
    rng = np.random.default_rng(11)
    counts = LognormalCounts().draw(20000, rng)
    assert counts.dtype == np.int64 and counts.min() >= 50
    # floor(lognormal(4, 2)) + 50: median exp(4) + 50 ~ 104.6
    assert 95 < np.median(counts) < 115
    capped = LognormalCounts(max_per_device=400).draw(20000, np.random.default_rng(11))
    np.testing.assert_array_equal(capped, np.minimum(counts, 400))
    np.testing.assert_array_equal(LognormalCounts(log_sigma=0.0, minimum=1).draw(3, rng), [55, 55, 55])


def test_same_seed_identical_different_seed_different():
    a, b, c = _make(seed=5), _make(seed=5), _make(seed=6)
    for field in ("x_train", "y_train", "x_test", "y_test"):
        np.testing.assert_array_equal(getattr(a, field), getattr(b, field))
    assert all(np.array_equal(i, j) for i, j in zip(a.client_indices, b.client_indices))
    assert a.x_train.shape != c.x_train.shape or not np.array_equal(a.x_train, c.x_train)


def test_features_have_the_specified_covariance():
    # x = v_k + noise, noise_j ~ N(0, j^-1.2): the within-device variance of feature j is j^-1.2
    data = _make(1.0, 1.0, n_devices=10, seed=1, samples=2000, test_fraction=0.0, dtype=np.float64)
    within = np.concatenate([data.x_train[idx] - data.x_train[idx].mean(axis=0)
                             for idx in data.client_indices])
    variance = (within ** 2).sum(axis=0) / (len(within) - 10)
    expected = np.arange(1, 61) ** -1.2
    # 19,990 degrees of freedom: relative standard error sqrt(2 / 19990) = 0.01
    np.testing.assert_allclose(variance, expected, rtol=0.05)


def test_beta_spreads_the_device_feature_means():
    # mean over features of v_k ~ N(B_k, 1/60) with B_k ~ N(0, beta^2): device spread ~ sqrt(beta^2 + 1/60)
    def spread(beta):
        data = _make(0.0, beta, n_devices=40, seed=2, samples=200)
        return np.std([data.x_train[idx].mean() for idx in data.client_indices])
    assert spread(0.0) < 0.3
    assert 0.5 < spread(1.0) < 2.0
    assert spread(10.0) > 5.0


def test_devices_are_label_skewed_compared_with_an_iid_shuffle():
    # Every Synthetic(alpha, beta) is non-IID, even (0, 0): each device has its own W_k, b_k and v_k.
    for alpha, beta in [(0.0, 0.0), (1.0, 1.0)]:
        data = _make(alpha, beta, n_devices=30, seed=4, samples=500)
        shuffled = np.random.default_rng(0).permutation(data.y_train)
        skew, iid_skew = _label_skew(data.y_train, data.client_indices), _label_skew(shuffled, data.client_indices)
        assert skew > 0.4 and iid_skew < 0.15, (alpha, beta, skew, iid_skew)


def test_alpha_does_not_change_labels_for_the_same_draws():
    # W_k and b_k share the mean u_k, which shifts every logit alike: same draws, same argmax.
    zero = _make(0.0, 1.0, seed=8, dtype=np.float64)
    one = _make(1.0, 1.0, seed=8, dtype=np.float64)
    np.testing.assert_array_equal(zero.x_train, one.x_train)
    assert np.mean(zero.y_train == one.y_train) > 0.999


@pytest.mark.parametrize("generate", [
    lambda alpha, beta, scale: _make(alpha, beta, seed=9, n_devices=5, samples=60, prior_scale=scale).x_train,
    lambda alpha, beta, scale: SyntheticPopulation(alpha, beta, 5, seed=9, prior_scale=scale).training_data(
        range(5))[0]], ids=["make_synthetic", "population"])
def test_prior_scale_variance_reads_alpha_and_beta_as_variances(monkeypatch, generate):
    """std 0.5 and 0.25 are variances 0.25 and 0.0625: the same priors u_k, B_k, so the same data. alpha
    moves no label (the module docstring), so its u_k is watched where the samples are drawn."""
    from fedsim.data import synthetic
    drawn, draw = [], synthetic._device_samples

    def watched(rng, model_mean, feature_prior, *args):
        drawn.append((model_mean, feature_prior))
        return draw(rng, model_mean, feature_prior, *args)

    monkeypatch.setattr(synthetic, "_device_samples", watched)
    as_std = generate(0.5, 0.25, "std")
    priors_std, drawn[:] = list(drawn), []
    as_variance = generate(0.25, 0.0625, "variance")
    assert drawn == priors_std and all(u != 0 and b != 0 for u, b in drawn)
    np.testing.assert_allclose(as_std, as_variance, rtol=1e-6)


@pytest.mark.parametrize("call, message", [
    (lambda: _make(alpha=-1.0), "alpha must be a finite number >= 0"),
    (lambda: _make(beta=float("nan")), "beta must be a finite number >= 0"),
    (lambda: _make(n_devices=0), "n_devices must be an integer >= 1"),
    (lambda: _make(n_classes=1), "n_classes must be an integer >= 2"),
    (lambda: _make(n_features=0), "n_features must be an integer >= 1"),
    (lambda: _make(test_fraction=1.0), r"test_fraction must be a finite number in \[0, 1\)"),
    (lambda: _make(prior_scale="sd"), "prior_scale must be one of 'std', 'variance'"),
    (lambda: _make(dtype=np.int32), "dtype must be a floating-point dtype"),
    (lambda: _make(samples=0), "samples must be >= 1"),
    (lambda: _make(samples=[10, 20]), "samples must be a LognormalCounts law"),
    (lambda: _make(samples=100, max_total_samples=2999), "max_total_samples = 2999"),
    (lambda: LognormalCounts(max_per_device=10),
     r"^LognormalCounts: max_per_device must be an integer >= 50, or unset \(no cap\)"),
    (lambda: LognormalCounts(log_sigma=-1.0), "^LognormalCounts: log_sigma must be a finite number >= 0"),
    (lambda: LognormalCounts(log_mean=float("inf")), "^LognormalCounts: log_mean must be a finite number"),
    (lambda: LognormalCounts(minimum=0), "^LognormalCounts: minimum must be an integer >= 1"),
    (lambda: SyntheticPopulation(-1.0, 1.0, 10), "^alpha must be"),
    (lambda: SyntheticPopulation(1.0, 1.0, 10).device(10), "^device must be")])
def test_bad_settings_raise(call, message):
    with pytest.raises(ValueError, match=message):
        call()


# ------------------------------------------------------------------------------------- on demand


def test_a_device_is_the_same_whenever_and_in_whatever_population_it_is_asked_for():
    small = SyntheticPopulation(1.0, 1.0, 10, seed=3)
    first = small.device(7)
    for k in range(10):
        small.device(k)
    again = small.device(7)
    large = SyntheticPopulation(1.0, 1.0, 1_000_000, seed=3)        # counts: one small array
    for a, b, c in zip(first, again, large.device(7)):
        np.testing.assert_array_equal(a, b)
        np.testing.assert_array_equal(a, c)
    assert large.counts.shape == (1_000_000,) and large.counts.min() >= 50
    other_seed = SyntheticPopulation(1.0, 1.0, 10, seed=4).device(7)
    assert not np.array_equal(first[0][:1], other_seed[0][:1])


def test_a_device_splits_its_samples_and_labels_by_its_own_model():
    population = SyntheticPopulation(0.5, 0.5, 20, samples=LognormalCounts(max_per_device=200), test_fraction=0.25)
    seen = set()
    for k in range(20):
        x_train, y_train, x_test, y_test = population.device(k)
        n = population.counts[k]
        assert len(x_train) == population.train_counts[k] == n - int(np.floor(0.25 * n))
        assert len(x_train) + len(x_test) == n and x_train.shape[1] == 60 and x_train.dtype == np.float32
        labels = np.concatenate([y_train, y_test])
        assert labels.min() >= 0 and labels.max() < 10
        seen.update(labels.tolist())
    assert len(seen) > 2                             # each device's own W_k, b_k: labels differ across devices
