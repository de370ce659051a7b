"""Smoke tests of the benchmark suite: it runs, validates and reports; never how fast anything is.

``python -m benchmarks.run --smoke --threads 1 2`` runs every suite on tiny inputs into a temporary folder,
once for the module (:func:`smoke_run`: the first two tests read it); the other tests check that validation
catches deliberately wrong implementations (a benchmark must refuse to time implementations that disagree) and
that the target check reads the numbers the right way round.
"""

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from benchmarks import common, kernels, report, round_parts, rounds
from benchmarks import sweep as benchmarks_sweep
from benchmarks.common import ValidationError

REPO = Path(__file__).resolve().parents[2]
pytest.importorskip("torch")


def _git_status() -> str | None:
    try:
        return subprocess.run(["git", "status", "--porcelain"], cwd=REPO, capture_output=True, text=True,
                              timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        return None


def _check_startup(compiled: dict, readme) -> None:
    """The compile suite's start-up part: cold and warm start of the smoke command as fresh processes, with
    a breakdown that adds up, its summary fields, its target row and its table."""
    from benchmarks import compile as benchmarks_compile
    startup = compiled["startup"]
    assert startup["repeats"] == benchmarks_compile.STARTUP["smoke"]["repeats"]
    (label, arguments, steps), = benchmarks_compile.STARTUP["smoke"]["runs"]
    measured = startup["runs"][label]
    assert measured["command"] == ["fedsim", "run", *arguments] and measured["steps"] == steps
    for start in ("cold", "warm"):
        assert len(measured[start]["samples"]) == startup["repeats"]
        for sample in measured[start]["samples"]:
            assert sample["steps"] == steps
            assert all(sample[part] >= 0 for part in benchmarks_compile.STARTUP_PARTS), sample
            inside = (sample["import_seconds"] + sample["data_seconds"] + sample["first_round_seconds"]
                      + sample["rest_seconds"])
            assert sample["wall_seconds"] == pytest.approx(sample["interpreter_seconds"] + inside)
            assert sample["other_rounds_seconds"] <= sample["rest_seconds"]
        assert set(measured[start]["median"]) == set(benchmarks_compile.STARTUP_PARTS)
        assert compiled["summary"][f"startup_{label}_{start}_seconds"] == measured[start]["median"]["wall_seconds"]
    rows = [row for row in report.targets({"compile": compiled}) if row["target"].startswith("Warm start")]
    assert len(rows) == 1 and rows[0]["bound"] == "<= 3" and "(cold start " in rows[0]["measured"]
    assert rows[0]["value"] == measured["warm"]["median"]["wall_seconds"]
    text = readme.read_text()
    assert "### Time to a first result" in text and f"`fedsim run {' '.join(arguments)}` | warm |" in text


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
    """The README's smoke command as a user runs it (no --out: results into the user cache), at two thread
    counts: every suite at 1 thread, kernels and rounds again at 2. Run once for the tests that read it.
    A results file of an earlier run at another count (4 threads) is left in the folder first: the run
    must replace it. Returns the finished process, the results folder and the checkout's git status
    before and after."""
    cache = tmp_path_factory.mktemp("smoke") / "cache"
    out = cache / "benchmarks" / "smoke"
    out.mkdir(parents=True)
    (out / "kernels.threads-4.json").write_text("{}")         # an earlier run's: replaced, not reported
    environment = dict(os.environ)
    environment["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), environment.get("PYTHONPATH")]))
    environment["FEDSIM_CACHE"] = str(cache)
    status_before = _git_status()
    finished = subprocess.run([sys.executable, "-m", "benchmarks.run", "--smoke", "--threads", "1", "2"], cwd=REPO,
                              env=environment, capture_output=True, text=True, timeout=600)
    return SimpleNamespace(finished=finished, out=out, status_before=status_before, status_after=_git_status())


def test_smoke_run_writes_validated_results_and_tables_and_leaves_the_checkout_alone(smoke_run, tmp_path):
    """The smoke run: results into the user cache, no tracked file touched; then the tables are regenerated
    into a README of our own, as --write-readme would."""
    assert smoke_run.finished.returncode == 0, smoke_run.finished.stderr[-3000:]
    assert smoke_run.status_after == smoke_run.status_before, "the benchmark run changed files of the checkout"
    out = smoke_run.out
    assert len(re.findall(r"^### Kernels$", (out / "tables.md").read_text(), flags=re.MULTILINE)) == 1
    results = {suite: json.loads((out / f"{suite}.json").read_text())
               for suite in ("kernels", "rounds", "storage", "scale", "compile", "products", "sweep")}
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
        assert machine["threads"]["torch"] == ("not loaded" if suite in ("products", "sweep", "storage") else 1), suite
        assert machine["threads"]["blas_fixed_by_environment"], suite
        _check_blas_record(machine, suite)
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
    _check_round_floors_and_baselines(results["rounds"])
    _check_mlp(results["rounds"], out / "tables.md")
    storage = results["storage"]
    laq_storage = storage["laq_iteration"]
    assert laq_storage["validated_iterations"] > 0 and storage["stc_round"]["validated_rounds"] > 0
    assert laq_storage["bytes_per_gradient"]["float64"] == 8 * laq_storage["bytes_per_gradient"]["uint8"]
    assert laq_storage["speedup"] == pytest.approx(laq_storage["iteration"]["float64"]["median"]
                                                   / laq_storage["iteration"]["uint8"]["median"])
    storage_rows = [row for row in report.targets(results) if "storage = uint8" in row["target"]]
    assert len(storage_rows) == 1 and storage_rows[0]["value"] == laq_storage["speedup"]
    assert results["scale"]["configurations"][0]["memory"]["peak_rss_bytes"] > 0
    assert results["compile"]["summary"]["cold_compile_seconds"] > 0
    _check_startup(results["compile"], readme)
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
                    "### Sweeps", "| local pool, 2 workers |", "### 8-bit storage",
                    "fedsim / floor | batched torch / floor",
                    "| per-client torch ms |", "in a child process with OPENBLAS_CORETYPE and OPENBLAS_L2_SIZE removed",
                    "BLAS loaded (threadpoolctl): openblas"):
        assert heading in text
    # regenerating replaces the block instead of appending a second one
    report.update_readme(readme, results)
    assert readme.read_text().count(report.BEGIN) == 1


def _positive(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and np.isfinite(value) and value > 0


def _check_blas_record(machine: dict, suite: str) -> None:
    """The BLAS record every suite shares: threadpoolctl's view of each loaded BLAS, and the OpenBLAS kernel
    variables of the environment as they were (never set by the benchmarks)."""
    assert machine["blas"], suite
    for blas in machine["blas"]:
        assert set(blas) >= {"internal_api", "version", "architecture", "num_threads", "filepath"}, suite
        assert blas["internal_api"] and blas["version"] and blas["architecture"], (suite, blas)
        assert blas["num_threads"] == 1, (suite, blas)                  # --threads 1
        assert blas["filepath"] and "/" not in blas["filepath"], (suite, blas)     # a file name, no path
    assert machine["blas_environment"] == {name: os.environ.get(name) for name in common.BLAS_KERNEL_VARIABLES}
    from fedsim.data.cache import numpy_simd
    assert machine["versions"]["numpy_simd"] == numpy_simd(), suite


def _check_floor(floor: dict, names: set) -> None:
    """A floor's pieces are positive and finite, the floor is the larger of its two parts, and every
    multiple is that implementation's time over the floor."""
    for key in ("bytes", "read_seconds", "bandwidth_gbps", "memory_seconds", "flops", "peak_gflops",
                "compute_seconds", "floor_seconds"):
        assert _positive(floor[key]), (key, floor)
    assert floor["bandwidth_gbps"] * 1e9 == pytest.approx(floor["bytes"] / floor["read_seconds"])
    assert floor["memory_seconds"] == pytest.approx(floor["bytes"] / (floor["bandwidth_gbps"] * 1e9))
    assert floor["compute_seconds"] == pytest.approx(floor["flops"] / (floor["peak_gflops"] * 1e9))
    assert floor["floor_seconds"] == max(floor["memory_seconds"], floor["compute_seconds"])
    assert floor["binds"] == ("memory" if floor["memory_seconds"] >= floor["compute_seconds"] else "compute")
    assert set(floor["seconds"]) == set(floor["multiple"]) == names
    for name in names:
        assert _positive(floor["seconds"][name])
        assert floor["multiple"][name] == pytest.approx(floor["seconds"][name] / floor["floor_seconds"])


def _check_round_floors_and_baselines(rounds_results: dict) -> None:
    stc, laq = rounds_results["stc_round"], rounds_results["laq_iteration"]
    settings = rounds.SETTINGS["smoke"]
    # the per-client torch loop: validated like the batched round, then timed with it
    for name in ("torch", "torch_per_client"):
        check = stc["validation"][name]
        assert check["passed"], name
        assert 0 <= check["server_weights_max_abs_difference"] <= 1e-4 * check["server_weights_max_abs"] + 1e-5
        assert check["bits_up"] == stc["validation"]["torch"]["bits_up"] > 0
        assert check["bits_down"] == stc["validation"]["torch"]["bits_down"] > 0
    assert set(stc["round"]) == set(stc["evaluation"]) == {"fedsim", "torch", "torch_per_client"}
    assert stc["round"]["torch_per_client"]["repeats"] == settings["repeats"]
    assert all(_positive(t) for t in stc["round"]["torch_per_client"]["samples"])
    # floors: the pieces, the multiples, and the with-evaluation floor adds both parts' bytes, reads and flops
    three = {"fedsim", "torch", "torch_per_client"}
    for key in ("round", "evaluation", "round_with_evaluation"):
        _check_floor(stc["floor"][key], three)
        assert stc["floor"][key]["peak_gflops"] == stc["peak_matmul"]["gflops"]
        assert stc["floor"][key]["peak_dtype"] == "float32"
    parts = stc["floor"]["round"], stc["floor"]["evaluation"]
    combined = stc["floor"]["round_with_evaluation"]
    for key in ("bytes", "flops", "read_seconds"):
        assert combined[key] == pytest.approx(parts[0][key] + parts[1][key])
    for name in three:
        both = stc["round"][name]["median"] + stc["evaluation"][name]["median"]
        assert combined["seconds"][name] == pytest.approx(both)
    n_rows = stc["setting"]["participants"] * stc["setting"]["batch"] * stc["setting"]["local_iterations"]
    assert stc["floor"]["round"]["bytes"] == n_rows * stc["setting"]["features"] * 4
    assert stc["floor"]["round"]["flops"] == stc["flops"]["training"]
    assert stc["floor"]["evaluation"]["flops"] == stc["flops"]["evaluation"]
    assert stc["read"]["round"]["repeats"] == settings["repeats"]
    for key in ("iteration", "evaluation"):
        _check_floor(laq["floor"][key], {"fedsim", "torch"})
        assert laq["floor"][key]["peak_gflops"] == laq["peak_matmul"]["gflops"]
        assert laq["floor"][key]["peak_dtype"] == "float64"
    workers, per_worker, features = settings["laq_shape"]
    assert laq["floor"]["iteration"]["bytes"] == workers * per_worker * features * 8
    assert laq["floor"]["iteration"]["seconds"]["fedsim"] == laq["iteration"]["fedsim"]["median"]
    assert laq["read"]["iteration"]["repeats"] == settings["laq_repeats"]
    # both peaks: here, and in a child process without the OpenBLAS kernel variables
    for result, dtype in ((stc, "float32"), (laq, "float64")):
        here, child = result["peak_matmul"], result["peak_matmul_without_kernel_variables"]
        for peak in (here, child):
            assert peak["dtype"] == dtype and peak["size"] == settings["peak_size"] and _positive(peak["gflops"])
            assert peak["blas"] and all(blas["architecture"] for blas in peak["blas"])
        assert here["environment"] == {name: os.environ.get(name) for name in common.BLAS_KERNEL_VARIABLES}
        assert child["removed_from_environment"] == here["environment"]
        assert child["environment"] == {name: None for name in common.BLAS_KERNEL_VARIABLES}
    # the summaries the targets read
    summary = stc["summary"]
    assert summary["round_with_evaluation_over_floor"] == combined["multiple"]["fedsim"]
    assert summary["round_speedup_vs_torch_per_client"] == pytest.approx(
        stc["round"]["torch_per_client"]["median"] / stc["round"]["fedsim"]["median"])
    assert summary["round_with_evaluation_speedup_vs_torch_per_client"] == pytest.approx(
        combined["seconds"]["torch_per_client"] / combined["seconds"]["fedsim"])
    assert laq["summary"]["iteration_over_floor"] == laq["floor"]["iteration"]["multiple"]["fedsim"]
    rows = {row["target"]: row for row in report.targets({"rounds": rounds_results}) if "mlp" not in row["target"]}
    floor_rows = [row for name, row in rows.items() if "/ its floor" in name]
    assert [row["value"] for row in floor_rows] == [laq["summary"]["iteration_over_floor"],
                                                   summary["round_with_evaluation_over_floor"]]
    assert all(row["bound"] == "<= 2" for row in floor_rows)
    per_client = [row for name, row in rows.items() if "per-client torch" in name]
    assert len(per_client) == 1 and per_client[0]["bound"] == ">= 10"
    assert per_client[0]["value"] == summary["round_with_evaluation_speedup_vs_torch_per_client"]
    assert sum("batched torch" in name for name in rows) == 2


def _check_mlp(rounds_results: dict, tables) -> None:
    """The MLP round and LAQ iteration: validated against fedsim, timed for the three implementations,
    their floors, the summaries the targets read, the four targets and their table rows."""
    from benchmarks import mlp
    settings = mlp.SETTINGS["smoke"]
    text = tables.read_text()
    targets = {row["target"]: row for row in report.targets({"rounds": rounds_results}) if "mlp" in row["target"]}
    for key, unit, repeats in (("mlp_round", "round", settings["repeats"]),
                               ("mlp_laq_iteration", "iteration", settings["laq_repeats"])):
        result = rounds_results[key]
        assert result["setting"]["layers"][1:-1] == list(settings["hidden"]), key
        timings = result[unit]
        assert set(timings) == set(mlp.IMPLEMENTATIONS), key
        assert all(timings[name]["repeats"] == repeats for name in mlp.IMPLEMENTATIONS), key
        _check_floor(result["floor"], set(mlp.IMPLEMENTATIONS))
        widths = result["setting"]["layers"]
        samples = result["floor"]["flops"] // mlp.training_flops(widths, 1)
        assert result["floor"]["flops"] == mlp.training_flops(widths, samples) == result["flops"] > 0, key
        summary = result["summary"]
        for name, ratio in (("torch", f"{unit}_speedup_vs_torch"), ("torch_per_client",
                                                                      f"{unit}_speedup_vs_torch_per_client")):
            assert summary[ratio] == pytest.approx(timings[name]["median"] / timings["fedsim"]["median"]), key
        assert summary[f"{unit}_over_floor"] == result["floor"]["multiple"]["fedsim"]
        label = report._mlp_label(result)
        rows = [row for name, row in targets.items() if name.startswith(label)]
        assert [(row["bound"], row["value"]) for row in rows] == [
            (">= 2", summary[f"{unit}_speedup_vs_torch"]), (">= 10", summary[f"{unit}_speedup_vs_torch_per_client"])]
        assert text.count(f"| {label} |") == 2, key           # its timing row and its floor row
    for name in ("torch", "torch_per_client"):
        check = rounds_results["mlp_round"]["validation"][name]
        assert check["passed"] and check["bits_up"] > 0 and check["bits_down"] > 0, name
    assert rounds_results["mlp_laq_iteration"]["validated_iterations"] == settings["laq_validate"]
    assert len(targets) == 4


def _gradients_one_percent_off(method):
    """``method``, which returns (losses, gradients), with its gradients 1% too large."""
    def wrong(*args, **kwargs):
        losses, gradients = method(*args, **kwargs)
        return losses, gradients * 1.01
    return wrong


def _clients_start_one_percent_off(patch, parameters) -> None:
    """The per-client torch loop with each client's ``parameters(model)`` starting at 1.01 times the server's."""
    from benchmarks import torch_reference
    load = torch_reference.TorchSTCClientLoop._load

    def off_by_a_percent(self, model):
        load(self, model)
        with torch_reference.torch.no_grad():
            for parameter in parameters(model):
                parameter.mul_(1.01)
    patch.setattr(torch_reference.TorchSTCClientLoop, "_load", off_by_a_percent)


def test_mlp_validation_catches_wrong_torch_gradients(monkeypatch):
    """The MLP benchmarks refuse to time torch implementations whose gradients are off by 1%: the batched
    round, the per-client loop's round (its clients start 1% off) and the per-worker LAQ iteration."""
    from benchmarks import mlp, torch_reference
    peak = {"gflops": 1.0, "dtype": "float32"}             # skips the peak measurement
    with monkeypatch.context() as patch:
        patch.setattr(torch_reference.MLPGradients, "__call__",
                      _gradients_one_percent_off(torch_reference.MLPGradients.__call__))
        with pytest.raises(ValidationError, match="MLP, batched torch"):
            mlp.mlp_round_benchmark("smoke", peak=peak)
    with monkeypatch.context() as patch:
        _clients_start_one_percent_off(patch, lambda model: model.parameters())
        with pytest.raises(ValidationError, match="MLP, per-client torch"):
            mlp.mlp_round_benchmark("smoke", peak=peak)
    with monkeypatch.context() as patch:
        patch.setattr(torch_reference.TorchLAQMLPRun, "_worker_gradients",
                      _gradients_one_percent_off(torch_reference.TorchLAQMLPRun._worker_gradients))
        with pytest.raises(ValidationError, match=r"MLP LAQ iterate theta\^1 \(torch_per_client vs fedsim\)"):
            mlp.mlp_laq_iteration_benchmark("smoke", peak={"gflops": 1.0, "dtype": "float64"})


def _wrong_implementations():
    """(kernel, implementation name, a factory of a wrong implementation from the case's inputs)."""
    from benchmarks import torch_reference as reference
    from fedsim.kernels import golomb, ternary

    def stc_one_short(inputs):           # keeps k - 1 entries
        return lambda: ternary._ternarize_numpy(inputs["x"], inputs["k"] - 1, inputs["positions_out"]["numpy"],
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

    def terngrad_minus_zero(inputs):     # -0.0 where a negative entry's level is 0 (fedsim: +0.0), equal as numbers
        import torch

        def call():
            decoded, scales = reference.terngrad(inputs["updates_torch"], inputs["segment_offsets"],
                                                 inputs["uniforms_torch"], inputs["clip"])
            return torch.where(decoded == 0, torch.copysign(decoded, inputs["updates_torch"]), decoded), scales
        return call

    return [("stc_exact", "numpy", stc_one_short), ("top_k_threshold", "torch", top_k_mean_off),
            ("sign", "numpy", sign_of_zero_is_plus), ("laq_quantize", "torch", laq_three_bits),
            ("golomb_encode", "numpy", golomb_wrong_parameter), ("terngrad", "torch", terngrad_minus_zero)]


@pytest.mark.parametrize("kernel, name, wrong", _wrong_implementations(),
                         ids=[f"{kernel}-{name}" for kernel, name, _ in _wrong_implementations()])
def test_validation_catches_a_wrong_implementation(kernel, name, wrong):
    dtype = "int64" if kernel.startswith("golomb") else "float32"
    p = 0.01 if kernels.CASES[kernel].sparse else None
    case = kernels.make_case(kernel, 20_000, dtype, p)
    case.validate()                                    # the real implementations agree
    case.implementations[name] = wrong(case.inputs)
    with pytest.raises(ValidationError):
        case.validate()
    with pytest.raises(ValidationError):
        kernels.run_case(case, repeats=1)              # and nothing gets timed


def test_round_validation_catches_a_wrong_torch_round_and_a_wrong_per_client_loop(monkeypatch):
    from benchmarks import torch_reference
    original = torch_reference.stc_rows
    with monkeypatch.context() as patch:               # STC that keeps k + 1 entries per row
        patch.setattr(torch_reference, "stc_rows", lambda accumulated, k: original(accumulated, k + 1))
        with pytest.raises(ValidationError, match="STC round"):
            rounds.stc_round_benchmark("smoke")
    _clients_start_one_percent_off(monkeypatch, lambda model: [model.weight])      # each client starts from 1.01 W
    with pytest.raises(ValidationError, match="per-client torch"):
        rounds.stc_round_benchmark("smoke")


def test_floor_is_the_larger_part_and_multiples_are_times_over_it():
    peak = {"gflops": 100.0, "dtype": "float32"}
    memory_bound = round_parts.floor(2_000_000_000, 0.2, 1e9, peak, {"fedsim": 0.5, "torch": 1.0})
    assert memory_bound["bandwidth_gbps"] == pytest.approx(10.0)
    assert memory_bound["compute_seconds"] == pytest.approx(0.01)
    assert memory_bound["floor_seconds"] == pytest.approx(0.2) and memory_bound["binds"] == "memory"
    assert memory_bound["multiple"] == pytest.approx({"fedsim": 2.5, "torch": 5.0})
    compute_bound = round_parts.floor(1_000_000, 0.001, 1e12, peak, {"fedsim": 20.0})
    assert compute_bound["floor_seconds"] == pytest.approx(10.0) and compute_bound["binds"] == "compute"
    assert compute_bound["multiple"]["fedsim"] == pytest.approx(2.0)


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

    round_results = {"stc_round": {"summary": {"round_with_evaluation_over_floor": 2.5,
                                               "round_with_evaluation_speedup_vs_torch": 2.2,
                                               "round_with_evaluation_speedup_vs_torch_per_client": 8.0}},
                     "laq_iteration": {"summary": {"iteration_over_floor": 1.5, "iteration_speedup_vs_torch": 1.6}}}
    rows = report.targets({"rounds": round_results})
    assert [(row["met"], row["bound"]) for row in rows] == [(True, "<= 2"), (False, ">= 2"), (False, "<= 2"),
                                                           (True, ">= 2"), (False, ">= 10")]
    assert rows[0]["target"].startswith("LAQ seed iteration: time / its floor")
    assert "batched torch" in rows[1]["target"] and "per-client torch" in rows[4]["target"]
    assert rows[2]["status"] == "missed: 1.25x the bound" and rows[4]["status"] == "missed: 80% of the bound"


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
    assert environment["OMP_WAIT_POLICY"] == "PASSIVE"
    with pytest.raises(ValueError, match="threads"):
        common.thread_environment(0)
    with pytest.raises(ValueError, match="mode"):
        common.check_mode("fast")
    with pytest.raises(ValueError, match="kernel"):
        kernels.make_case("fft", 100, "float32", None)


@pytest.mark.parametrize("module, arguments, message", [
    ("kernels", ["--mode", "smoke", "--threads", "0", "--json", "k.json"], "--threads must be an integer >= 1, got 0"),
    ("compile", ["--threads", "-1", "--json", "c.json"], "--threads must be an integer >= 1, got -1"),
    ("scale", ["--one", "0", "0.5"], "--one CLIENTS must be an integer >= 1, got 0"),
    ("scale", ["--one", "100", "1.5"], "--one PARTICIPATION must be a finite number in (0, 1], got 1.5"),
    ("scale", ["--series", "100:0.1", "1000:x"], "--series PARTICIPATION must be a finite number in (0, 1], got 'x'"),
    ("scale", ["--one", "100", "0.5", "--rounds", "0"], "--rounds must be an integer >= 1, got 0"),
    ("scale", ["--rounds", "0", "--json", "s.json"], "--rounds applies to --one, --series and --population"),
    ("rounds", ["--mode", "smoke", "--data-dir", "no-such-folder", "--json", "r.json"],
     "data_dir (--data-dir) must be an existing folder holding dataset files; no-such-folder does not exist")])
def test_a_suite_run_alone_answers_bad_options_in_one_line(tmp_path, capsys, module, arguments, message):
    """Each bad value is the parser's one-line error naming the option (exit status 2), before anything runs."""
    import importlib
    with pytest.raises(SystemExit) as stopped:
        importlib.import_module(f"benchmarks.{module}").main([*arguments[:-1], str(tmp_path / arguments[-1])]
                                                             if "--json" in arguments else arguments)
    assert stopped.value.code == 2 and message in capsys.readouterr().err.splitlines()[-1]
    assert not list(tmp_path.iterdir())


def _table_under(text: str, heading: str) -> tuple[list[str], list[list[str]]]:
    """The header cells and row cells of the first Markdown table after ``heading`` in ``text``."""
    lines = text[text.index(heading):].splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("|"))
    table = []
    for line in lines[start:]:
        if not line.startswith("|"):
            break
        table.append([cell.strip() for cell in line.strip()[1:-1].split("|")])
    return table[0], table[2:]


def test_smoke_run_at_two_thread_counts_reports_the_scaling(smoke_run):
    """``--threads 1 2``: kernels and rounds once per count, each in its own process and file, the other
    suites at the first count only, and a thread scaling table whose medians are the files' and whose
    speed-ups are their ratios."""
    from benchmarks import run as benchmarks_run
    assert smoke_run.finished.returncode == 0, smoke_run.finished.stderr[-3000:]
    out = smoke_run.out
    assert sorted(path.name for path in out.glob("*.json")) == sorted(
        [f"{suite}.json" for suite in benchmarks_run.SUITES] + ["kernels.threads-2.json", "rounds.threads-2.json"])
    results = benchmarks_run.load_results(out)
    assert list(results) == list(benchmarks_run.SUITES) + ["kernels.threads-2", "rounds.threads-2"]
    for name, payload in results.items():
        if name.split(".")[0] not in benchmarks_run.SCALING_SUITES:
            continue
        threads = 2 if name.endswith("threads-2") else 1
        reported = payload["machine"]["threads"]
        assert reported["requested"] == threads and reported["torch"] == threads, name
        assert reported["environment"]["OPENBLAS_NUM_THREADS"] == str(threads) and reported["blas_fixed_by_environment"]
    text = (out / "tables.md").read_text()
    assert text.count("### Thread scaling") == 1 and text.index("### Kernels") < text.index("### Thread scaling")
    scaling = text[text.index("### Thread scaling"):]

    def expected(one: dict, two: dict, names: list[str]) -> list[str]:
        cells = []
        for name in names:
            if name not in one or name not in two:
                cells += ["n/a"] * 3
                continue
            cells += [report._ms(one[name]), report._ms(two[name]), report._ratio(one[name] / two[name])]
        return cells

    header, rows = _table_under(scaling, "#### Kernels")
    names = ["fedsim", "numpy", "torch"]
    assert header == ["kernel", "N", "dtype", "p"] + [
        f"{report.SCALING_LABELS[name]} {column}" for name in names for column in ("1T ms", "2T ms", "1T / 2T")]
    cases = list(zip(results["kernels"]["cases"], results["kernels.threads-2"]["cases"]))
    assert len(rows) == len(cases) > 0
    for row, (one, two) in zip(rows, cases):
        key = ("kernel", "size", "dtype", "p")
        assert [one[name] for name in key] == [two[name] for name in key]
        assert row[:4] == [f"`{one['kernel']}`", report._size(one["size"]), one["dtype"],
                           "" if one["p"] is None else f"{one['p']:g}"]
        medians = [{name: timing["median"] for name, timing in case["timings"].items()} for case in (one, two)]
        assert row[4:] == expected(*medians, names), row

    header, rows = _table_under(scaling, "#### Rounds")
    names = [name for name in report.SCALING_LABELS if f"{report.SCALING_LABELS[name]} 1T ms" in header]
    assert names[:2] == ["fedsim", "torch"] and len(header) == 1 + 3 * len(names)
    figures = []
    for payload in (results["rounds"], results["rounds.threads-2"]):
        stc, laq = payload["stc_round"], payload["laq_iteration"]
        medians = [{name: timing["median"] for name, timing in timings.items()}
                   for timings in (stc["round"], stc["evaluation"], laq["iteration"], laq["evaluation"])]
        both = {name: medians[0][name] + medians[1][name] for name in medians[0] if name in medians[1]}
        figures.append([medians[0], medians[1], both, medians[2], medians[3]])
    assert [row[0] for row in rows][::3] == ["STC seed round, without evaluation",
                                             "LAQ seed iteration, without evaluation"]
    assert len(rows) == 5
    for row, one, two in zip(rows, *figures):
        assert row[1:] == expected(one, two, names), row
    # the numbers behind the cells: speed-up = 1-thread median / 2-thread median, exactly
    for suite in report.thread_scaling(results).values():
        assert suite["threads"] == [1, 2]
        for row in suite["rows"]:
            for timing in row["implementations"].values():
                assert timing["speedups"] == {2: timing["medians"][1] / timing["medians"][2]}


def test_thread_counts_run_the_scaling_suites_at_each_and_the_others_once(tmp_path, monkeypatch, capsys):
    from benchmarks import run as benchmarks_run
    assert benchmarks_run.parse_args([]).threads == [1]
    assert benchmarks_run.parse_args(["--threads", "2"]).threads == [2]
    for bad in (["0"], ["1", "1"], ["2", "-1"], ["x"]):
        with pytest.raises(SystemExit):
            benchmarks_run.parse_args(["--threads", *bad])
    # --write-readme replaces every table: a smoke run or a run of some suites would put their tables alone there
    assert benchmarks_run.parse_args(["--full", "--write-readme"]).write_readme
    for partial in (["--smoke"], ["--full", "--only", "sweep"], []):
        with pytest.raises(SystemExit) as refused:
            benchmarks_run.parse_args([*partial, "--write-readme", "--readme", str(tmp_path / "README.md")])
        assert refused.value.code == 2 and "--write-readme: it replaces every table" in capsys.readouterr().err
    calls = []

    def run_suite(suite, mode, threads, out, data_dir, name=None):
        calls.append((suite, threads, name or suite))
        (out / f"{name or suite}.json").write_text(json.dumps({"machine": {"threads": {"requested": threads}}}))
        return True
    monkeypatch.setattr(benchmarks_run, "run_suite", run_suite)
    (tmp_path / "rounds.threads-4.json").write_text("{}")     # left by an earlier run of rounds
    args = benchmarks_run.parse_args(["--smoke", "--threads", "2", "1", "--only", "scale", "rounds"])
    assert all(benchmarks_run.run_counts(suite, args, tmp_path, None) for suite in args.only)
    assert calls == [("scale", 2, "scale"), ("rounds", 2, "rounds"), ("rounds", 1, "rounds.threads-1")]
    results = benchmarks_run.load_results(tmp_path)
    assert list(results) == ["rounds", "scale", "rounds.threads-1"]
    assert list(report.runs_by_threads(results, "rounds")) == [1, 2]     # ascending, whichever came first
    assert report.thread_scaling({"scale": results["scale"]}) == {}
    assert "Thread scaling" not in "\n".join(report._thread_scaling_section({"rounds": results["rounds"]}))


def test_the_readmes_generated_block_is_the_recorded_results():
    """benchmarks/README.md's tables are what report.render makes of benchmarks/results/ today, so the prose
    around them can be checked against the recorded numbers."""
    from benchmarks import run as benchmarks_run
    text = benchmarks_run.README.read_text()
    block = report.BEGIN + text.split(report.BEGIN, 1)[1].split(report.END, 1)[0] + report.END
    assert block == report.render(benchmarks_run.load_results(benchmarks_run.RESULTS))


def test_the_header_names_each_suites_commit_and_flags_one_not_in_the_history(monkeypatch):
    """The recorded scale suite ran at another commit than the others, one the history lacks."""
    from benchmarks import common, run as benchmarks_run
    results = benchmarks_run.load_results(benchmarks_run.RESULTS)
    monkeypatch.setattr(common, "in_history", lambda commit: commit != "d8079fb")
    header = report._machine(results).splitlines()[0]
    assert ("fedsim commits f4a2ada: kernels, rounds, local_epoch, storage, compile, products, sweep, "
            "kernels.threads-2, rounds.threads-2; d8079fb (not in this repository's history): scale.") in header
    monkeypatch.setattr(common, "in_history", lambda commit: None)         # git cannot tell: no flag
    assert "d8079fb: scale." in report._machine(results)
    one = {"kernels": results["kernels"]}
    assert "fedsim commit f4a2ada. Dates: kernels " in report._machine(one)


def test_the_prose_quotes_the_recorded_full_run():
    """The ratios and times the READMEs' prose gives for the full run are those of benchmarks/results/."""
    from benchmarks import run as benchmarks_run
    recorded = benchmarks_run.load_results(benchmarks_run.RESULTS)
    text = " ".join(benchmarks_run.README.read_text().split())
    top = " ".join((common.REPO / "README.md").read_text().split())
    ratios = [case["summary"][f"speedup_vs_torch_{way}"] for way in ("per_client", "batched")
              for case in recorded["local_epoch"]["cases"][:2]]
    assert ("per-client torch loop is {:.1f}x slower (10 clients) and {:.1f}x (100), batched torch {:.1f}x and "
            "{:.1f}x".format(*ratios)) in top
    laq = [recorded[name]["laq_iteration"] for name in ("rounds", "rounds.threads-2")]
    assert ("The LAQ iteration runs {:.1f}x faster on 2 threads, its evaluation {:.1f}x".format(
        *(laq[0][part]["fedsim"]["median"] / laq[1][part]["fedsim"]["median"] for part in ("iteration", "evaluation"))
    )) in text
    quantizer, = (case["ratios"]["fedsim_vs_copy"] for case in recorded["kernels"]["cases"]
                  if case["kernel"] == "laq_quantize" and case["size"] == 10 ** 7 and case["dtype"] == "float64")
    assert f"({quantizer:.1f}x in the run below" in text
    started = sorted(result["machine"]["date"][11:16] for name, result in recorded.items()
                     if result["machine"]["fedsim_commit"] == recorded["kernels"]["machine"]["fedsim_commit"])
    assert f"its suites started from {started[0]} to {started[-1]}" in text


def test_the_readme_names_every_suite_of_benchmarks_run():
    """benchmarks/README.md's list of ``--only`` choices is benchmarks.run's suites, in their order."""
    from benchmarks import run as benchmarks_run
    listed = re.search(r"`--only` picks suites \(([^)]*)\)", benchmarks_run.README.read_text())
    assert listed and re.findall(r"`(\w+)`", listed.group(1)) == list(benchmarks_run.SUITES)


def test_every_compressor_of_the_registry_has_a_kernel_benchmark_case():
    """A compressor added to fedsim.compress.COMPRESSORS comes with a ``@benchmark_case`` naming it
    (ARCHITECTURE.md's recipe, step 4); identity sends the update as it is and has no kernel to time."""
    from fedsim.compress import COMPRESSORS
    timed = {name for case in kernels.CASES.values() for name in case.compressors}
    assert timed <= set(COMPRESSORS), timed - set(COMPRESSORS)
    assert set(COMPRESSORS) - timed == {"identity"}
