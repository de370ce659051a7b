"""The lazy family on a model other than softmax regression (issue #24): every method from the command line on
the MLP, LAG-PS's smoothness constants for a model without a bound (a curvature estimate, with a warning),
and no certified f* for a non-convex model."""

import tomllib
import re
import warnings

import numpy as np
import pytest

from fedsim.algorithms.lazy import (METHODS, LazyConfig, LazyRun, curvature_estimates, smoothness_bounds,
                                    smoothness_of, stack_shards)
from fedsim.algorithms.lazy.report import REPORT
from fedsim.cli import main
from fedsim.config import list_presets, load_preset
from fedsim.data.dataset import Dataset
from fedsim.models import MLP, ModelConfig, SoftmaxRegression
from fedsim.rng import RunStreams
from fedsim.runs import read_run
from tests.runs.conftest import finished_run

NETWORK = ModelConfig(name="mlp", hidden=(4,), activation="tanh")
ESTIMATE_WARNING = r"lag-ps: model 'mlp' has no smoothness bound, so L_m is an estimate .* not a bound"


def _toy(n_samples=60, n_features=5, n_classes=3, seed=0):
    """Features in [0, 1) and labels from a noisy linear teacher; 10 test samples."""
    rng = np.random.default_rng(seed)
    x = rng.random((n_samples + 10, n_features))
    y = np.argmax(x @ rng.normal(size=(n_features, n_classes)) * 3 + rng.normal(size=(len(x), n_classes)), axis=1)
    return Dataset("toy", x[:n_samples], y[:n_samples], x[n_samples:], y[n_samples:], n_classes)


def _hessian(model, theta, x, y, h=1e-5):
    """The Hessian of ``model``'s loss at ``theta`` by central differences of its gradient, column by column,
    symmetrized."""
    columns = []
    for i in range(theta.size):
        shift = np.zeros_like(theta)
        shift[i] = h
        columns.append((model.loss_and_grad(theta + shift, x, y)[1] - model.loss_and_grad(theta - shift, x, y)[1])
                       / (2 * h))
    hessian = np.array(columns)
    return (hessian + hessian.T) / 2


@pytest.mark.parametrize("method", METHODS)
def test_every_lazy_method_runs_on_the_mlp_from_the_command_line(method, tmp_path, monkeypatch, capsys):
    """`fedsim run --preset laq-synthetic --set model.name=mlp --set model.hidden=[16]`, each method, 3
    iterations on 6 devices; LAG-PS warns that its L_m are estimates, the others do not warn."""
    monkeypatch.chdir(tmp_path)
    args = ["run", "--preset", "laq-synthetic", "--set", "model.name=mlp", "--set", "model.hidden=[16]",
            "--set", f"lazy.method={method}", "--set", "data.synthetic_devices=6", "--set", "lazy.n_workers=6",
            "--set", "lazy.iterations=3", "--set", "lazy.minibatch_size=5", "--out", str(tmp_path / method),
            "--quiet"]
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        assert main(args) == 0
    err = capsys.readouterr().err
    # A warning is one line, as the command's errors are.
    warned = [line for line in err.splitlines() if line.startswith("fedsim: warning: lag-ps:")]
    if method == "lag-ps":
        assert len(warned) == 1 and re.fullmatch("fedsim: warning: " + ESTIMATE_WARNING + ".*", warned[0]), err
        assert err.count("\n") == len(err.splitlines()) and "UserWarning" not in err, err
    else:
        assert warned == [], err
    config = tomllib.loads((tmp_path / method / "config.toml").read_text())
    assert config["model"]["name"] == "mlp" and config["model"]["hidden"] == [16]
    history = read_run(tmp_path / method).history
    assert len(history) == 3 and all(np.isfinite(r["objective"]) for r in history)
    assert history[-1]["objective"] < history[0]["objective"], [r["objective"] for r in history]


def test_the_curvature_estimate_is_the_top_eigenvalue_of_the_hessian():
    """Power iteration on finite-difference Hessian-vector products against the eigenvalues of the Hessian
    built column by column: with enough steps equal to max |lambda|, with the default 10 never above it."""
    data = _toy()
    parts = [np.arange(0, 20), np.arange(20, 60)]
    shards = stack_shards(data.x_train, data.y_train, parts)
    model = NETWORK.build(data.n_features, data.n_classes, 0.01)
    theta = model.init(np.random.default_rng(1), "glorot", np.float64)
    exact = [np.abs(np.linalg.eigvalsh(_hessian(model, theta, data.x_train[part], data.y_train[part]))).max()
             for part in parts]
    exact_total = np.abs(np.linalg.eigvalsh(sum(_hessian(model, theta, data.x_train[part], data.y_train[part])
                                                for part in parts))).max()
    converged, converged_total = curvature_estimates(model, shards, theta, np.random.default_rng(2), steps=300)
    np.testing.assert_allclose(converged, exact, rtol=1e-4)
    assert abs(converged_total - exact_total) <= 1e-4 * exact_total, (converged_total, exact_total)
    few, few_total = curvature_estimates(model, shards, theta, np.random.default_rng(2))
    assert np.all(few <= np.array(exact) * (1 + 1e-6)) and few_total <= exact_total * (1 + 1e-6)
    assert np.all(few >= 0.5 * np.array(exact)), (few, exact)


def test_a_model_with_a_bound_uses_it_and_the_estimate_stays_below_it():
    data = _toy(n_samples=63)                                    # ragged shards: a weight mask
    parts = [np.arange(0, 30), np.arange(30, 63)]
    shards = stack_shards(data.x_train, data.y_train, parts)
    softmax = SoftmaxRegression(data.n_features, data.n_classes, 0.01)
    theta = softmax.init(None, "zeros", np.float64)
    known = smoothness_of(softmax, shards, theta, np.random.default_rng(0))
    assert known.bound
    bounds = smoothness_bounds(shards, 0.01)                     # the default [model]: softmax regression
    np.testing.assert_array_equal(known.per_worker, bounds[0])
    assert known.total == bounds[1]
    estimated, estimated_total = curvature_estimates(softmax, shards, theta, np.random.default_rng(0), steps=100)
    assert np.all(estimated <= known.per_worker) and estimated_total <= known.total
    network = NETWORK.build(data.n_features, data.n_classes, 0.01)
    unknown = smoothness_of(network, shards, network.init(np.random.default_rng(0), "glorot", np.float64),
                            np.random.default_rng(0))
    assert not unknown.bound and unknown.per_worker.shape == (2,) and np.all(unknown.per_worker > 0)


def test_smoothness_bounds_of_a_model_without_one_is_a_clear_error():
    data = _toy()
    shards = stack_shards(data.x_train, data.y_train, [np.arange(30), np.arange(30, 60)])
    with pytest.raises(ValueError, match=r"model.name = 'mlp' has no smoothness bound .*curvature_estimates"):
        smoothness_bounds(shards, 0.01, NETWORK)


def test_lag_ps_on_the_mlp_estimates_at_theta0_from_its_own_stream():
    data = _toy()
    config = LazyConfig(method="lag-ps", n_workers=3, iterations=4, step_size=0.1, seed=3)
    with pytest.warns(UserWarning, match=ESTIMATE_WARNING):
        run = LazyRun(config, data, model_config=NETWORK)
    model = MLP(data.n_features, (4,), data.n_classes, "tanh", 0.01)
    theta = model.init(RunStreams(3).generator("init"), "glorot", np.float64)
    np.testing.assert_array_equal(run.theta, theta)
    expected = smoothness_of(model, run.shards, theta, RunStreams(3).generator("curvature"))
    np.testing.assert_array_equal(run.smoothness, expected.per_worker)
    records = run.run()
    assert records[0]["uploads"] == [0, 1, 2] and records[-1]["objective"] < records[0]["objective"]
    with warnings.catch_warnings():                              # given L_m: nothing is estimated, no warning
        warnings.simplefilter("error")
        given = LazyRun(config, data, model_config=NETWORK, smoothness=np.ones(3))
    np.testing.assert_array_equal(given.smoothness, np.ones(3))


def test_an_mlp_run_claims_no_certified_f_star(tmp_path):
    """A softmax run's best value is certified as f* at a loose residual; the MLP's never is (not convex)."""
    settings = ["data.synthetic_devices=6", "lazy.n_workers=6", "lazy.iterations=10", "lazy.method=gd"]
    softmax, network = (finished_run(tmp_path, name, "laq-synthetic", settings + extra)
                        for name, extra in (("softmax", []), ("mlp", ["model.name=mlp", "model.hidden=[4]"])))
    softmax_title, _, _ = REPORT.compare([softmax], {"residual": 1e6})
    network_title, _, _ = REPORT.compare([network], {"residual": 1e6})
    assert "f - f* <= 1e+06" in softmax_title
    assert "f_best" in network_title and "not certified as f*" in network_title, network_title


# --- the presets of the networks ------------------------------------------------------------------------

@pytest.mark.parametrize("name, small", [
    ("stc-mlp", ["federated.rounds=2", "federated.n_clients=8", "data.synthetic_devices=8"]),
    ("laq-mlp", ["lazy.iterations=2", "lazy.n_workers=6", "data.synthetic_devices=6"]),
])
def test_the_network_presets_are_listed_shown_and_run_two_steps(name, small, tmp_path, capsys):
    """Each preset is listed, `fedsim show-config --preset NAME` shows its [model] table, and it runs 2 rounds
    or iterations on synthetic data (its network unchanged: 200 ReLU units)."""
    assert name in list_presets()
    assert main(["show-config", "--preset", name]) == 0
    shown = tomllib.loads(capsys.readouterr().out)
    assert shown["model"] == {"name": "mlp", "hidden": [200], "activation": "relu", "init": "glorot"}
    run = finished_run(tmp_path, name, name, ["data.dataset=synthetic", *small])
    assert len(run.history) == 2 and run.config["model"]["hidden"] == [200] and run.status == "completed"


def test_the_network_presets_keep_the_settings_they_cite():
    stc, seed = load_preset("stc-mlp"), load_preset("stc-mnist")
    assert stc.data.dataset == "fashion-mnist" and stc.pipeline == "stc"
    assert stc.federated == seed.federated and stc.data.partition == seed.data.partition
    laq = load_preset("laq-mlp")
    assert (laq.data.dataset, laq.data.partition, laq.pipeline) == ("mnist", "contiguous", "laq")
    assert (laq.lazy.method, laq.lazy.n_workers, laq.lazy.step_size, laq.lazy.bits, laq.lazy.history_length,
            laq.lazy.history_weight, laq.lazy.max_skips, laq.lazy.l2, laq.lazy.iterations) == \
        ("laq", 10, 0.02, 4, 10, 0.8, 100, 0.01, 4000)
