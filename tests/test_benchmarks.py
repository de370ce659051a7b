"""Smoke tests of the benchmark suite: it runs, validates and reports; never how fast anything is.

``python -m benchmarks.run --smoke`` runs every suite on tiny inputs into a temporary folder; the other
tests check that validation catches deliberately wrong implementations (a benchmark must refuse to time
implementations that disagree) and that the target check reads the numbers the right way round.
"""

import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from benchmarks import common, kernels, report, rounds  # noqa: E402
from benchmarks import sweep as benchmarks_sweep  # noqa: E402
from benchmarks.common import ValidationError  # noqa: E402

pytest.importorskip("torch")


def _git_status() -> str | None:
    try:
        return subprocess.run(["git", "status", "--porcelain"], cwd=REPO, capture_output=True, text=True,
                              timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        return None


def test_smoke_run_writes_validated_results_and_tables_and_leaves_the_checkout_alone(tmp_path):
    """The README's command as a user runs it (no --out): results into the user cache, no tracked file
    touched; then the tables are regenerated into a README of our own, as --write-readme would."""
    environment = dict(os.environ)
    environment["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), environment.get("PYTHONPATH")]))
    environment["FEDSIM_CACHE"] = str(tmp_path / "cache")
    status_before = _git_status()
    finished = subprocess.run([sys.executable, "-m", "benchmarks.run", "--smoke"], cwd=REPO, env=environment,
                              capture_output=True, text=True, timeout=240)
    assert finished.returncode == 0, finished.stderr[-3000:]
    assert _git_status() == status_before, "the benchmark run changed files of the checkout"
    out = tmp_path / "cache" / "benchmarks" / "smoke"
    assert (out / "tables.md").read_text().count("### Kernels") == 1
    results = {suite: json.loads((out / f"{suite}.json").read_text())
               for suite in ("kernels", "rounds", "scale", "compile", "products", "sweep")}
    readme = tmp_path / "README.md"
    readme.write_text("# hand-written part\n\nkept as is\n")
    report.update_readme(readme, results)
    for suite, payload in results.items():
        machine = payload["machine"]
        assert payload["mode"] == "smoke", suite
        assert machine["date"] and machine["versions"]["numpy"] and machine["versions"]["torch"], suite
        # the products suite compares against NumPy's BLAS only, the sweep suite times fedsim alone: neither
        # loads torch
        assert machine["threads"]["requested"] == 1, suite
        assert machine["threads"]["torch"] == ("not loaded" if suite in ("products", "sweep") else 1), suite
        assert machine["threads"]["blas_fixed_by_environment"], suite
    cases = results["kernels"]["cases"]
    assert {case["kernel"] for case in cases} == set(kernels.all_kernels())
    assert all(case["validated"] for case in cases)
    for case in cases:
        assert set(case["timings"]) >= {"fedsim", "copy"}, case
        assert all(t["median"] > 0 for t in case["timings"].values()), case
    stc = results["rounds"]["stc_round"]
    assert stc["round"]["fedsim"]["repeats"] == rounds.SETTINGS["smoke"]["repeats"]
    assert stc["torch_formulations"]["forward"]["chosen"] in stc["torch_formulations"]["forward"]["seconds"]
    assert results["rounds"]["laq_iteration"]["validated_iterations"] > 0
    for name, parts in (("stc_round", {"gather", "forward", "backward"}), ("laq_iteration", {"forward", "backward"})):
        products = results["rounds"][name]["products_alone"]
        for side in ("fedsim", "torch"):
            assert set(products[side]["parts"]) == parts, (name, side)
            assert products[side]["total"] == pytest.approx(sum(products[side]["parts"].values()))
        assert results["rounds"][name]["summary"]["speedup_ceiling_with_these_products"] > 0
    assert results["scale"]["configurations"][0]["memory"]["peak_rss_bytes"] > 0
    assert results["compile"]["summary"]["cold_compile_seconds"] > 0
    text = readme.read_text()
    assert text.startswith("# hand-written part\n\nkept as is\n")
    assert text.count(report.BEGIN) == 1 and text.count(report.END) == 1
    products = results["products"]
    for experiment in ("columns", "fixed_order", "client_blocks", "sparse"):
        assert len(products[experiment]) >= 2 and all(t > 0 for t in products[experiment].values()), experiment
    sweep = results["sweep"]
    ways = ["sequential", "pool"] + ([] if sweep["skipped"] else ["dask"])
    assert sweep["validated"] and sweep["ways"] == ways and set(sweep["timings"]) == set(ways)
    assert sweep["rounds_per_run"] == benchmarks_sweep.SETTINGS["smoke"]["overrides"]["federated.rounds"]
    assert all(sweep["timings"][way]["median"] > 0 for way in ways)
    assert sweep["timings"]["pool"]["repeats"] == benchmarks_sweep.SETTINGS["smoke"]["repeats"]
    for way in ways[1:]:
        summary = sweep["summary"]
        ratio = summary[f"{way}_seconds"] / summary["sequential_seconds"]
        assert summary[f"{way}_over_sequential"] == pytest.approx(ratio)
        assert 0 < sweep["run_seconds"][way]["median"] <= sweep["timings"][way]["median"] * benchmarks_sweep.WORKERS
    if sweep["skipped"]:        # on a machine without dask.distributed (CI installs it)
        assert sweep["summary"]["dask_over_sequential"] is None and "dask" in sweep["skipped"]
    targets = [row["target"] for row in report.targets(results)]
    assert sum(target.startswith("Sweep of 8 runs") for target in targets) == len(ways) - 1
    for heading in ("### Targets", "### Kernels", "### Rounds", "### Scale", "### JIT compile time",
                    "ceiling: torch round / fedsim products", "### Hand-written products against BLAS",
                    "### Sweeps", "| local pool, 2 workers |"):
        assert heading in text
    # regenerating replaces the block instead of appending a second one
    report.update_readme(readme, results)
    assert readme.read_text().count(report.BEGIN) == 1


def _wrong_implementations():
    """(kernel, implementation name, a factory of a wrong implementation from the case's inputs)."""
    from benchmarks import torch_reference as reference
    from fedsim.kernels import golomb, sparsify

    def stc_one_short(inputs):           # keeps k - 1 entries
        return lambda: sparsify.ternarize_numpy(inputs["x"], inputs["k"] - 1, inputs["positions_out"]["numpy"],
                                                inputs["signs_out"]["numpy"])

    def top_k_mean_off(inputs):          # a mean off by 1e-4 (relative)
        def call():
            threshold, mu, count = reference.top_k_threshold(inputs["x_torch"], inputs["k"])
            return threshold, mu * 1.0001, count
        return call

    def sign_of_zero_is_plus(inputs):    # sign(0) = +1
        def call():
            inputs["signs_out"]["numpy"][:] = np.where(inputs["x"] >= 0, 1, -1)
            return int(np.count_nonzero(inputs["x"] == 0))
        return call

    def laq_three_bits(inputs):
        return lambda: reference.laq_quantize(inputs["gradients_torch"], inputs["previous_torch"], 3)

    def golomb_wrong_parameter(inputs):
        return lambda: golomb.golomb_rice_encode_numpy(inputs["positions"], inputs["parameter"] + 1)

    return [("stc_exact", "numpy", stc_one_short), ("top_k_threshold", "torch", top_k_mean_off),
            ("sign", "numpy", sign_of_zero_is_plus), ("laq_quantize", "torch", laq_three_bits),
            ("golomb_encode", "numpy", golomb_wrong_parameter)]


@pytest.mark.parametrize("kernel, name, wrong", _wrong_implementations(),
                         ids=[f"{kernel}-{name}" for kernel, name, _ in _wrong_implementations()])
def test_validation_catches_a_wrong_implementation(kernel, name, wrong):
    dtype = "int64" if kernel.startswith("golomb") else "float32"
    p = 0.01 if kernel in kernels.SPARSE_KERNELS else None
    case = kernels.make_case(kernel, 20_000, dtype, p)
    case.validate()                                    # the real implementations agree
    case.implementations[name] = wrong(case.inputs)
    with pytest.raises(ValidationError):
        case.validate()
    with pytest.raises(ValidationError):
        kernels.run_case(case, repeats=1)              # and nothing gets timed


def test_round_validation_catches_a_wrong_torch_round(monkeypatch):
    from benchmarks import torch_reference

    original = torch_reference.stc_rows

    def one_more(accumulated, k):                      # STC that keeps k + 1 entries per row
        return original(accumulated, k + 1)
    monkeypatch.setattr(torch_reference, "stc_rows", one_more)
    with pytest.raises(ValidationError, match="STC round"):
        rounds.stc_round_benchmark("smoke")


def test_targets_read_ratios_the_right_way_round():
    def case(kernel, dtype, fedsim, copy, torch=None):
        timings = {"fedsim": {"median": fedsim}, "copy": {"median": copy}}
        if torch is not None:
            timings["torch"] = {"median": torch}
        return {"kernel": kernel, "size": 10_000_000, "dtype": dtype,
                "p": None if kernel == "laq_quantize" else 0.001, "timings": timings}

    results = {"kernels": {"cases": [case("stc_exact", "float32", 2.0, 1.0, torch=20.0),
                                     case("top_k_threshold", "float32", 4.0, 1.0, torch=10.0),
                                     case("laq_quantize", "float64", 3.0, 1.0)]}}
    rows = {row["target"]: row for row in report.targets(results)}
    assert rows["STC, 1e7 float32, p = 0.001: time / numpy.copy"]["met"]
    assert rows["STC, 1e7 float32, p = 0.001: speed-up over torch.topk"]["met"]
    assert not rows["Top-k selection, 1e7 float32, p = 0.001: time / numpy.copy"]["met"]
    assert not rows["Top-k selection, 1e7 float32, p = 0.001: speed-up over torch.topk"]["met"]
    laq = rows["LAQ quantizer, 1e7 float64: time / numpy.copy"]
    assert not laq["met"] and laq["status"] == "missed: 1.50x the bound"

    sweep = {"settings": {"runs": 8, "workers": 2},
             "summary": {"pool_over_sequential": 0.5, "dask_over_sequential": 0.66}}
    rows = {row["target"]: row for row in report.targets({"sweep": sweep})}
    assert rows["Sweep of 8 runs on 2 local workers: wall time / sequential"]["met"]
    dask = rows["Sweep of 8 runs on Dask with 2 workers: wall time / sequential"]
    assert not dask["met"] and dask["status"] == "missed: 1.10x the bound"
    sweep["summary"]["dask_over_sequential"] = None            # dask not installed: no Dask target
    assert len(report.targets({"sweep": sweep})) == 1


def test_sweep_validation_catches_a_differing_history():
    reference = {"run-a": [{"round": 1, "train_loss": 0.5}, {"round": 2, "train_loss": 0.25}]}
    benchmarks_sweep.compare(reference, {"run-a": [dict(record) for record in reference["run-a"]]}, "pool")
    with pytest.raises(ValidationError, match="record 2 differs.*train_loss"):
        changed = [reference["run-a"][0], {"round": 2, "train_loss": 0.2500001}]
        benchmarks_sweep.compare(reference, {"run-a": changed}, "pool")
    with pytest.raises(ValidationError, match="1 records"):
        benchmarks_sweep.compare(reference, {"run-a": reference["run-a"][:1]}, "dask")
    one_run = SimpleNamespace(runs=[SimpleNamespace(folder_name="run-a", label="a")])
    with pytest.raises(ValidationError, match="did not complete"):
        benchmarks_sweep.histories(one_run, Path("."), {"run-a": {"status": "failed"}}, "dask")


def test_thread_environment_and_bad_settings():
    environment = common.thread_environment(3, base={})
    assert all(environment[name] == "3" for name in common.THREAD_VARIABLES)
    with pytest.raises(ValueError, match="threads"):
        common.thread_environment(0)
    with pytest.raises(ValueError, match="mode"):
        common.check_mode("fast")
    with pytest.raises(ValueError, match="kernel"):
        kernels.make_case("fft", 100, "float32", None)
