"""Smoke test of examples/stc_mnist.py: two rounds on real and on synthetic data."""

import importlib.util
import json
from pathlib import Path

import pytest

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "stc_mnist.py"


def load_example():
    spec = importlib.util.spec_from_file_location("stc_mnist_example", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("dataset", ["fashion-mnist", "synthetic"])
def test_two_rounds_write_history_and_figure(shared_data, tmp_path, capsys, dataset):
    example = load_example()
    methods = ["stc_updown", "fedavg"]
    results = example.main(["--dataset", dataset, "--rounds", "2", "--data-dir", str(shared_data),
                            "--out", str(tmp_path), "--method", *methods])
    assert set(results) == set(methods) and all(len(h) == 2 for h in results.values())
    saved = json.loads((tmp_path / "history.json").read_text())
    assert saved["histories"]["stc_updown"][1]["round"] == 2
    assert (tmp_path / "accuracy.png").stat().st_size > 1000
    out = capsys.readouterr().out
    assert "round 2/2" in out and "bits up" in out and "estimated time left" in out
    assert 0 < results["stc_updown"][-1]["test_accuracy"] <= 1
