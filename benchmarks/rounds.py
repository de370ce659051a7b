"""Round benchmarks: a round of the STC seed experiment and an iteration of the LAQ seed experiment,
fedsim against equivalent torch (CPU) implementations and against the machine's floor, evaluation timed
apart; then both on fedsim's MLP (:mod:`benchmarks.mlp`).

STC seed round: 50 clients (all participate), softmax regression on 32x32 Fashion-MNIST (1024 features,
10 classes, 10,250 parameters), batch 100, 1 local iteration, ``stc_updown`` (p_up 0.001, p_down 0.002,
error feedback both ways), evaluation on 15,000 samples (the first 5,000 training samples and the 10,000
test samples). LAQ seed iteration: 10 workers x 6,000 samples x 784 features (float64), full-batch
gradients, b = 4, the LAQ upload rule; evaluation = test accuracy on 10,000 samples.

Two torch baselines for the STC round: the batched one (all participants in one ``bmm``,
:class:`~benchmarks.torch_reference.TorchSTCRound`) and the one users would write, one client at a time
with its own ``nn.Linear`` and ``torch.optim.SGD`` (:class:`~benchmarks.torch_reference.TorchSTCClientLoop`).
Validation first: from the same state, fedsim's round and each torch round must give the same server
model (float32 tolerance), the same bit count and the same evaluation; the first LAQ iterations must give
the same iterates and the same upload decisions. Then all are timed, interleaved, on the same batches.

The floor of each round, iteration and evaluation, measured in the same run: ``max(bytes / bandwidth,
flops / peak)``. The bytes are those of the samples it reads, once (the gathered training rows of the STC
round, the evaluation sets, the LAQ shards); the bandwidth is that of a streaming sum over those very
arrays (in place, timed interleaved with the rounds, medians); the flops are those of its matrix products
(forward ``x W`` and backward ``x^T delta``, 2 F C per sample each; evaluation 2 F C per sample) and the
peak is that of a large NumPy matmul on the same threads (float32 for STC, float64 for LAQ). The peak is
measured twice: in this process (the floor uses it) and in a child process whose environment lacks
``OPENBLAS_CORETYPE`` and ``OPENBLAS_L2_SIZE`` (OpenBLAS then picks its kernels for the CPU it detects);
neither variable is ever changed in this process.
"""

from __future__ import annotations

import time

import numpy as np

from benchmarks import common
from benchmarks.common import assert_close, assert_equal, log
from benchmarks.round_parts import (PEAK_REPEATS, array_reader, floor, load_or_synthesize, peak_here,
                                    peak_without_kernel_variables, replay, row_reader, validate_stc)

# Per mode: repeats (timed rounds / iterations, after validation and warm-up), the peak-matmul size, and the
# data: None = Fashion-MNIST with the seed shapes; otherwise random data of the given (small) shapes.
SETTINGS = {
    "smoke": dict(repeats=2, peak_size=256, synthetic_shape=(2000, 64), eval_train=300, n_test=400,
                  n_clients=5, batch=20, laq_shape=(3, 200, 40), laq_validate=3, laq_repeats=3),
    "quick": dict(repeats=7, peak_size=2000, synthetic_shape=None, eval_train=5000, n_test=None,
                  n_clients=50, batch=100, laq_shape=None, laq_validate=5, laq_repeats=7),
    "full": dict(repeats=21, peak_size=3000, synthetic_shape=None, eval_train=5000, n_test=None,
                 n_clients=50, batch=100, laq_shape=None, laq_validate=10, laq_repeats=21),
}


def stc_round_benchmark(mode: str, data_dir=None) -> dict:
    """Validate, then time fedsim's STC seed round, the batched torch round and the per-client torch loop
    (and their evaluations), and the streaming read of the samples they read (the floor)."""
    import torch

    from benchmarks.torch_reference import TorchSTCClientLoop, TorchSTCRound
    from fedsim.algorithms.federated import FederatedConfig, FederatedRun
    from fedsim.experiment_data import DataConfig, split_among_clients

    settings = SETTINGS[common.check_mode(mode)]
    data = load_or_synthesize("stc", data_dir, settings["synthetic_shape"], settings["n_test"])
    dataset = data.dataset
    n_clients = settings["n_clients"]
    clients = split_among_clients(DataConfig(dataset="fashion-mnist"), dataset, n_clients, seed=0)
    never = 10 ** 9                          # evaluation is timed on its own, not inside step()
    config = FederatedConfig(method="stc_updown", rounds=never, n_clients=n_clients, batch_size=settings["batch"],
                             eval_train_samples=settings["eval_train"], eval_every=never)
    run = FederatedRun(config, dataset, clients, seed=0, trace_batches=True)
    for _ in range(3):                        # compile, and leave the all-zero start (exact ties)
        run.step()

    # -- validation: one round from the same state ---------------------------------------------------
    state = (run.server.weights.copy(), run.clients.residual.dense(), run.server.residual.copy())
    run.batch_trace.clear()
    record = run.step()
    participants, rows = replay(run)
    reference = TorchSTCRound(run.x_train, run.y_train, run.eval_sets, dataset.n_classes, config.lr,
                              config.p_up, config.p_down, *state)
    loop = TorchSTCClientLoop(run.x_train, run.y_train, run.eval_sets, dataset.n_classes, config.lr,
                              config.p_up, config.p_down, *state)
    choices = reference.choose_formulations(rows[0], repeats=3)
    fedsim_eval = _fedsim_evaluate(run)
    validation = {"torch": validate_stc("torch", reference, reference.step(participants, rows), run, record,
                                         fedsim_eval),
                  "torch_per_client": validate_stc("per-client torch", loop, loop.step(participants, rows), run,
                                                    record, fedsim_eval)}

    # -- timing: the same batches for all, interleaved, and the read of the rows they gather -----------
    repeats = settings["repeats"]
    fedsim_round, torch_round, loop_round, read_round = [], [], [], []
    for _ in range(repeats):
        started = time.perf_counter()
        run.step()
        fedsim_round.append(time.perf_counter() - started)
        participants, rows = replay(run)
        started = time.perf_counter()
        reference.step(participants, rows)
        torch_round.append(time.perf_counter() - started)
        started = time.perf_counter()
        loop.step(participants, rows)
        loop_round.append(time.perf_counter() - started)
        read_rows, round_bytes = row_reader(run.x_train, rows)
        started = time.perf_counter()
        read_rows()
        read_round.append(time.perf_counter() - started)
    read_eval, eval_bytes = array_reader(x for x, _ in run.eval_sets.values())
    evaluation = common.time_interleaved({"fedsim": lambda: _fedsim_evaluate(run),
                                          "torch": reference.evaluate, "torch_per_client": loop.evaluate,
                                          "read": read_eval}, repeats)
    read_timings = {"round": common.Timing(tuple(read_round)), "evaluation": evaluation.pop("read")}
    x_batches = run.x_train[rows[0]]
    products = _products_alone(
        {"gather": lambda: run.x_train[rows[0]], **_fedsim_products(run.model, x_batches, len(participants))},
        {name: reference.product_calls[name] for name in ("gather", "forward", "backward")}, repeats)

    n_features, n_classes = dataset.n_features, dataset.n_classes
    K, B = len(participants), config.batch_size
    eval_samples = sum(len(y) for _, y in run.eval_sets.values())
    training_flops = 2 * (2 * K * B * n_features * n_classes) * config.local_iterations
    evaluation_flops = 2 * eval_samples * n_features * n_classes
    peak = peak_here(settings["peak_size"], np.float32, PEAK_REPEATS)
    peak_defaults = peak_without_kernel_variables(settings["peak_size"], np.float32, PEAK_REPEATS)
    fedsim_median, torch_median = float(np.median(fedsim_round)), float(np.median(torch_round))
    loop_median = float(np.median(loop_round))
    eval_medians = {name: timing.median for name, timing in evaluation.items()}
    round_medians = {"fedsim": fedsim_median, "torch": torch_median, "torch_per_client": loop_median}
    floors = {
        "round": floor(round_bytes, read_timings["round"].median, training_flops, peak, round_medians),
        "evaluation": floor(eval_bytes, read_timings["evaluation"].median, evaluation_flops, peak, eval_medians),
        "round_with_evaluation": floor(
            round_bytes + eval_bytes, read_timings["round"].median + read_timings["evaluation"].median,
            training_flops + evaluation_flops, peak,
            {name: round_medians[name] + eval_medians[name] for name in round_medians}),
    }
    floor_notes = {"round": "the rows of every local step of every participant, summed in place in the "
                            "training set (Numba, by row index) right after the rounds that read them",
                   "evaluation": "each evaluation set summed whole (np.add.reduce of its flat view)",
                   "bytes": "the samples (x) read once; labels, model and residuals not counted"}
    return {
        "name": "stc_round", "data": data.source,
        "setting": {"clients": n_clients, "participants": K, "batch": B, "features": n_features,
                    "classes": n_classes, "parameters": int(run.model.size), "local_iterations": 1,
                    "method": "stc_updown", "p_up": config.p_up, "p_down": config.p_down,
                    "evaluation_samples": eval_samples, "dtype": "float32"},
        "torch_formulations": choices,
        "validation": validation,
        "round": {"fedsim": common.Timing(tuple(fedsim_round)).to_dict(),
                  "torch": common.Timing(tuple(torch_round)).to_dict(),
                  "torch_per_client": common.Timing(tuple(loop_round)).to_dict()},
        "evaluation": {name: timing.to_dict() for name, timing in evaluation.items()},
        "read": {name: timing.to_dict() for name, timing in read_timings.items()},
        "floor": floors,
        "floor_notes": floor_notes,
        "flops": {"training": training_flops, "evaluation": evaluation_flops,
                  "note": "matrix products only: forward x W and backward x^T delta (2 F C per sample each), "
                          "evaluation x W (2 F C per sample)"},
        "peak_matmul": peak,
        "peak_matmul_without_kernel_variables": peak_defaults,
        "products_alone": products,
        "summary": {
            **_ceiling(products, fedsim_median, torch_median, "round"),
            "round_over_floor": floors["round"]["multiple"]["fedsim"],
            "evaluation_over_floor": floors["evaluation"]["multiple"]["fedsim"],
            "round_with_evaluation_over_floor": floors["round_with_evaluation"]["multiple"]["fedsim"],
            "round_speedup_vs_torch_per_client": loop_median / fedsim_median,
            "evaluation_speedup_vs_torch_per_client": eval_medians["torch_per_client"] / eval_medians["fedsim"],
            "round_with_evaluation_speedup_vs_torch_per_client": (loop_median + eval_medians["torch_per_client"])
            / (fedsim_median + eval_medians["fedsim"]),
            "round_speedup_vs_torch": torch_median / fedsim_median,
            "evaluation_speedup_vs_torch": evaluation["torch"].median / evaluation["fedsim"].median,
            "round_with_evaluation_speedup_vs_torch": (torch_median + evaluation["torch"].median)
            / (fedsim_median + evaluation["fedsim"].median),
            "round_gflops": training_flops / fedsim_median / 1e9,
            "round_with_evaluation_gflops": (training_flops + evaluation_flops)
            / (fedsim_median + evaluation["fedsim"].median) / 1e9,
            "round_at_peak_seconds": training_flops / (peak["gflops"] * 1e9),
            "round_with_evaluation_at_peak_seconds": (training_flops + evaluation_flops) / (peak["gflops"] * 1e9),
        },
        "torch_threads": torch.get_num_threads(),
    }


def _fedsim_products(model, x: np.ndarray, n_models: int | None) -> dict:
    """fedsim's own matrix-product calls on the round's shapes: the model's forward ``x W + b`` and its
    backward ``x^T delta`` (``n_models`` stacked models, one per client, or one model for all)."""
    rng = np.random.default_rng(0)
    batch = () if n_models is None else (n_models,)
    theta = (rng.standard_normal(batch + (model.size,)) * 0.01).astype(x.dtype)
    delta = rng.standard_normal(x.shape[:-1] + (model.n_classes,)).astype(x.dtype)
    out = np.empty(x.shape[:-2] + (model.n_features, model.n_classes), dtype=x.dtype)
    return {"forward": lambda: model.logits(theta, x),
            "backward": lambda: model.weight_gradient(x, delta, out)}


def _products_alone(fedsim_calls: dict, torch_calls: dict, repeats: int) -> dict:
    """Median seconds of each side's matrix products (and batch gather) timed alone, interleaved."""
    calls = {f"fedsim {name}": call for name, call in fedsim_calls.items()}
    calls.update({f"torch {name}": call for name, call in torch_calls.items()})
    timings = common.time_interleaved(calls, repeats)
    result = {}
    for side, names in (("fedsim", fedsim_calls), ("torch", torch_calls)):
        parts = {name: timings[f"{side} {name}"].median for name in names}
        result[side] = {"parts": parts, "total": sum(parts.values())}
    return result


def _ceiling(products: dict, fedsim_seconds: float, torch_seconds: float, unit: str) -> dict:
    """Where a round's time goes: each side's share spent in its products (and gather), and the
    speed-up over torch fedsim would reach if everything else in its {unit} took no time at all."""
    return {f"fedsim_products_share_of_{unit}": products["fedsim"]["total"] / fedsim_seconds,
            f"torch_products_share_of_{unit}": products["torch"]["total"] / torch_seconds,
            "speedup_ceiling_with_these_products": torch_seconds / products["fedsim"]["total"],
            "products_speedup_vs_torch": products["torch"]["total"] / products["fedsim"]["total"]}


def _fedsim_evaluate(run) -> dict:
    """What fedsim's round does when it evaluates (the same calls, on the same sets)."""
    results = {}
    for split, (x, y) in run.eval_sets.items():
        loss, accuracy = run.model.evaluate(run.server.weights, x, y)
        results[f"{split}_loss"] = float(loss)
        results[f"{split}_accuracy"] = float(accuracy)
    return results


# ---------------------------------------------------------------------------------------------------------
# LAQ


def laq_iteration_benchmark(mode: str, data_dir=None) -> dict:
    """Validate, then time fedsim's and torch's LAQ seed iterations (and the test-accuracy evaluation)."""
    import torch

    from benchmarks.torch_reference import TorchLAQRun
    from fedsim.algorithms.lazy import LazyConfig, LazyRun, records_to_arrays, stack_shards
    from fedsim.models import ModelConfig
    from fedsim.rng import RunStreams

    settings = SETTINGS[common.check_mode(mode)]
    if settings["laq_shape"] is None:
        data = load_or_synthesize("laq", data_dir, None, None)
        n_workers = 10
    else:
        n_workers, per_worker, n_features = settings["laq_shape"]
        data = load_or_synthesize("laq", data_dir, (n_workers * per_worker, n_features), 300)
    dataset = data.dataset
    validate, repeats = settings["laq_validate"], settings["laq_repeats"]
    warmup = 2
    iterations = validate + warmup + repeats
    # Glorot initial weights: from zeros, the first gradients of b are exact fractions (0.1 - n_c / n) whose
    # quantization can land exactly on a rounding boundary, where the last bit of a differently ordered
    # sum decides the code; the timing does not depend on the starting point.
    config = LazyConfig(method="laq", n_workers=n_workers, iterations=iterations, eval_every=10 ** 9)
    model_config = ModelConfig(init="glorot")
    n_samples = len(dataset.y_train)
    partition = [np.arange(m * n_samples // n_workers, (m + 1) * n_samples // n_workers)
                 for m in range(n_workers)]
    shards = stack_shards(dataset.x_train, dataset.y_train, partition, np.float64)
    model = model_config.build(dataset.n_features, dataset.n_classes, config.l2)
    initial = model.init(RunStreams(config.seed).generator("init"), model_config.init_kind, np.float64)
    reference = TorchLAQRun(shards.x, shards.y, dataset.n_classes, initial,
                            config.step_size, config.bits, config.l2, config.history_length,
                            config.history_weight, config.max_skips)
    choices = reference.choose_formulations(repeats=3)

    moments = []                 # perf_counter when fedsim hands over theta^{k+1}, and when it gets it back
    torch_seconds = []
    read_seconds = []            # the streaming read of the shards, after each torch iteration
    read_shards, shard_bytes = array_reader([shards.x])
    read_shards()
    uploads = []

    def callback(k: int, theta: np.ndarray) -> None:
        arrived = time.perf_counter()
        started = time.perf_counter()
        outcome = reference.step()
        torch_seconds.append(time.perf_counter() - started)
        started = time.perf_counter()
        read_shards()
        read_seconds.append(time.perf_counter() - started)
        if k <= validate:
            scale = float(np.abs(theta).max()) or 1.0
            assert_close(f"LAQ iterate theta^{k} (torch vs fedsim)", reference.theta.numpy(), theta,
                         rtol=1e-9, atol=1e-10 * scale)
        uploads.append(outcome["uploads"])
        moments.append((arrived, time.perf_counter()))

    run_started = time.perf_counter()
    run = LazyRun(config, dataset, partition, model_config=model_config)
    upload_raster = records_to_arrays(run.run(callback=callback), n_workers)["uploads"]
    # fedsim's iteration k (k >= 1) runs between the callback of k - 1 returning and the callback of k
    fedsim_seconds = [moments[k][0] - moments[k - 1][1] for k in range(1, len(moments))]
    assert_equal("LAQ upload decisions (torch vs fedsim), validated iterations",
                 np.array(uploads[:validate]), upload_raster[:validate])
    timed = slice(validate + warmup - 1, None)
    fedsim_timing = common.Timing(tuple(fedsim_seconds[timed]))
    torch_timing = common.Timing(tuple(torch_seconds[validate + warmup:]))
    read_timings = {"iteration": common.Timing(tuple(read_seconds[validate + warmup:]))}

    x_test = np.asarray(dataset.x_test, dtype=np.float64)
    theta = run.theta
    test_x, test_y = torch.from_numpy(x_test), torch.from_numpy(np.asarray(dataset.y_test, dtype=np.int64))
    fedsim_accuracy = float(model.accuracy(theta, x_test, dataset.y_test))
    reference.theta = torch.tensor(theta)
    assert_close("LAQ test accuracy", reference.test_accuracy(test_x, test_y), fedsim_accuracy, rtol=0,
                 atol=1e-12)
    read_test, test_bytes = array_reader([x_test])
    evaluation = common.time_interleaved({
        "fedsim": lambda: model.accuracy(theta, x_test, dataset.y_test),
        "torch": lambda: reference.test_accuracy(test_x, test_y),
        "read": read_test}, repeats)
    read_timings["evaluation"] = evaluation.pop("read")

    products = _products_alone(_fedsim_products(model, shards.x, None),
                               {name: reference.product_calls[name] for name in ("forward", "backward")},
                               repeats)
    M, n, F = shards.x.shape
    C = dataset.n_classes
    flops = 2 * (2 * M * n * F * C)
    evaluation_flops = 2 * len(dataset.y_test) * F * C
    peak = peak_here(settings["peak_size"], np.float64, PEAK_REPEATS)
    peak_defaults = peak_without_kernel_variables(settings["peak_size"], np.float64, PEAK_REPEATS)
    eval_medians = {name: timing.median for name, timing in evaluation.items()}
    floors = {
        "iteration": floor(shard_bytes, read_timings["iteration"].median, flops, peak,
                           {"fedsim": fedsim_timing.median, "torch": torch_timing.median}),
        "evaluation": floor(test_bytes, read_timings["evaluation"].median, evaluation_flops, peak, eval_medians),
    }
    floor_notes = {"iteration": "the (M, n, F) shards summed whole (np.add.reduce of their flat view) after "
                                "each torch iteration",
                   "evaluation": "the test set summed whole (np.add.reduce of its flat view)",
                   "bytes": "the samples (x) read once; labels and model not counted"}
    return {
        "name": "laq_iteration", "data": data.source,
        "setting": {"workers": M, "samples_per_worker": n, "features": F, "classes": C,
                    "parameters": int(model.size), "bits": config.bits, "method": "laq", "dtype": "float64",
                    "evaluation_samples": int(len(dataset.y_test))},
        "torch_formulations": choices,
        "iteration": {"fedsim": fedsim_timing.to_dict(), "torch": torch_timing.to_dict()},
        "evaluation": {name: timing.to_dict() for name, timing in evaluation.items()},
        "read": {name: timing.to_dict() for name, timing in read_timings.items()},
        "floor": floors,
        "floor_notes": floor_notes,
        "validated_iterations": validate,
        "uploads_in_timed_iterations": int(upload_raster[validate + warmup:].sum()),
        "flops": {"iteration": flops, "evaluation": evaluation_flops,
                  "note": "matrix products only: forward and backward, 2 F C per sample each; evaluation "
                          "x W, 2 F C per sample"},
        "peak_matmul": peak,
        "peak_matmul_without_kernel_variables": peak_defaults,
        "products_alone": products,
        "seconds_total": time.perf_counter() - run_started,
        "summary": {
            **_ceiling(products, fedsim_timing.median, torch_timing.median, "iteration"),
            "iteration_speedup_vs_torch": torch_timing.median / fedsim_timing.median,
            "iteration_over_floor": floors["iteration"]["multiple"]["fedsim"],
            "evaluation_over_floor": floors["evaluation"]["multiple"]["fedsim"],
            "evaluation_speedup_vs_torch": evaluation["torch"].median / evaluation["fedsim"].median,
            "iteration_gflops": flops / fedsim_timing.median / 1e9,
            "iteration_at_peak_seconds": flops / (peak["gflops"] * 1e9),
        },
    }


def run(mode: str, threads: int, data_dir=None) -> dict:
    """The suite: the STC round and the LAQ iteration, then both on the MLP with the same peaks."""
    from benchmarks import mlp
    thread_report = common.apply_threads(threads)
    results = {"suite": "rounds", "mode": mode, "machine": common.machine_info(thread_report)}
    log("rounds: STC seed round")
    results["stc_round"] = stc_round_benchmark(mode, data_dir)
    log("rounds: LAQ seed iteration")
    results["laq_iteration"] = laq_iteration_benchmark(mode, data_dir)
    peaks = {name: results[name]["peak_matmul"] for name in ("stc_round", "laq_iteration")}
    results.update(mlp.run(mode, threads, data_dir, peaks))
    return results


def main(argv=None) -> None:
    common.suite_main(__doc__, run, argv)


if __name__ == "__main__":
    main()
