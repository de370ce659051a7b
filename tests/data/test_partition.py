"""Partitioners: hand-checked cases, invariants as property tests, validation messages, reports."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedsim.data.partition import (METHOD_SETTINGS, class_counts, classes_per_client, contiguous, dirichlet,
                                   iid, partition_report, shards, split_indices, stc_client_sizes)

PROPERTY = settings(max_examples=40, deadline=None)


def _labels(n_samples, n_classes, seed):
    """Labels with every class present (when n_samples >= n_classes), in shuffled order."""
    rng = np.random.default_rng(seed)
    labels = np.concatenate([np.arange(n_classes), rng.integers(0, n_classes, max(0, n_samples - n_classes))])
    return rng.permutation(labels[:n_samples])


def _same(parts_a, parts_b):
    return len(parts_a) == len(parts_b) and all(np.array_equal(a, b) for a, b in zip(parts_a, parts_b))


def _checked_split(split, seed, n_samples, n_clients, every_sample=True):
    """``split(rng)``, checked for what every partitioner promises: ``n_clients`` 1-D int64 arrays, no index
    twice, all in [0, n_samples) (and every sample, with ``every_sample``), the same split from the same seed."""
    parts = split(np.random.default_rng(seed))
    assert len(parts) == n_clients and all(part.dtype == np.int64 and part.ndim == 1 for part in parts)
    joined = np.concatenate(parts)
    assert len(np.unique(joined)) == len(joined), "an index is used twice"
    assert joined.min() >= 0 and joined.max() < n_samples
    assert len(joined) == n_samples or not every_sample, "a sample went to no client"
    assert _same(parts, split(np.random.default_rng(seed)))
    return parts


# ------------------------------------------------------------------------------------- classes_per_client

def test_stc_client_sizes_geometric_formula():
    sizes = stc_client_sizes(1000, 3, 0.5)
    geometric = np.array([1.0, 0.5, 0.25]) / 1.75
    expected = np.floor((0.1 / 3 + 0.9 * geometric) * 1000).astype(np.int64)[::-1]
    np.testing.assert_array_equal(sizes, expected)
    assert sizes[0] < sizes[1] < sizes[2] and sizes.sum() <= 1000
    np.testing.assert_array_equal(stc_client_sizes(1003, 4, 1.0), [250] * 4)


def _class_run(labels, part):
    """The classes of a client's indices in the order taken, as (class, count) runs."""
    taken = labels[part]
    change = np.flatnonzero(np.diff(taken)) + 1
    starts = np.concatenate(([0], change))
    return [(int(taken[s]), int(n)) for s, n in zip(starts, np.diff(np.append(starts, len(taken))))]


def test_classes_per_client_balanced_two_classes_each():
    labels = np.repeat(np.arange(10), 100)   # 1,000 samples, 100 per class
    parts = _checked_split(lambda rng: classes_per_client(labels, 10, 2, 1.0, rng), 0, 1000, 10)
    counts = class_counts(labels, parts, 10)
    assert (counts.sum(axis=1) == 100).all()
    assert (counts.sum(axis=0) == 100).all()       # N = 10 * (N // 10): every sample used
    assert set(np.unique(counts)) <= {0, 50, 100}   # quota 50 = 100 // 2 per visit
    # the first client meets no exhausted class: two consecutive classes, 50 each
    (first_class, first_count), (second_class, second_count) = _class_run(labels, parts[0])
    assert second_class == (first_class + 1) % 10 and first_count == second_count == 50


def test_classes_per_client_takes_consecutive_classes_from_a_random_start():
    labels = np.repeat(np.arange(4), 6)   # 24 samples, 6 per class
    parts = classes_per_client(labels, 1, 2, 1.0, np.random.default_rng(3))
    # one client of budget 24, quota 12: it takes min(12, 6) from its start class, then moves on, and
    # sweeps all classes: 6 per class
    np.testing.assert_array_equal(class_counts(labels, parts, 4), [[6, 6, 6, 6]])
    labels = np.repeat(np.arange(5), 10)  # 50 samples
    part, = classes_per_client(labels, 1, 5, 1.0, np.random.default_rng(7))  # budget 50, quota 10
    start = labels[part[0]]
    # class order is start, start + 1, ... mod 5, in blocks of 10
    assert _class_run(labels, part) == [((start + i) % 5, 10) for i in range(5)]
    starts = {int(labels[classes_per_client(labels, 1, 5, 1.0, np.random.default_rng(s))[0][0]])
              for s in range(40)}
    assert starts == set(range(5))   # the start class is random


def test_classes_per_client_remainder_spills_into_one_more_class():
    labels = np.repeat(np.arange(10), 50)
    parts = classes_per_client(labels, 10, 3, 1.0, np.random.default_rng(1))   # size 50, quota 16
    # 3 * 16 = 48 < 50: the first client's last 2 samples come from a fourth class
    runs = _class_run(labels, parts[0])
    assert [n for _, n in runs] == [16, 16, 16, 2]
    assert [c for c, _ in runs] == [(runs[0][0] + i) % 10 for i in range(4)]
    present = (class_counts(labels, parts, 10) > 0).sum(axis=1)
    report = partition_report(labels, parts, 10, classes_per_client=3)
    over = np.flatnonzero(present > 3).tolist()
    assert over and f"{len(over)} clients hold more than classes_per_client = 3 classes: {over}" in report


@PROPERTY
@given(n_samples=st.integers(1, 400), n_classes=st.integers(1, 12), seed=st.integers(0, 2**32 - 1),
       data=st.data())
def test_classes_per_client_balanced_properties(n_samples, n_classes, seed, data):
    labels = _labels(n_samples, n_classes, seed)
    n_observed = int(labels.max()) + 1
    n_clients = data.draw(st.integers(1, n_samples))
    per_client = data.draw(st.integers(1, n_observed))
    parts = _checked_split(lambda rng: classes_per_client(labels, n_clients, per_client, 1.0, rng), seed, n_samples,
                           n_clients, every_sample=False)
    assert all(len(part) == n_samples // n_clients for part in parts)


@PROPERTY
@given(n_samples=st.integers(100, 2000), n_classes=st.integers(2, 10), seed=st.integers(0, 2**32 - 1),
       balancedness=st.floats(0.05, 1.0), data=st.data())
def test_classes_per_client_unbalanced_properties(n_samples, n_classes, seed, balancedness, data):
    labels = _labels(n_samples, n_classes, seed)
    n_clients = data.draw(st.integers(1, n_samples // 10))   # 0.1 N / n >= 1: nobody empty
    per_client = data.draw(st.integers(1, n_classes))
    parts = _checked_split(lambda rng: classes_per_client(labels, n_clients, per_client, balancedness, rng), seed,
                           n_samples, n_clients, every_sample=False)
    np.testing.assert_array_equal([len(p) for p in parts], stc_client_sizes(n_samples, n_clients, balancedness))


# ------------------------------------------------------------------------------------- dirichlet

@PROPERTY
@given(n_samples=st.integers(50, 1500), n_classes=st.integers(1, 10), alpha=st.floats(0.05, 100.0),
       seed=st.integers(0, 2**32 - 1), data=st.data())
def test_dirichlet_properties(n_samples, n_classes, alpha, seed, data):
    labels = _labels(n_samples, n_classes, seed)
    n_clients = data.draw(st.integers(1, 30))
    parts = _checked_split(lambda rng: dirichlet(labels, n_clients, alpha, rng, min_size=0), seed, n_samples, n_clients)
    assert all(np.all(np.diff(part) > 0) for part in parts)   # each client's indices sorted


def test_dirichlet_min_size_and_alpha_controls_skew():
    parts = dirichlet(_labels(2000, 10, 1), 20, 0.3, np.random.default_rng(0), min_size=20)
    assert min(len(p) for p in parts) >= 20
    labels = _labels(5000, 10, 2)
    def mean_classes_present(alpha):
        parts = dirichlet(labels, 20, alpha, np.random.default_rng(3), min_size=0)
        counts = class_counts(labels, parts, 10)
        # share of a client's data in its largest class
        return np.mean(counts.max(axis=1) / np.maximum(counts.sum(axis=1), 1))
    assert mean_classes_present(0.05) > 0.7   # nearly one class per client
    assert mean_classes_present(1000.0) < 0.2  # nearly uniform: about 0.1 per class


# ------------------------------------------------------------------------------------- shards

def test_shards_two_classes_each_on_sorted_blocks():
    labels = np.repeat(np.arange(10), 30)[np.random.default_rng(0).permutation(300)]
    parts = shards(labels, 15, np.random.default_rng(1))   # 30 shards of 10, one class each
    counts = class_counts(labels, parts, 10)
    assert (counts.sum(axis=1) == 20).all()
    assert ((counts > 0).sum(axis=1) <= 2).all()
    assert set(np.unique(counts)) <= {0, 10, 20}


@PROPERTY
@given(n_samples=st.integers(1, 500), n_classes=st.integers(1, 10), seed=st.integers(0, 2**32 - 1),
       data=st.data())
def test_shards_properties(n_samples, n_classes, seed, data):
    labels = _labels(n_samples, n_classes, seed)
    per_client = data.draw(st.integers(1, min(4, n_samples)))
    n_clients = data.draw(st.integers(1, n_samples // per_client))
    _checked_split(lambda rng: shards(labels, n_clients, rng, shards_per_client=per_client), seed, n_samples, n_clients)
    bounds = (np.arange(n_clients * per_client + 1) * n_samples) // (n_clients * per_client)
    shard_sizes = set(np.diff(bounds).tolist())
    assert max(shard_sizes) - min(shard_sizes) <= 1 and min(shard_sizes) >= 1


# ------------------------------------------------------------------------------------- iid and contiguous

@PROPERTY
@given(n_samples=st.integers(1, 3000), seed=st.integers(0, 2**32 - 1), data=st.data())
def test_iid_properties(n_samples, seed, data):
    n_clients = data.draw(st.integers(1, n_samples))
    parts = _checked_split(lambda rng: iid(n_samples, n_clients, rng), seed, n_samples, n_clients)
    sizes = [len(p) for p in parts]
    assert max(sizes) - min(sizes) <= 1


@PROPERTY
@given(n_samples=st.integers(1, 100_000), data=st.data())
def test_contiguous_exact_blocks(n_samples, data):
    n_clients = data.draw(st.integers(1, min(n_samples, 500)))
    parts = contiguous(n_samples, n_clients)
    for m, part in enumerate(parts):
        np.testing.assert_array_equal(part, np.arange(m * n_samples // n_clients, (m + 1) * n_samples // n_clients))
    assert sum(len(p) for p in parts) == n_samples


def test_contiguous_laq_reference_shards():
    parts = contiguous(60000, 10)
    assert [(p[0], p[-1]) for p in parts[:2]] == [(0, 5999), (6000, 11999)]


# ------------------------------------------------------------------------------------- dispatcher, reports

def test_partition_dispatches_to_each_method():
    labels = _labels(600, 10, 4)
    cases = {   # method: (its settings, the same split by the partitioner itself)
        "classes_per_client": ({"classes_per_client": 2, "balancedness": 0.8},
                               lambda rng: classes_per_client(labels, 6, 2, 0.8, rng)),
        "dirichlet": ({"alpha": 0.5}, lambda rng: dirichlet(labels, 6, 0.5, rng)),
        "shards": ({"shards_per_client": 3}, lambda rng: shards(labels, 6, rng, shards_per_client=3)),
        "iid": ({}, lambda rng: iid(600, 6, rng)),
        "contiguous": ({}, lambda rng: contiguous(600, 6)),
    }
    assert set(cases) == set(METHOD_SETTINGS)
    for method, (method_settings, split) in cases.items():
        parts = split_indices(method, labels, 6, np.random.default_rng(5), **method_settings)
        assert _same(parts, split(np.random.default_rng(5))), method


def test_class_counts_and_report():
    labels = np.array([0, 0, 1, 2, 2, 2])
    parts = [np.array([0, 3]), np.array([1, 2, 4])]
    counts = class_counts(labels, parts, 4)
    np.testing.assert_array_equal(counts, [[1, 0, 1, 0], [1, 1, 1, 0]])
    assert counts.dtype == np.int64
    report = partition_report(labels, parts, 4, classes_per_client=2)
    lines = report.splitlines()
    assert lines[0].split()[:3] == ["client", "size", "classes"]
    assert lines[1].split() == ["0", "2", "2", "|", "1", "0", "1", "0"]
    assert lines[2].split() == ["1", "3", "3", "|", "1", "1", "1", "0"]
    assert "5 of 6 samples used, 1 unassigned, 0 assigned twice" in report
    assert "1 clients hold more than classes_per_client = 2 classes: [1]" in report
    with pytest.raises(ValueError, match="indices must lie in"):
        class_counts(labels, [np.array([6])], 4)


# ------------------------------------------------------------------------------------- seeds and errors

@pytest.mark.parametrize("split", [lambda labels, rng: classes_per_client(labels, 10, 2, 0.9, rng),
                                   lambda labels, rng: dirichlet(labels, 20, 0.3, rng, min_size=20),
                                   lambda labels, rng: shards(labels, 50, rng),
                                   lambda labels, rng: iid(len(labels), 4, rng)])
def test_different_seeds_give_different_splits(split):
    labels = _labels(2000, 10, 1)
    assert not _same(split(labels, np.random.default_rng(0)), split(labels, np.random.default_rng(1)))


LABELS = _labels(100, 10, 0)
ALLOWED_METHODS = "allowed: classes_per_client, dirichlet, shards, iid, contiguous"


def _rng():
    return np.random.default_rng(0)


@pytest.mark.parametrize("call, pattern", [
    (lambda: classes_per_client(LABELS, 0, 2, 1.0, _rng()), "n_clients"),
    (lambda: classes_per_client(LABELS, 101, 2, 1.0, _rng()), "more clients than samples"),
    (lambda: classes_per_client(LABELS, 5, 11, 1.0, _rng()), r"classes_per_client must be an integer in \[1, 10\]"),
    (lambda: classes_per_client(LABELS, 5, 0, 1.0, _rng()), "classes_per_client"),
    # 0.1 * 100 / 50 < 1: empty clients
    (lambda: classes_per_client(LABELS, 50, 2, 0.5, _rng()), "impossible split"),
    (lambda: classes_per_client(LABELS, 5, 2, 1.0, _rng(), n_classes=3), "n_classes"),
    (lambda: classes_per_client(LABELS, 5, 2, 1.0, 0), "rng"),
    (lambda: classes_per_client(LABELS.astype(float), 5, 2, 1.0, _rng()), "labels"),
    (lambda: classes_per_client(-LABELS - 1, 5, 2, 1.0, _rng()), "labels"),
    *((lambda bad=bad: classes_per_client(LABELS, 5, 2, bad, _rng()),
       r"balancedness must be a finite number in \(0, 1\]") for bad in (0.0, -0.5, 1.5, float("nan"))),
    *((lambda bad=bad: dirichlet(LABELS, 5, bad, _rng()), "alpha must be a finite number > 0")
      for bad in (0.0, -1.0, float("inf"))),
    (lambda: dirichlet(LABELS, 5, 1.0, _rng(), min_size=21), r"min_size must be an integer in \[0, 20\]"),
    (lambda: dirichlet(LABELS, 5, 1.0, _rng(), max_attempts=0), "max_attempts"),
    # each client exactly 20: hopeless
    (lambda: dirichlet(LABELS, 5, 0.01, _rng(), min_size=20, max_attempts=3),
     "in 3 draws, none gave every client at least 20 samples"),
    (lambda: shards(_labels(1000, 10, 0), 100, _rng(), shards_per_client=11),
     r"shards_per_client must be an integer in \[1, 10\]"),
    (lambda: shards(_labels(1000, 10, 0), 10, _rng(), shards_per_client=0), "shards_per_client"),
    (lambda: iid(10, 11, _rng()), "more clients than samples"),
    (lambda: contiguous(10, 11), "more clients than samples"),
    (lambda: split_indices("pathological", LABELS, 5, _rng()),
     f"unknown partition method 'pathological'; {ALLOWED_METHODS}"),
    (lambda: split_indices("dirichlet", LABELS, 5, _rng(), alpha=1.0, beta=2.0),
     r"unknown settings \['beta'\]; allowed: alpha, min_size"),
    (lambda: split_indices("classes_per_client", LABELS, 5, _rng(), classes_per_client=2),
     r"needs the settings \['balancedness'\]"),
    (lambda: split_indices("iid", LABELS, 5), "rng must be a numpy.random.Generator")])
def test_bad_settings_raise(call, pattern):
    with pytest.raises(ValueError, match=pattern):
        call()
