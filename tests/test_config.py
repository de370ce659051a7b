"""Experiment configs: TOML <-> frozen dataclasses, key / type / range validation, overrides, presets."""

import math
import re
import sys

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedsim.config import (ConfigError, ExperimentConfig, all_settings, apply_overrides,
                           config_from_dict, config_to_dict, list_presets, load_config_file,
                           load_preset, parse_override, parse_toml, preset_text, suggest, table_fields,
                           toml_value, unused_tables)
from fedsim.config_toml import config_to_toml

if sys.version_info >= (3, 11):
    import tomllib
else:
    import tomli as tomllib

PRESETS = ("stc-mnist", "laq-mnist", "synthetic", "laq-synthetic")


def config_error(raw: dict) -> str:
    """The one-line ConfigError of ``raw`` read from test.toml (tests/models/test_registry.py uses it too)."""
    with pytest.raises(ConfigError) as info:
        config_from_dict(raw, "test.toml")
    message = str(info.value)
    assert "\n" not in message, f"the error must be one line, got {message!r}"
    return message


# --- presets and round trips --------------------------------------------------------------------------------

def test_presets_are_listed_with_one_line_descriptions():
    presets = list_presets()
    assert set(PRESETS) <= set(presets), presets
    for name, description in presets.items():
        assert description and "\n" not in description, (name, description)
    with pytest.raises(ConfigError, match="unknown preset 'stc-minst'; did you mean 'stc-mnist'"):
        preset_text("stc-minst")


@pytest.mark.parametrize("name", PRESETS)
def test_preset_round_trips_through_toml(name):
    config = load_preset(name)
    text = config_to_toml(config, header=f"preset {name}\nsecond header line")
    again = config_from_dict(parse_toml(text), "written")
    assert again == config, f"{config}\n!=\n{again}"
    # every setting is written out: as a value, or as a comment line when unset
    for setting in all_settings():
        table, _, name_in_table = setting.rpartition(".")
        assert f"\n{name_in_table} = " in text or f"\n# {name_in_table} = (unset" in text, setting


def test_seed_experiment_presets_hold_the_seed_settings():
    stc = load_preset("stc-mnist")
    assert (stc.family, stc.data.dataset, stc.data.classes_per_client, stc.data.balancedness) == \
        ("federated", "mnist", 10, 1.0)
    assert stc.federated.n_clients == 50 and stc.pipeline == "stc"
    laq = load_preset("laq-mnist")
    assert laq.family == "lazy" and laq.data.partition == "contiguous" and laq.pipeline == "laq"
    assert (laq.lazy.method, laq.lazy.n_workers, laq.lazy.step_size, laq.lazy.bits, laq.lazy.history_length,
            laq.lazy.history_weight, laq.lazy.max_skips, laq.lazy.l2, laq.lazy.iterations) == \
        ("laq", 10, 0.02, 4, 10, 0.8, 100, 0.01, 4000)
    synthetic = load_preset("synthetic")
    assert (synthetic.data.dataset, synthetic.data.partition, synthetic.federated.method,
            synthetic.federated.n_clients) == ("synthetic", "natural", "stc_updown", 30)


def test_defaults_round_trip_and_unset_settings_become_comments():
    config = ExperimentConfig()
    text = config_to_toml(config)
    assert config_from_dict(parse_toml(text)) == config
    from fedsim.config import config_to_toml as imported_as_before      # it moved to fedsim.config_toml
    assert imported_as_before is config_to_toml
    assert '# pipeline = (unset: the family\'s, "stc")' in text
    assert "# accumulate_up = (unset: the method's, true)" in text
    assert "# not used: family = \"federated\"\n[lazy]" in text
    # each comment says the values allowed: the lazy dtype's choices, an optional number once it is set
    assert re.search(r'\ndtype = "float64" +# float64 \| float32', text)
    set_text = config_to_toml(config_from_dict({"run": {"f_star": 0.5}}))
    assert re.search(r"\nf_star = 0.5 +# .*; a finite number\n", set_text), set_text
    # a dict leaves out the unset and derived settings
    document = config_to_dict(ExperimentConfig(seed=3))
    assert "seed" not in document["lazy"] and "pipeline" not in document["data"]
    assert config_from_dict(document) == ExperimentConfig(seed=3)


# --- keys ---------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("raw, suggestion", [
    ({"federated": {"lrr": 0.1}}, "federated.lr"),
    ({"federated": {"batchsize": 10}}, "federated.batch_size"),
    ({"data": {"partiton": "iid"}}, "data.partition"),
    ({"lazy": {"step-size": 0.1}}, "lazy.step_size"),
    ({"famly": "lazy"}, "family"),
    ({"lr": 0.1}, "federated.lr"),              # a table's setting written at the top level
    ({"data": {"rounds": 3}}, "federated.rounds"),   # ... or in the wrong table
    ({"run": {"n_worker": 3}}, "lazy.n_workers"),
    ({"federate": {"lr": 0.1}}, "federated"),
    ({"federated": {"seed": 1}}, "seed"),       # a top-level setting written in a table (was: system.speed)
    ({"data": {"family": "lazy"}}, "family"),
])
def test_unknown_key_names_the_closest_valid_key(raw, suggestion):
    message = config_error(raw)
    assert "unknown setting" in message and f"did you mean '{suggestion}'?" in message, message
    assert "test.toml" in message


def test_suggest():
    assert suggest("federated.p_upp", "federated") == "federated.p_up"
    assert suggest("qqqqqqqq", None) is None


def test_derived_lazy_seed_follows_the_top_level_seed():
    config = config_from_dict({"seed": 7, "family": "lazy"})
    assert config.lazy.seed == 7
    assert "seed" not in table_fields("lazy")


# --- types and ranges (each field's constraint, fedsim.constraints) -------------------------------------------

@pytest.mark.parametrize("raw, expected", [
    ({"federated": {"lr": "fast"}}, "federated.lr must be a finite number > 0, got 'fast'"),
    ({"federated": {"rounds": 2.5}}, "federated.rounds must be an integer >= 1, got 2.5"),
    ({"federated": {"rounds": True}}, "federated.rounds must be an integer >= 1, got True"),
    ({"data": {"download": 1}}, "data.download must be true or false, got 1"),
    ({"data": {"pipeline": 3}}, "data.pipeline must be one of 'stc', 'laq', or unset (the family's), got 3"),
    ({"federated": {"accumulate_up": "yes"}},
     "federated.accumulate_up must be true or false, or unset (the method's), got 'yes'"),
    ({"seed": "0"}, "seed must be an integer >= 0, got '0'"),
    ({"family": 1}, "family must be one of 'federated', 'lazy', got 1"),
    ({"data": 3}, "'data' must be a table ([data]), got 3 (integer)"),
    ({"federated": {"lr": [0.1]}}, "federated.lr must be a finite number > 0, got [0.1]"),
    ({"run": {"f_star": "low"}}, "run.f_star must be a finite number, or unset (the smallest objective among the "
                                 "runs compared), got 'low'"),
    # ranges
    ({"federated": {"lr": -1}}, "federated.lr must be a finite number > 0, got -1"),
    ({"federated": {"p_up": 2.0}}, "federated.p_up must be a finite number in (0, 1], got 2.0"),
    ({"federated": {"method": "stc"}}, "federated.method must be one of"),
    ({"lazy": {"bits": 0}}, "lazy.bits (b) must be an integer in [1, 16], got 0"),
    ({"lazy": {"method": "lag"}}, "lazy.method must be one of"),
    ({"data": {"dataset": "cifar"}}, "data.dataset must be one of"),
    ({"run": {"checkpoint_every": -1}}, "run.checkpoint_every must be an integer >= 0"),
    ({"run": {"f_star": math.inf}}, "run.f_star must be a finite number"),
    ({"seed": -1}, "seed must be an integer >= 0, got -1"),
    ({"family": "lazzy"}, "family must be one of 'federated', 'lazy', got 'lazzy'"),
    ({"data": {"dataset": "synthetic", "partition": "natural"}},
     "data.synthetic_devices (30) must equal federated.n_clients (50) with data.partition = 'natural'"),
    ({"family": "lazy", "data": {"dataset": "synthetic", "partition": "natural"}},
     "must equal lazy.n_workers (10)"),
    # an unknown key without a close match lists the table; a derived setting cannot be set
    ({"run": {"zzzzzz": 1}}, "[run] has: checkpoint_every, f_star"),
    ({"lazy": {"seed": 4}}, "set the top-level `seed` instead"),
    ({"data": {"dataset": "npz:"}}, "data.dataset 'npz:' names no file"),     # named once (was: [data] data....)
    # a compressor's p and scope named as the [federated] settings that give them (was: [federated] scope ...)
    ({"federated": {"method": "powersgd_up", "compression_scope": "global"}},
     "federated.compression_scope must be one of 'tensor', got 'global' (the powersgd compressor, up)"),
    # synthetic data has its own training set: a config saying it trained on the test split would be false
    ({"data": {"dataset": "synthetic", "train_split": "test"}}, "data.train_split must be 'train' with synthetic"),
])
def test_a_bad_setting_names_it_and_what_is_allowed(raw, expected):
    message = config_error(raw)
    assert expected in message and not message.startswith("["), message


@pytest.mark.parametrize("raw, named", [
    # the method's own (was: never named, Report.unused given one table and its bare keys)
    ({"family": "lazy", "lazy": {"method": "gd", "bits": 2}}, ["lazy.bits (method 'gd' does not read it)"]),
    ({"family": "lazy", "lazy": {"method": "laq", "minibatch_size": 3}},
     ["lazy.minibatch_size (method 'laq' does not read it)"]),
    ({"federated": {"method": "fedavg", "p_up": 0.5, "compression_scope": "global"}},
     ["federated.p_up (method 'fedavg' does not read it)",
      "federated.compression_scope (method 'fedavg' does not read it)"]),     # dense both ways: no segments
    ({"federated": {"method": "stc_up", "p_down": 0.5}}, ["federated.p_down (method 'stc_up' does not read it)"]),
    ({"federated": {"method": "signsgd", "p_up": 0.5}}, ["federated.p_up (method 'signsgd' does not read it)"]),
    # read: named by no warning (accumulate_down wraps stc_up's identity downlink in error feedback, a zero residual)
    ({"family": "lazy", "lazy": {"method": "slaq", "bits": 2, "minibatch_size": 3}}, []),
    ({"federated": {"method": "stc_up", "p_up": 0.5, "compression_scope": "global", "accumulate_down": True}}, []),
])
def test_settings_the_method_does_not_read_are_named(raw, named):
    assert unused_tables(raw, config_from_dict(raw)) == named


def test_integer_is_accepted_for_a_float_setting_and_stored_as_float():
    config = config_from_dict({"federated": {"lr": 1}, "data": {"balancedness": 1}})
    assert config.federated.lr == 1.0 and type(config.federated.lr) is float
    assert type(config.data.balancedness) is float


# --- files --------------------------------------------------------------------------------------------------

def test_load_config_file_and_its_errors(tmp_path):
    path = tmp_path / "exp.toml"
    path.write_text('family = "federated"\n[federated]\nrounds = 3\n')
    assert load_config_file(path).federated.rounds == 3
    assert load_config_file(path, ["federated.rounds=5"]).federated.rounds == 5
    path.write_text("[federated\nrounds = 3\n")
    with pytest.raises(ConfigError, match=r"^exp.toml: not valid TOML: .*line 1") as info:
        load_config_file(path)
    assert "\n" not in str(info.value)
    with pytest.raises(ConfigError, match="config file .*missing.toml does not exist"):
        load_config_file(tmp_path / "missing.toml")


# --- overrides ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("text, parts, value", [
    ("federated.lr=0.1", ["federated", "lr"], 0.1),
    ("federated.rounds = 7", ["federated", "rounds"], 7),
    ("data.dataset=fashion-mnist", ["data", "dataset"], "fashion-mnist"),   # bare string
    ('data.dataset="mnist"', ["data", "dataset"], "mnist"),
    ("federated.accumulate_up=false", ["federated", "accumulate_up"], False),
    ("seed=3", ["seed"], 3),
    ("data.data_dir=/tmp/a=b", ["data", "data_dir"], "/tmp/a=b"),
    ("run.f_star=-1e-3", ["run", "f_star"], -0.001),
])
def test_parse_override(text, parts, value):
    got_parts, got_value = parse_override(text)
    assert (got_parts, got_value) == (parts, value)
    assert type(got_value) is type(value)


@pytest.mark.parametrize("text, message", [
    ("federated.lr", "--set needs key=value"),
    ("=3", "--set needs key=value"),
    ("a.b.c=1", "--set key must be a setting like"),
    (".lr=1", "--set key must be a setting like"),
])
def test_bad_override_syntax(text, message):
    with pytest.raises(ConfigError, match=message):
        parse_override(text)


def test_apply_overrides_copies_and_validates_through_the_config():
    raw = {"federated": {"lr": 0.5}}
    document = apply_overrides(raw, ["federated.lr=0.1", ("data.dataset", "synthetic"), "seed=2"])
    assert raw == {"federated": {"lr": 0.5}}
    assert document == {"federated": {"lr": 0.1}, "data": {"dataset": "synthetic"}, "seed": 2}
    # a typo in an override is blamed on --set, not on the preset or file it overrides
    for typo, hint in (("federated.lrr=1", "federated.lr"), ("sed=1", "seed")):
        with pytest.raises(ConfigError, match=f"unknown setting '{typo[:-2]}' in --set; did you mean '{hint}'"):
            load_preset("synthetic", [typo])
    with pytest.raises(ConfigError,
                       match="unknown setting 'federatd.lr' in --set; did you mean 'federated.lr'"):
        apply_overrides({}, ["federatd.lr=1"])
    with pytest.raises(ConfigError, match="needs a setting of the table"):
        apply_overrides({}, ["federated=1"])


# --- TOML values --------------------------------------------------------------------------------------------

@settings(max_examples=200, deadline=None)
@given(st.one_of(st.text(), st.booleans(), st.integers(min_value=-2**63, max_value=2**63 - 1),
                 st.floats(allow_nan=False)))
def test_toml_value_reads_back_exactly(value):
    text = f"value = {toml_value(value)}"
    read = tomllib.loads(text)["value"]
    assert read == value and type(read) is type(value), (text, read, value)


def test_toml_value_special_floats():
    assert math.isnan(tomllib.loads(f"v = {toml_value(math.nan)}")["v"])
    assert tomllib.loads(f"v = {toml_value(-math.inf)}")["v"] == -math.inf
    with pytest.raises(TypeError, match="cannot write"):
        toml_value(None)
