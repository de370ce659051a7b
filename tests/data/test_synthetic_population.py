"""Synthetic(alpha, beta) generated per device on demand (SyntheticPopulation)."""

import numpy as np
import pytest

from fedsim.data.synthetic import LognormalCounts, SyntheticPopulation


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


def test_bad_population_settings_are_one_line():
    with pytest.raises(ValueError, match=r"^alpha must be"):
        SyntheticPopulation(-1.0, 1.0, 10)
    with pytest.raises(ValueError, match=r"^device must be"):
        SyntheticPopulation(1.0, 1.0, 10).device(10)
