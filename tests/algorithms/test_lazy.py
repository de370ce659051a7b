"""Lazy aggregation (GD, QGD, LAG-WK, LAG-PS, LAQ, SLAQ): settings, rules, counting, runs."""

import json
import math
import re
import warnings
from types import SimpleNamespace

import numpy as np
import pytest

from fedsim.algorithms.lazy import (METHODS, DivergenceError, LazyConfig, LazyRun, bits_per_upload,
                                    history_threshold, lag_ps_request_decision, laq_upload_decision,
                                    records_reach, records_to_arrays, smallest_objective, smoothness_bounds,
                                    stack_shards)
from fedsim.data.dataset import Dataset
from fedsim.models import ModelConfig, SoftmaxRegression
from fedsim.rng import RunStreams


def _toy(n_samples=600, n_features=12, n_classes=4, seed=0, n_test=100):
    """Features in [0, 1) and labels from a noisy linear teacher (learnable, not separable)."""
    rng = np.random.default_rng(seed)
    teacher = rng.normal(size=(n_features, n_classes)) * 3
    x = rng.random((n_samples + n_test, n_features))
    y = np.argmax(x @ teacher + rng.normal(size=(len(x), n_classes)), axis=1)
    return Dataset("toy", x[:n_samples], y[:n_samples], x[n_samples:], y[n_samples:], n_classes)


GLOROT = ModelConfig(init="glorot")


def _finished(config, data, partition=None, progress=False, model_config=ModelConfig()):
    """A run to its end: its records as arrays (records_to_arrays), its final theta, the run and the records."""
    run = LazyRun(config, data, partition, model_config=model_config)
    records = run.run(progress=progress)
    return SimpleNamespace(**records_to_arrays(records, config.n_workers), theta=run.theta, run=run,
                           records=records)


def _run(method, data=None, progress=False, model_config=ModelConfig(), **settings):
    settings.setdefault("iterations", 60)
    settings.setdefault("eval_every", 20)
    return _finished(LazyConfig.reference(method, **settings), data or _toy(), progress=progress,
                     model_config=model_config)


# --- settings --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("setting, value, message", [
    ("bits", 0, r"bits \(b\) must be an integer in \[1, 16\]"),
    ("bits", 17, r"bits \(b\) must be an integer in \[1, 16\]"),
    ("step_size", 0.0, r"step_size \(alpha\) must be a finite number > 0"),
    ("step_size", -0.1, r"step_size \(alpha\)"),
    ("step_size", float("nan"), r"step_size \(alpha\)"),
    ("history_length", 0, r"history_length \(D\) must be an integer >= 1"),
    ("max_skips", 0, r"max_skips \(C\) must be an integer >= 1"),
    ("method", "lag", "method must be one of " + re.escape(", ".join(map(repr, METHODS))) + ", got 'lag'"),
    ("n_workers", 0, r"n_workers \(M\)"),
    ("history_weight", -1.0, r"history_weight \(xi\) must be a finite number >= 0"),
    ("iterations", 0, "iterations"),
    ("dtype", "float16", "dtype must be one of"),
    ("eval_every", 0, "eval_every"),
    ("minibatch_size", 0, "minibatch_size"),
    ("l2", -0.01, "l2"),
    ("slaq_error_scale", -1.0, "slaq_error_scale"),
    ("seed", -1, "seed"),
])
def test_bad_settings_raise_naming_the_setting(setting, value, message):
    with pytest.raises(ValueError, match=message):
        LazyConfig(**{setting: value})


def test_reference_settings():
    laq = LazyConfig.reference("laq")
    assert (laq.n_workers, laq.step_size, laq.bits, laq.history_length, laq.history_weight, laq.max_skips,
            laq.l2, laq.iterations) == (10, 0.02, 4, 10, 0.8, 100, 0.01, 4000)
    slaq = LazyConfig.reference("slaq")
    assert (slaq.step_size, slaq.bits, slaq.minibatch_size, slaq.slaq_error_scale,
            slaq.slaq_threshold_offset) == (0.008, 3, 500, 0.5, 0.2)
    assert LazyConfig.reference("slaq", bits=5).bits == 5


@pytest.mark.parametrize("config, partition, message", [
    (LazyConfig.reference("gd", n_workers=601), None, r"n_workers \(M\) must be in \[1, 600\]"),
    (LazyConfig(n_workers=3), [np.arange(10), np.arange(10, 20)], "partition has 2 index arrays but n_workers"),
    (LazyConfig(n_workers=2), [np.arange(10), np.arange(0)], r"partition\[1\] must be a non-empty"),
    (LazyConfig(n_workers=1), [np.arange(590, 610)], r"partition\[0\] indexes"),
    (LazyConfig.reference("slaq", minibatch_size=61), None, r"^lazy.minibatch_size must be in \[1, 60\]"),
])
def test_a_run_its_data_cannot_hold_raises(config, partition, message):
    with pytest.raises(ValueError, match=message):
        LazyRun(config, _toy(), partition)


# --- counting: the check values of DESIGN.md section 6 ---------------------------------------------------

def test_bits_per_upload_check_values():
    n_params = 784 * 10 + 10
    assert n_params == 7850
    assert 10 * bits_per_upload("gd", n_params, 4) == 2_512_000
    assert 10 * bits_per_upload("qgd", n_params, 4) == 314_320
    assert bits_per_upload("laq", n_params, 4) == bits_per_upload("qgd", n_params, 4) == 4 * 7850 + 32
    assert bits_per_upload("lag-wk", n_params, 4) == bits_per_upload("lag-ps", n_params, 4) == 32 * 7850
    with pytest.raises(ValueError, match="method must be one of"):
        bits_per_upload("sgd", n_params, 4)


@pytest.mark.parametrize("method, per_iteration", [("gd", 2_512_000), ("qgd", 314_320)])
def test_check_values_from_a_run_with_7850_parameters(method, per_iteration):
    rng = np.random.default_rng(1)
    x = rng.random((40, 784))
    y = np.arange(40) % 10
    data = Dataset("mnist-shaped", x, y, x[:5], y[:5], 10)
    history = _finished(LazyConfig(method=method, iterations=3, eval_every=10), data)
    assert history.run.model.size == 7850
    np.testing.assert_array_equal(history.uploads.sum(axis=1), [10, 10, 10])
    # Without n_workers, the raster is as wide as the workers that uploaded (here all ten).
    np.testing.assert_array_equal(records_to_arrays(history.records)["uploads"], history.uploads)
    np.testing.assert_array_equal(history.communications, [10, 20, 30])
    np.testing.assert_array_equal(np.diff(history.bits, prepend=0), [per_iteration] * 3)


# --- the rules as pure functions -------------------------------------------------------------------------

def test_history_threshold_weights():
    ring = np.array([1.0, 2.0, 3.0, 0.0, 0.0])       # D = 5, three steps taken so far
    alpha, workers = 0.1, 2
    assert history_threshold(ring, 0, 0.8, alpha, workers) == 0.0
    # k = 3 <= D: xi_d = xi / 3 on the three existing differences
    assert math.isclose(history_threshold(ring, 3, 0.8, alpha, workers), 0.8 / 3 * 6 / (0.01 * 4))
    full = np.array([1.0, 2.0, 3.0, 4.0, 5.0])
    # k > D: xi_d = xi / D
    assert math.isclose(history_threshold(full, 17, 0.8, alpha, workers), 0.8 / 5 * 15 / (0.01 * 4))


def test_laq_upload_decision():
    innovation = np.array([10.0, 10.0, 1.0, 1.0, 0.0])
    error = np.array([1.0, 1.0, 0.0, 0.0, 0.0])
    error_hat = np.array([0.0, 1.0, 0.0, 0.0, 0.0])
    skips = np.array([0, 0, 0, 5, 4])
    # bound = 4 + 3 (e + e_hat): 7, 10, 4, 4, 4; worker 1 sits exactly on it (>= uploads);
    # worker 3 is forced by the clock (5 skips = C).
    got = laq_upload_decision(innovation, 4.0, error, error_hat, skips, max_skips=5)
    np.testing.assert_array_equal(got, [True, True, False, True, False])
    # SLAQ's ec and offset: bound = 4 + 0.5 * 3 (e + e_hat) + 0.2
    got = laq_upload_decision(innovation, 4.0, error, error_hat, skips, 5, error_scale=0.5, offset=0.2)
    np.testing.assert_array_equal(got, [True, True, False, True, False])
    got = laq_upload_decision(np.array([5.7, 5.69]), 4.0, np.ones(2), np.zeros(2), np.zeros(2, int), 5,
                              error_scale=0.5, offset=0.2)
    np.testing.assert_array_equal(got, [True, False])


def test_lag_ps_request_decision_is_strict():
    smoothness = np.array([2.0, 2.0, 1.0])
    distance_sq = np.array([1.0, 2.0, 1.0])
    got = lag_ps_request_decision(smoothness, distance_sq, 4.0, np.array([0, 0, 3]), max_skips=3)
    np.testing.assert_array_equal(got, [False, True, True])        # 4 > 4 is false; worker 2 by clock


# --- runs ------------------------------------------------------------------------------------------------

def _plain_gradient_descent(data, n_workers, step_size, l2, iterations):
    """theta <- theta - alpha sum_m grad f_m, each f_m on a contiguous shard, computed worker by worker."""
    model = SoftmaxRegression(data.n_features, data.n_classes, l2)
    theta = np.zeros(model.size)
    bounds = [m * len(data.x_train) // n_workers for m in range(n_workers + 1)]
    objectives = []
    for _ in range(iterations):
        total, gradient = 0.0, np.zeros(model.size)
        for m in range(n_workers):
            shard = slice(bounds[m], bounds[m + 1])
            loss, grad = model.loss_and_grad(theta, data.x_train[shard], data.y_train[shard])
            total += loss
            gradient += grad
        objectives.append(total)
        theta = theta - step_size * gradient
    return np.array(objectives), theta


def test_gd_is_plain_gradient_descent():
    data = _toy(n_samples=603)                              # 603 / 10: ragged contiguous shards
    history = _run("gd", data, iterations=30)
    objectives, theta = _plain_gradient_descent(data, 10, 0.02, 0.01, 30)
    np.testing.assert_allclose(history.objective, objectives, rtol=1e-12)
    np.testing.assert_allclose(history.theta, theta, rtol=1e-10, atol=1e-14)
    # f(0) = M log C for zero init (uniform predictions), exactly the first objective
    assert math.isclose(history.objective[0], 10 * math.log(4), rel_tol=1e-14)
    assert history.uploads.all()


def test_lag_wk_without_history_weight_is_gd():
    # xi = 0: the rule ||g - Q||^2 >= 0 always holds, so every worker uploads every time.
    gd = _run("gd", iterations=25)
    lag = _run("lag-wk", iterations=25, history_weight=0.0)
    assert lag.uploads.all()
    np.testing.assert_allclose(lag.theta, gd.theta, rtol=1e-12, atol=1e-15)


def test_first_metrics_match_direct_computation():
    data = _toy()
    history = _run("laq", data, iterations=1)
    model = SoftmaxRegression(data.n_features, data.n_classes, 0.01)
    x = data.x_train.reshape(10, 60, -1)
    y = data.y_train.reshape(10, 60)
    loss, grads = model.loss_and_grad(np.zeros(model.size), x, y)
    assert math.isclose(history.objective[0], loss.sum(), rel_tol=1e-14)
    full = grads.sum(axis=0)
    assert math.isclose(history.grad_norm_sq[0], full @ full, rel_tol=1e-13)
    # Everyone uploads at k = 0; the step is theta^1 = -alpha sum_m Q_m.
    assert history.uploads[0].all()
    np.testing.assert_allclose(history.aggregate_norm_sq[0] * 0.02 ** 2, history.theta @ history.theta,
                               rtol=1e-12)


def test_staleness_clock_forces_uploads():
    # A huge xi makes every worker skip whenever it may: it uploads at k = 0 and after every C skips.
    history = _run("lag-wk", iterations=20, history_weight=1e12, max_skips=3)
    expected = np.zeros(20, dtype=bool)
    expected[::4] = True
    for m in range(10):
        np.testing.assert_array_equal(history.uploads[:, m], expected)


def test_qgd_with_many_bits_tracks_gd():
    gd = _run("gd", iterations=40)
    qgd = _run("qgd", iterations=40, bits=16)
    np.testing.assert_allclose(qgd.objective, gd.objective, rtol=1e-6)
    assert qgd.bits[-1] == 40 * 10 * (16 * gd.run.model.size + 32)


@pytest.mark.parametrize("method", ["lag-wk", "lag-ps", "laq"])
def test_lazy_methods_skip_and_still_descend(method):
    gd = _run("gd", iterations=200)
    lazy = _run(method, iterations=200)
    assert lazy.uploads[0].all()
    assert lazy.communications[-1] < gd.communications[-1]
    assert lazy.objective[-1] < lazy.objective[0] - 1.0
    assert abs(lazy.objective[-1] - gd.objective[-1]) < 0.05 * gd.objective[0]
    gaps = [np.diff(np.flatnonzero(lazy.uploads[:, m])) for m in range(10)]
    assert max(g.max(initial=1) for g in gaps) <= 101            # never more than C = 100 skips in a row


def test_lag_ps_smoothness_bounds():
    data = _toy(n_samples=503)
    parts = [np.arange(m * 503 // 4, (m + 1) * 503 // 4) for m in range(4)]
    shards = stack_shards(data.x_train, data.y_train, parts)
    assert shards.weights is not None
    per_worker, total = smoothness_bounds(shards, l2=0.01)
    for m, part in enumerate(parts):
        augmented = np.hstack([data.x_train[part], np.ones((part.size, 1))])
        top = np.linalg.eigvalsh(augmented.T @ augmented / part.size)[-1]
        assert math.isclose(per_worker[m], 0.5 * top + 0.01, rel_tol=1e-10)
    assert total <= per_worker.sum() * (1 + 1e-12)
    # The bound really bounds the curvature: a finite-difference Hessian-vector product at a random point.
    model = SoftmaxRegression(data.n_features, data.n_classes, 0.01)
    rng = np.random.default_rng(0)
    theta = rng.normal(size=model.size)
    x, y = data.x_train[parts[0]], data.y_train[parts[0]]
    for _ in range(5):
        direction = rng.normal(size=model.size)
        direction /= np.linalg.norm(direction)
        h = 1e-5
        curvature = (model.loss_and_grad(theta + h * direction, x, y)[1]
                     - model.loss_and_grad(theta - h * direction, x, y)[1]) @ direction / (2 * h)
        assert curvature <= per_worker[0]
    run = LazyRun(LazyConfig(method="lag-ps", n_workers=4, iterations=5), data, parts)
    np.testing.assert_allclose(run.smoothness, per_worker, rtol=1e-12)


def test_ragged_partition_objective():
    data = _toy()
    rng = np.random.default_rng(5)
    order = rng.permutation(600)
    parts = [order[:50], order[50:250], order[250:600]]
    history = _finished(LazyConfig(method="laq", n_workers=3, iterations=3, seed=4), data, parts, model_config=GLOROT)
    model = SoftmaxRegression(data.n_features, data.n_classes, 0.01)
    theta0 = model.init(RunStreams(4).generator("init"), kind="glorot", dtype=np.float64)
    expected = sum(model.loss(theta0, data.x_train[p], data.y_train[p]) for p in parts)
    assert math.isclose(history.objective[0], expected, rel_tol=1e-13)


@pytest.mark.parametrize("method", METHODS)
def test_same_seed_same_history(method):
    settings = dict(iterations=15, seed=7, minibatch_size=20, model_config=GLOROT)
    first, second = _run(method, **settings), _run(method, **settings)
    for name in ("objective", "grad_norm_sq", "aggregate_norm_sq", "uploads", "communications", "bits",
                 "eval_iterations", "test_accuracy", "theta"):
        np.testing.assert_array_equal(getattr(first, name), getattr(second, name), err_msg=name)
    if method == "slaq":
        other = _run(method, **dict(settings, seed=8))
        assert not np.array_equal(other.theta, first.theta)


def test_slaq_uses_minibatches_and_full_batch_metrics():
    data = _toy()
    history = _run("slaq", data, iterations=30, minibatch_size=20)
    gd = _run("gd", data, iterations=1)
    assert history.objective[0] == gd.objective[0]                 # metrics are full-batch
    assert history.uploads[0].all() and history.communications[-1] < 300


def test_evaluation_schedule_and_float32():
    history = _run("laq", iterations=25, eval_every=10, dtype="float32")
    np.testing.assert_array_equal(history.eval_iterations, [0, 10, 20, 25])
    assert history.theta.dtype == np.float32
    assert 0 <= history.test_accuracy[-1] <= 1
    assert history.records[-1]["final_test_accuracy"] == history.test_accuracy[-1]


@pytest.mark.parametrize("method", ["gd", "lag-ps"])
def test_divergence_raises_with_history_so_far(method):
    run = LazyRun(LazyConfig.reference(method, iterations=500, eval_every=20, step_size=1e3), _toy())
    with warnings.catch_warnings(), pytest.raises(DivergenceError, match="not finite at iteration") as caught:
        warnings.simplefilter("error")          # fedsim's own message, no NumPy overflow warning (LAG-PS's rule)
        run.run()
    records = caught.value.history
    # theta^{k+1} overflowed at k = len(records): f(theta^k) was finite, and is the one named
    last = float(run.model.loss_and_grad(run.theta, run.shards.x, run.shards.y, run.shards.weights)[0].sum())
    assert str(caught.value).endswith(f"last finite objective {last:.10g} at iteration {len(records)}")
    assert records == run.history and 0 < len(records) < 500
    history = records_to_arrays(records, 10)
    assert np.all(np.isfinite(history["objective"]))
    assert np.all(np.isfinite(run.theta))               # the last finite iterate is kept
    assert history["uploads"].shape == (len(records), 10)


def test_f_star_residual_reach_and_json():
    gd = _run("gd", iterations=100)
    laq = _run("laq", iterations=100)
    f_star = smallest_objective([gd.records, laq.records])
    assert f_star == min(gd.objective.min(), laq.objective.min())
    with pytest.raises(ValueError, match="f_star"):
        records_reach(gd.records, None, 1e-6)
    residual = laq.objective - f_star
    assert residual.min() >= 0
    tolerance = float(np.sort(residual)[5])
    point = records_reach(laq.records, f_star, tolerance)
    k = int(np.flatnonzero(residual <= tolerance)[0])
    assert point["iteration"] == k
    assert point["communications"] == laq.uploads[:k].sum() == laq.communications_before[k]
    assert point["bits"] == point["communications"] * laq.run.bits_per_upload == laq.bits_before[k]
    assert records_reach(laq.records, f_star, -1.0) is None
    # The records are the history as history.jsonl holds it: JSON in, the same arrays out.
    again = records_to_arrays(json.loads(json.dumps(laq.records)), 10)
    for name, array in records_to_arrays(laq.records, 10).items():
        np.testing.assert_array_equal(again[name], array, err_msg=name)


def test_progress_bar_runs(capsys):
    _run("gd", iterations=3, progress=True)
    assert "gd" in capsys.readouterr().err
