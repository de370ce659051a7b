"""Smoke tests of the local epoch benchmark (benchmarks/local_epoch.py): one small case validates and
reports, a wrong torch round is refused before anything is timed, and its targets read the right way round."""

import numpy as np
import pytest

from benchmarks import local_epoch, report
from benchmarks.common import ValidationError
from benchmarks.rounds import load_or_synthesize, peak_here

torch = pytest.importorskip("torch")
SMOKE = dict(local_epoch.SETTINGS["smoke"], repeats=1)


@pytest.fixture(scope="module")
def dataset():
    data = load_or_synthesize("laq", None, SMOKE["synthetic_shape"], SMOKE["n_test"])
    x_train, x_test = (np.asarray(x, np.float32) for x in (data.dataset.x_train, data.dataset.x_test))
    import dataclasses
    return dataclasses.replace(data.dataset, x_train=x_train, x_test=x_test)


def test_a_case_validates_times_and_meets_the_report(dataset):
    case = local_epoch.case_benchmark(torch, dataset, 10, 20, SMOKE, peak_here(128, np.float32, repeats=1))
    assert case["steps"] == len(dataset.y_train) // 10 // 20
    assert set(case["rounds"]) == {"fedsim", "fedsim_general", "torch_per_client", "torch_batched"}
    summary = case["summary"]
    seconds = summary["round_seconds"]
    assert summary["speedup_vs_torch_per_client"] == seconds["torch_per_client"] / seconds["fedsim"]
    assert summary["step_over_floor"] == case["step_floor"]["multiple"]["fedsim"]
    for name in ("torch_per_client", "torch_batched"):
        assert case["validation"][name]["server_weights_max_abs_difference"] <= \
            1e-4 * case["validation"][name]["server_weights_max_abs"]
    results = {"data": "synthetic", "peak": {"gflops": 1.0, "size": 128}, "cases": [case]}
    rows = report.local_epoch_targets(results)
    assert [row["bound"] for row in rows] == [">= 10", ">= 3", "<= 2"]
    assert rows[0]["value"] == summary["speedup_vs_torch_per_client"]
    assert local_epoch.table(results)[-1].startswith("| 10 x 20 (10) |")


def test_a_wrong_torch_round_is_refused(dataset, monkeypatch):
    right = local_epoch.TorchBatched.round

    def wrong(self, batch_rows):
        evaluation = right(self, batch_rows)
        self.weights[0] += 0.5                              # one weight off
        return evaluation
    monkeypatch.setattr(local_epoch.TorchBatched, "round", wrong)
    with pytest.raises(ValidationError, match="server weights"):
        local_epoch.case_benchmark(torch, dataset, 10, 20, SMOKE, {"gflops": 1.0, "dtype": "float32"})
