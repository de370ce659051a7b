"""examples/stc_mnist.py: the same experiment API as `fedsim run` (presets, run folders, resume, one-line
errors), and its default settings showing STC at its best on the offline data."""

import json
import tomllib

import pytest

from fedsim.config import load_preset
from tests.examples.conftest import load_example


def test_synthetic_stc_is_within_five_points_of_fedavg_and_reruns_skip(tmp_path, capsys):
    example = load_example("stc_mnist.py")
    args = ["--dataset", "synthetic", "--rounds", "20", "--method", "stc_updown", "fedavg", "--out", str(tmp_path)]
    assert example.main(args) == 0
    out = capsys.readouterr().out
    assert "settings (synthetic preset): synthetic, 30 clients, partition natural" in out
    assert "p_up 0.05, p_down 0.1" in out
    assert "clients" in out and "class" in out.lower()           # the whole partition report, not a header
    assert "[stc_updown] round 20/20" in out
    summaries = {m: json.loads((tmp_path / m / "summary.json").read_text()) for m in ("stc_updown", "fedavg")}
    stc, fedavg = (summaries[m]["final_test_accuracy"] for m in ("stc_updown", "fedavg"))
    assert stc >= fedavg - 0.05, (stc, fedavg)
    assert summaries["stc_updown"]["bits"] < summaries["fedavg"]["bits"] / 20
    assert (tmp_path / "federated_accuracy.png").stat().st_size > 10_000
    # the same command again: finished runs are not run again
    before = (tmp_path / "fedavg" / "history.jsonl").read_bytes()
    assert example.main(args + ["--quiet"]) == 0
    assert (tmp_path / "fedavg" / "history.jsonl").read_bytes() == before
    assert "round 1/20" not in capsys.readouterr().out
    # other settings into the same folders: refused in one line naming them, not answered with the old runs
    assert example.main(["--dataset", "synthetic", "--rounds", "5", "--method", "stc_updown", "fedavg",
                         "--out", str(tmp_path), "--quiet"]) == 2
    captured = capsys.readouterr()
    assert captured.err.count("\n") == 1 and "holds a run of other settings (federated.rounds: 20 -> 5)" in \
        captured.err and "test acc" not in captured.out, captured
    assert (tmp_path / "fedavg" / "history.jsonl").read_bytes() == before


def test_errors_are_one_line_like_the_cli(tmp_path, capsys):
    example = load_example("stc_mnist.py")
    status = example.main(["--dataset", "synthetic", "--set", "federated.lrr=0.1", "--out", str(tmp_path)])
    err = capsys.readouterr().err
    assert status == 2 and err.count("\n") == 1 and "did you mean 'federated.lr'" in err, err
    status = example.main(["--dataset", "fashion-mnist", "--data-dir", str(tmp_path / "nowhere"),
                           "--out", str(tmp_path)])
    err = capsys.readouterr().err
    assert status == 2 and err.count("\n") == 1 and "data_dir" in err and "Traceback" not in err, err
    status = example.main(["--dataset", "synthetic", "--method", "stc_updown", "fedavg", "stc_updown",
                           "--out", str(tmp_path)])
    err = capsys.readouterr().err
    assert status == 2 and err == "stc_mnist.py: error: --method must name each method once; repeated: stc_updown\n"
    with pytest.raises(SystemExit) as stopped:       # argparse's errors too: one line, no usage block
        example.main(["--method", "bogus"])
    err = capsys.readouterr().err
    assert stopped.value.code == 2 and err.count("\n") == 1 and ": error: argument --method: invalid choice" in err, err


def test_two_rounds_on_fashion_mnist(shared_data, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("FEDSIM_DATA", str(shared_data))
    example = load_example("stc_mnist.py")
    assert example.main(["--dataset", "fashion-mnist", "--rounds", "2", "--out", str(tmp_path),
                         "--method", "stc_updown", "qsgd_up"]) == 0
    out = capsys.readouterr().out
    assert "settings (stc-mnist preset): fashion-mnist, 50 clients" in out and "[qsgd_up] round 2/2" in out
    for method in ("stc_updown", "qsgd_up"):
        assert 0 < json.loads((tmp_path / method / "summary.json").read_text())["final_test_accuracy"] <= 1


def test_model_option_sets_the_model_of_every_run(tmp_path, capsys, monkeypatch):
    """--model mlp (choices from the model registry) with its default hidden layer, or --hidden; without
    --model the preset's model is untouched. (No figure: the first test draws it.)"""
    monkeypatch.setattr("fedsim.plot.plot_runs", lambda runs, out, **options: [])
    example = load_example("stc_mnist.py")
    assert example.main(["--dataset", "synthetic", "--rounds", "2", "--method", "stc_updown", "--model", "mlp",
                         "--hidden", "16", "8", "--out", str(tmp_path / "mlp"), "--quiet"]) == 0
    assert "settings (synthetic preset): synthetic, model mlp 16-8 relu (glorot init), 30 clients" in \
        capsys.readouterr().out
    config = tomllib.loads((tmp_path / "mlp" / "stc_updown" / "config.toml").read_text())
    assert config["model"]["name"] == "mlp" and config["model"]["hidden"] == [16, 8], config["model"]
    default_hidden = example.config_of(example.parse_args(["--model", "mlp"]), "stc_updown")
    assert default_hidden.model.name == "mlp" and default_hidden.model.hidden == (200,)
    unchanged = example.config_of(example.parse_args(["--dataset", "synthetic"]), "stc_updown")
    assert unchanged == load_preset("synthetic", ["seed=0", "federated.method=stc_updown"])
    assert example.main(["--dataset", "synthetic", "--model", "softmax", "--hidden", "5", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "hidden must be empty for model 'softmax'" in err, err
