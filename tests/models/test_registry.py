"""The model registry and the [model] table: validation, the moved init settings, show-config, and a model
registered here, outside fedsim, trained by both families through the registry alone."""

import numpy as np
import pytest

from fedsim.algorithms.federated import methods as federated_methods
from fedsim.algorithms.lazy import METHODS as LAZY_METHODS
from fedsim.config import ConfigError, config_from_dict, load_preset, parse_toml
from fedsim.config_toml import config_to_toml
from fedsim.models import MODELS, ModelConfig, SoftmaxRegression, register_model
from fedsim.models.base import multiply_adds_per_sample
from fedsim.models.features import decoded
from fedsim.params import ParamSpec
from fedsim.rng import RunStreams
from fedsim.runs import build_run
from tests.test_config import config_error


def test_softmax_is_the_default_model_with_zero_init():
    settings = ModelConfig()
    assert (settings.name, settings.hidden, settings.init, settings.init_kind) == ("softmax", (), None, "zeros")
    model = settings.build(5, 3, 0.5)
    assert model == SoftmaxRegression(5, 3, 0.5)
    assert ModelConfig(init="glorot").init_kind == "glorot"
    # the default activation (the canonical config writes it) and zero init: accepted without hidden layers
    assert ModelConfig(activation="relu").init_kind == "zeros"
    assert ModelConfig(name="mlp", hidden=(), init="zeros").build(5, 3).size == 18


NAMES = ", ".join(map(repr, MODELS))          # 'softmax', 'mlp' and any model added to the registry


@pytest.mark.parametrize("table, message", [
    ({"name": "sofmax"}, f"model.name must be one of {NAMES}, got 'sofmax'; did you mean 'softmax'?"),
    ({"name": "perceptron"}, f"model.name must be one of {NAMES}, got 'perceptron'"),
    ({"name": 3}, f"model.name must be one of {NAMES}, got 3"),
    ({"hidden": [200]}, "model.hidden must be empty for model 'softmax' (it has no hidden layer), got [200]"),
    ({"hidden": [0]}, "model.hidden must be a list of integer widths >= 1, like [200] or [256, 128], got [0]"),
    ({"hidden": [2.5]}, "model.hidden must be a list of integer widths >= 1"),
    ({"hidden": 200}, "model.hidden must be a list of integer widths >= 1"),
    ({"activation": "sigmoid"}, "model.activation must be one of 'relu', 'tanh', got 'sigmoid'"),
    ({"activation": "tanh"}, "model.activation applies to hidden layers only and model 'softmax' has none: leave "
                             "it 'relu' (the default), got 'tanh'"),
    ({"name": "mlp", "hidden": [16], "init": "zeros"}, "model.init must be 'glorot' for a model with hidden layers, "
     "got 'zeros': a network started at zero never breaks the symmetry of its hidden units (they stay 0)"),
    ({"init": "normal"}, "model.init must be one of 'zeros', 'glorot', or unset (the model's own default), got"),
    ({"width": 3}, "unknown setting 'model.width'"),
])
def test_bad_model_settings_are_one_line_naming_the_setting(table, message):
    got = config_error({"model": table})
    assert got.startswith(message), got
    if table == {"name": "perceptron"}:
        assert "did you mean" not in got


def test_a_network_too_large_for_the_machine_is_one_line_naming_model_hidden():
    """Widths whose parameter vector would not fit in memory (an unexpected MemoryError, or numpy's 'maximum
    allowed dimension exceeded', before): refused when the model is built for its data."""
    with pytest.raises(ValueError, match=r"^model.hidden = \[10{21}\] makes mlp on 60 features and 10 "
                                         r"classes 71,0{3}(,0{3}){5},010 parameters: .* GiB a vector, more than "
                                         r"this machine's"):
        ModelConfig(name="mlp", hidden=(10**21,)).build(60, 10)


@pytest.mark.parametrize("family, setting, rows", [
    ("federated", "federated.rounds=1", "client sampled per round (30 of federated.n_clients = 30)"),
    ("lazy", "lazy.iterations=1", "worker (lazy.n_workers = 30)")])
def test_a_network_whose_per_client_arrays_exceed_the_machine_is_refused_before_its_folder(tmp_path, family,
                                                                                          setting, rows):
    """Widths whose vector fits but whose (K, P) arrays (federated) or (M, P) arrays (lazy) of 30 float32 rows
    do not: one line naming model.hidden and the clients or workers, no run folder (was a MemoryError 'please
    report it' mid-run, and a folder with an empty history)."""
    import os
    from tests.conftest import error_lines, fedsim
    width = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // (4 * 71 * 8)     # a vector: memory / 8
    preset = "synthetic" if family == "federated" else "laq-synthetic"
    finished = fedsim(tmp_path, "run", "--preset", preset, "--set", "model.name=mlp", "--set",
                      f"model.hidden=[{width}]", "--set", f"{family}.dtype=float32", "--set", setting,
                      "--out", "big", "--quiet")
    told = error_lines(finished.stderr)
    assert finished.returncode == 2 and len(told) == 1, finished.stderr
    assert told[0].startswith(f"fedsim: error: the config does not fit the data: model.hidden = [{width}] makes "
                              f"mlp on 60 features and 10 classes"), told
    assert " GiB a vector, " in told[0] and f" GiB for one per {rows}, more than this machine's " in told[0], told
    assert not (tmp_path / "big").exists()


@pytest.mark.parametrize("family", ["federated", "lazy"])
def test_the_old_init_settings_are_answered_with_model_init(family):
    assert config_error({"family": family, family: {"init": "glorot"}}) == \
        f"{family}.init has moved: model.init replaces it"
    with pytest.raises(ConfigError, match=rf"^{family}.init has moved: model.init replaces it$"):
        load_preset("synthetic", [f"{family}.init=zeros"])


def test_show_config_lists_the_model_table():
    text = config_to_toml(load_preset("stc-mnist"))
    table = text.split("[model]\n", 1)[1].split("\n\n", 1)[0].splitlines()
    assert [line.split(" =")[0] for line in table] == ["name", "hidden", "activation", "# init"], table
    assert table[0].startswith('name = "softmax"') and table[1].startswith("hidden = []")
    assert table[3] == "# init = (unset: the model's, \"zeros\")"
    assert "init =" not in text.split("[federated]", 1)[1]
    glorot = load_preset("stc-mnist", ["model.init=glorot"])
    assert config_from_dict(parse_toml(config_to_toml(glorot))) == glorot


def test_a_model_registered_twice_under_one_name_is_refused():
    with pytest.raises(ValueError, match="model name 'softmax' is registered twice"):
        register_model("softmax", lambda settings, n_features, n_classes, l2: None)
    with pytest.raises(ValueError, match="default_init must be one of 'zeros', 'glorot', got 'ones'"):
        register_model("ones", lambda settings, n_features, n_classes, l2: None, default_init="ones")


# -- a model of this test module ---------------------------------------------------------------------------

class TinyLinear:
    """Scores ``z = x W`` (no bias) with the squared loss ``(1/2) sum_c (z_c - Y_c)^2`` per sample, plus
    ``(l2 / 2) ||W||^2``: the protocol of fedsim.models.base in a few lines."""

    def __init__(self, n_features, n_classes, l2):
        self.spec = ParamSpec(("W",), ((n_features, n_classes),))
        self.n_classes, self.l2 = n_classes, l2

    def init(self, rng, kind, dtype):
        theta = self.spec.zeros(dtype)
        if kind == "glorot":
            theta[:] = rng.uniform(-0.1, 0.1, theta.shape)
        return theta

    def _scores(self, theta, x, rows=None):
        x = decoded(x) if rows is None else decoded(x)[rows]
        return x, np.matmul(x, self.spec.view(theta, "W"))

    def loss_and_grad(self, theta, x, y, weights=None, rows=None):
        x, z = self._scores(theta, x, rows)
        residual = z - np.eye(self.n_classes, dtype=z.dtype)[y]                    # z - Y
        share = np.ones(y.shape, z.dtype) if weights is None else weights.astype(z.dtype)
        share = share / share.sum(axis=-1, keepdims=True)                           # m_i / sum m
        loss = 0.5 * np.einsum("...n,...nc,...nc->...", share, residual, residual)
        grad = np.matmul(np.swapaxes(x, -1, -2), share[..., None] * residual)      # x^T (m (z - Y))
        grad = grad.reshape(grad.shape[:-2] + (-1,)) + self.l2 * theta
        return loss + 0.5 * self.l2 * np.einsum("...p,...p->...", theta, theta), grad

    def evaluate(self, theta, x, y):
        _, z = self._scores(theta, x)
        return self.loss_and_grad(theta, x, y)[0], np.mean(np.argmax(z, axis=-1) == y)


@pytest.fixture()
def tiny_linear():
    """The model registered as "tiny-linear" (glorot by default), for the length of one test."""
    register_model("tiny-linear", lambda settings, n_features, n_classes, l2: TinyLinear(n_features, n_classes, l2),
                   default_init="glorot")
    yield "tiny-linear"
    MODELS.pop("tiny-linear")


def test_a_registered_model_trains_through_federated_rounds(tiny_linear):
    """STC up and down (the preset's method) over the model's one tensor; its clock's work the default count
    (x W and x^T residual, as of a dense layer taking no input gradient)."""
    assert multiply_adds_per_sample(TinyLinear(60, 10, 0.0)) == 2 * 60 * 10
    config = load_preset("synthetic", [f"model.name={tiny_linear}", "data.synthetic_devices=6",
                                       "federated.n_clients=6", "federated.lr=0.002"])
    assert config.model.init_kind == "glorot"
    run = build_run(config, progress=False)
    assert isinstance(run.model, TinyLinear) and run.up_state.segment_offsets == (0, 60 * 10)   # W, one segment
    initial = run.model.init(RunStreams(config.seed).generator("init"), "glorot", np.float32)
    np.testing.assert_array_equal(run.server.weights, initial)
    records = [run.step() for _ in range(5)]
    assert all(np.isfinite(record["train_loss"]) for record in records)
    assert records[-1]["train_loss"] < records[0]["train_loss"], records


def test_a_registered_model_takes_a_lazy_gradient_step(tiny_linear):
    config = load_preset("laq-synthetic", [f"model.name={tiny_linear}", "model.init=zeros", "lazy.method=gd",
                                           "data.synthetic_devices=6", "lazy.n_workers=6"])
    run = build_run(config, progress=False)
    theta = run.theta.copy()
    assert not theta.any()
    _, gradients = TinyLinear(60, 10, config.lazy.l2).loss_and_grad(theta, run.shards.x, run.shards.y,
                                                                     run.shards.weights)
    run.step()                                 # theta^1 = theta^0 - alpha sum_m grad f_m(theta^0)
    np.testing.assert_allclose(run.theta, theta - config.lazy.step_size * gradients.sum(axis=0), rtol=1e-12)


@pytest.mark.parametrize("preset, setting, method", [
    *(("synthetic", "federated.method", name) for name in sorted(federated_methods())),
    *(("laq-synthetic", "lazy.method", name) for name in LAZY_METHODS),
])
def test_every_method_of_both_families_runs_on_the_mlp(preset, setting, method):
    """``model.name = "mlp"`` (one hidden layer of 8, glorot): three steps, finite records, the model's
    per-layer tensors as the run's parameter layout."""
    steps = ["federated.rounds=3"] if preset == "synthetic" else ["lazy.iterations=3", "lazy.minibatch_size=20"]
    config = load_preset(preset, ["model.name=mlp", "model.hidden=[8]", f"{setting}={method}", *steps])
    if method == "lag-ps":          # its L_m are estimates on a model without a smoothness bound, and it says so
        with pytest.warns(UserWarning, match="lag-ps: model 'mlp' has no smoothness bound"):
            run = build_run(config, progress=False)
    else:
        run = build_run(config, progress=False)
    assert run.model.spec.names == ("W1", "b1", "W2", "b2")
    for _ in range(3):
        record = run.step()
    losses = [value for key, value in record.items() if key in ("train_loss", "objective")]
    assert losses and all(np.isfinite(losses)), record
