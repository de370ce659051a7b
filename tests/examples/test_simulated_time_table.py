"""The README's table of simulated seconds to a test accuracy ("Where compression pays, measured") is what
its sweeps compute, every cell to the README's decimal: the softmax sweep is rerun in full here (10 runs of
100 rounds on Fashion-MNIST, about 20 s of CPU); the MLP sweep (about 90 s on two workers) on demand
(``python -m pytest -m reproduce tests/examples/test_simulated_time_table.py``)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.examples.conftest import REPO, require_readme_blas

TARGETS = (0.70, 0.75)
PROFILES = ("3g", "wifi")
# The table's columns: per model, per profile, per target (README order).
MODELS = {"softmax": 0, "mlp": 4}


def readme_table() -> dict[str, list[str]]:
    """method -> its eight cells (softmax 3g 0.70, 0.75, wifi 0.70, 0.75, then the same for the MLP)."""
    text = (REPO / "README.md").read_text(encoding="utf-8")
    start = text.index("```", text.index("Simulated seconds to reach a test"))
    block = text[start + 3:text.index("```", start + 3)].strip().splitlines()
    rows = {}
    for line in block[2:]:                        # two header lines
        method, *cells = line.split()
        assert len(cells) == 8, line
        rows[method] = cells
    return rows


def seconds_to(history: list[dict], target: float) -> str:
    """Simulated seconds at the first evaluated round with test accuracy >= target, as the README writes it."""
    reached = next((r["simulated_seconds"] for r in history if r.get("test_accuracy", -1.0) >= target), None)
    return "-" if reached is None else f"{reached:.1f}"


def check_model(model: str, tmp_path: Path, shared_data: Path) -> None:
    require_readme_blas()
    sweep = REPO / "examples" / "sweeps" / f"simulated_time_{model}.toml"
    out = tmp_path / model
    env = {**os.environ, "FEDSIM_DATA": str(shared_data), "FEDSIM_CACHE": str(tmp_path / "cache")}
    finished = subprocess.run([sys.executable, "-m", "fedsim", "sweep", str(sweep), "--out", str(out),
                               "--workers", "1", "--quiet"], cwd=tmp_path, env=env, capture_output=True, text=True,
                              timeout=1800, check=False)
    assert finished.returncode == 0, finished.stderr[-3000:]
    manifest = json.loads((out / "manifest.json").read_text())
    computed = {}
    for entry in manifest["runs"]:
        values = entry["values"]
        history = [json.loads(line) for line in (out / entry["folder"] / "history.jsonl").read_text().splitlines()]
        column = MODELS[model] + 2 * PROFILES.index(values["system.profile"])
        for i, target in enumerate(TARGETS):
            computed[values["federated.method"], column + i] = seconds_to(history, target)
    table = readme_table()
    assert {method for method, _ in computed} == set(table)
    for (method, column), cell in computed.items():
        assert table[method][column] == cell, (method, column, table[method][column], cell)


def test_the_softmax_columns_are_what_the_sweep_computes(tmp_path, shared_data):
    check_model("softmax", tmp_path, shared_data)


@pytest.mark.reproduce
def test_the_mlp_columns_are_what_the_sweep_computes(tmp_path, shared_data):
    check_model("mlp", tmp_path, shared_data)
