"""MLP benchmarks: the STC seed round and the LAQ seed iteration on fedsim's multilayer perceptron
(``model.name = "mlp"``, 784-200-10 relu), fedsim against batched torch, against the per-client (per-worker)
torch loop, and against the machine's floor. Part of the ``rounds`` suite (:func:`benchmarks.rounds.run`);
``python -m benchmarks.mlp --mode quick`` runs these two alone.

MLP round: the STC seed round (50 clients, all participate, batch 100, 1 local iteration, ``stc_updown``
with p_up 0.001 and p_down 0.002, error feedback both ways, per-tensor scope: W1, b1, W2, b2) in float32,
on Fashion-MNIST's 28 x 28 pixels / 255 (784 features). MLP LAQ iteration: 10 workers x 6,000 samples x 784
features in float64, full-batch gradients, b = 4, the LAQ upload rule, l2 = 0.01. Evaluation is not timed.

Implementations, each validated against fedsim first, then all timed interleaved on the same replayed
participants and batches (the torch rounds are handed fedsim's sampling):

* batched torch: all clients (workers) in one call, the faster of ``torch.func.vmap`` of
  ``torch.func.grad_and_value`` and a ``baddbmm`` forward with one ``backward()``
  (:class:`~benchmarks.torch_reference.MLPGradients`, chosen on the real shapes);
* per-client torch: one client (worker) at a time, each with its own ``nn.Sequential`` (Linear, ReLU,
  Linear), and for the round its own ``torch.optim.SGD``
  (:class:`~benchmarks.torch_reference.TorchSTCClientLoop`, :class:`~benchmarks.torch_reference.TorchLAQMLPRun`).

Validation: from fedsim's state, one round must give the same server model (float32 tolerance), client
losses and exact bit counts up and down; the first LAQ iterates must agree to 1e-9 and the upload decisions
exactly. Floor: ``max(bytes / bandwidth, flops / peak)`` as in :mod:`benchmarks.rounds`; bytes = the samples
read once (the gathered rows; the shards), flops = the products of the forward and backward passes
(per sample and layer of fan-in a and fan-out b: 2ab forward, 2ab for dW, 2ab for the gradient passed
down, which the first layer does not need).
"""

from __future__ import annotations

import time

import numpy as np

from benchmarks import common, round_parts
from benchmarks.common import assert_close, assert_equal, log

# Per mode: the hidden widths; the federated round's clients, batch and repeats; the LAQ shape (None: the
# seed's 10 x 6,000 x 784 of Fashion-MNIST), validated and timed iterations; the data (None: Fashion-MNIST;
# else random data of this (samples, features) shape); the peak matmul's size when measured here.
SETTINGS = {
    "smoke": dict(hidden=(16,), n_clients=5, batch=20, repeats=2, synthetic_shape=(2000, 64),
                  laq_shape=(3, 200, 40), laq_validate=2, laq_repeats=2, peak_size=256),
    "quick": dict(hidden=(200,), n_clients=50, batch=100, repeats=7, synthetic_shape=None,
                  laq_shape=None, laq_validate=2, laq_repeats=5, peak_size=2000),
    "full": dict(hidden=(200,), n_clients=50, batch=100, repeats=21, synthetic_shape=None,
                 laq_shape=None, laq_validate=3, laq_repeats=11, peak_size=3000),
}
WARMUP = 1              # untimed LAQ iterations after the validated ones
IMPLEMENTATIONS = ("fedsim", "torch", "torch_per_client")


def training_flops(widths: tuple[int, ...], samples: int) -> int:
    """Multiply-add flops of one forward and backward pass over ``samples`` samples: per layer
    (fan-in a, fan-out b) 2ab forward, 2ab for dW = h^T delta and, above the first layer, 2ab for
    delta W^T."""
    per_sample = sum(6 * a * b for a, b in zip(widths[:-1], widths[1:])) - 2 * widths[0] * widths[1]
    return int(per_sample) * samples


def _medians(timings: dict) -> dict:
    return {name: timing.median for name, timing in timings.items()}


def _summary(unit: str, timings: dict, floor: dict, flops: int, peak: dict) -> dict:
    """The ratios the targets read: speed-ups over both torch implementations, time over floor, GFLOP/s."""
    fedsim = timings["fedsim"].median
    return {f"{unit}_speedup_vs_torch": timings["torch"].median / fedsim,
            f"{unit}_speedup_vs_torch_per_client": timings["torch_per_client"].median / fedsim,
            f"{unit}_over_floor": floor["multiple"]["fedsim"],
            f"{unit}_gflops": flops / fedsim / 1e9,
            f"{unit}_at_peak_seconds": flops / (peak["gflops"] * 1e9)}


def mlp_round_benchmark(mode: str, data_dir=None, peak: dict | None = None) -> dict:
    """Validate, then time fedsim's STC seed round on the MLP, the batched torch round and the per-client
    torch loop, and the streaming read of the rows they gather (the floor). ``peak``: a float32
    :func:`benchmarks.round_parts.peak_here` measured already (else measured here)."""
    import torch

    from benchmarks.torch_reference import TorchMLPRound, TorchSTCClientLoop
    from fedsim.algorithms.federated import FederatedConfig, FederatedRun
    from fedsim.experiment_data import DataConfig, split_among_clients
    from fedsim.models import ModelConfig

    settings = SETTINGS[common.check_mode(mode)]
    data = round_parts.load_or_synthesize("laq", data_dir, settings["synthetic_shape"], None)
    dataset, hidden, n_clients = data.dataset, settings["hidden"], settings["n_clients"]
    clients = split_among_clients(DataConfig(dataset="fashion-mnist"), dataset, n_clients, seed=0)
    never = 10 ** 9                                       # no evaluation inside step()
    config = FederatedConfig(method="stc_updown", rounds=never, n_clients=n_clients, batch_size=settings["batch"],
                             eval_train_samples=100, eval_every=never)
    run = FederatedRun(config, dataset, clients, seed=0, model_config=ModelConfig(name="mlp", hidden=hidden),
                       trace_batches=True)
    for _ in range(3):                                    # compile, and move away from the start
        run.step()

    # -- validation: one round from the same state ---------------------------------------------------
    state = (run.server.weights.copy(), run.clients.residual.dense(), run.server.residual.copy())
    run.batch_trace.clear()
    record = run.step()
    participants, rows = round_parts.replay(run)
    arguments = (run.x_train, run.y_train)
    batched = TorchMLPRound(*arguments, dataset.n_classes, config.lr, config.p_up, config.p_down, *state, hidden)
    loop = TorchSTCClientLoop(*arguments, {}, dataset.n_classes, config.lr, config.p_up, config.p_down, *state,
                              hidden=hidden)
    choices = batched.choose_formulations(rows[0])
    validation = {"torch": round_parts.validate_stc("MLP, batched torch", batched, batched.step(participants, rows),
                                                run, record, None),
                  "torch_per_client": round_parts.validate_stc("MLP, per-client torch", loop,
                                                           loop.step(participants, rows), run, record, None)}

    # -- timing: the same batches for all, interleaved, and the read of the rows they gather -----------
    samples = {name: [] for name in IMPLEMENTATIONS + ("read",)}
    for _ in range(settings["repeats"]):
        started = time.perf_counter()
        run.step()
        samples["fedsim"].append(time.perf_counter() - started)
        participants, rows = round_parts.replay(run)
        for name, reference in (("torch", batched), ("torch_per_client", loop)):
            started = time.perf_counter()
            reference.step(participants, rows)
            samples[name].append(time.perf_counter() - started)
        read_rows, round_bytes = round_parts.row_reader(run.x_train, rows)
        started = time.perf_counter()
        read_rows()
        samples["read"].append(time.perf_counter() - started)
    timings = {name: common.Timing(tuple(values)) for name, values in samples.items()}
    read = timings.pop("read")

    widths = run.model.widths
    K, B = len(participants), config.batch_size
    flops = training_flops(widths, K * B * config.local_iterations)
    peak = peak or round_parts.peak_here(settings["peak_size"], np.float32, round_parts.PEAK_REPEATS)
    floor = round_parts.floor(round_bytes, read.median, flops, peak, _medians(timings))
    return {
        "name": "mlp_round", "data": data.source,
        "setting": {"clients": n_clients, "participants": K, "batch": B, "layers": list(widths),
                    "activation": "relu", "parameters": int(run.model.size),
                    "local_iterations": config.local_iterations, "method": "stc_updown", "p_up": config.p_up,
                    "p_down": config.p_down, "dtype": "float32"},
        "torch_formulations": choices,
        "validation": validation,
        "round": {name: timing.to_dict() for name, timing in timings.items()},
        "read": read.to_dict(),
        "floor": floor,
        "floor_notes": {"bytes": "the gathered training rows of every participant, read once (summed in place by "
                                 "row index); labels, model and residuals not counted",
                        "flops": "forward, dW and the gradient passed down (see training_flops)"},
        "flops": flops,
        "peak_matmul": peak,
        "summary": _summary("round", timings, floor, flops, peak),
        "torch_threads": torch.get_num_threads(),
    }


def mlp_laq_iteration_benchmark(mode: str, data_dir=None, peak: dict | None = None) -> dict:
    """Validate, then time fedsim's LAQ seed iteration on the MLP, the batched torch iteration and the
    per-worker torch loop, and the streaming read of the shards (the floor). ``peak``: a float64
    :func:`benchmarks.round_parts.peak_here` measured already (else measured here)."""
    from benchmarks.torch_reference import TorchLAQMLPRun
    from fedsim.algorithms.lazy import LazyConfig, LazyRun
    from fedsim.models import ModelConfig

    settings = SETTINGS[common.check_mode(mode)]
    if settings["laq_shape"] is None:
        data, n_workers = round_parts.load_or_synthesize("laq", data_dir, None, None), 10
    else:
        n_workers, per_worker, n_features = settings["laq_shape"]
        data = round_parts.load_or_synthesize("laq", data_dir, (n_workers * per_worker, n_features), 300)
    dataset, hidden = data.dataset, settings["hidden"]
    validate, repeats = settings["laq_validate"], settings["laq_repeats"]
    iterations = validate + WARMUP + repeats
    config = LazyConfig(method="laq", n_workers=n_workers, iterations=iterations + 1, eval_every=10 ** 9)
    n_samples = len(dataset.y_train)
    partition = [np.arange(m * n_samples // n_workers, (m + 1) * n_samples // n_workers) for m in range(n_workers)]
    run = LazyRun(config, dataset, partition, model_config=ModelConfig(name="mlp", hidden=hidden))
    shards = run.shards
    references = {name: TorchLAQMLPRun(shards.x, shards.y, dataset.n_classes, run.theta, config.step_size,
                                       config.bits, config.l2, config.history_length, config.history_weight,
                                       config.max_skips, hidden, per_worker=name == "torch_per_client")
                  for name in IMPLEMENTATIONS[1:]}
    choices = {name: reference.choose_formulations() for name, reference in references.items()}
    read_shards, shard_bytes = round_parts.array_reader([shards.x])

    samples = {name: [] for name in IMPLEMENTATIONS + ("read",)}
    uploads = 0
    for k in range(iterations):
        started = time.perf_counter()
        record = run.step()
        samples["fedsim"].append(time.perf_counter() - started)
        for name, reference in references.items():
            started = time.perf_counter()
            outcome = reference.step()
            samples[name].append(time.perf_counter() - started)
            if k < validate:                              # theta^{k+1} and who uploaded at k
                scale = float(np.abs(run.theta).max()) or 1.0
                assert_close(f"MLP LAQ iterate theta^{k + 1} ({name} vs fedsim)", reference.theta.numpy(),
                             run.theta, rtol=1e-9, atol=1e-10 * scale)
                assert_equal(f"MLP LAQ uploads at iteration {k} ({name} vs fedsim)",
                             np.flatnonzero(outcome["uploads"]).tolist(), record["uploads"])
        started = time.perf_counter()
        read_shards()
        samples["read"].append(time.perf_counter() - started)
        uploads += len(record["uploads"]) if k >= validate + WARMUP else 0
    timed = slice(validate + WARMUP, None)
    timings = {name: common.Timing(tuple(values[timed])) for name, values in samples.items()}
    read = timings.pop("read")

    M, n, F = shards.x.shape
    widths = run.model.widths
    flops = training_flops(widths, M * n)
    peak = peak or round_parts.peak_here(settings["peak_size"], np.float64, round_parts.PEAK_REPEATS)
    floor = round_parts.floor(shard_bytes, read.median, flops, peak, _medians(timings))
    log(f"MLP LAQ: {validate} iterations validated, {repeats} timed")
    return {
        "name": "mlp_laq_iteration", "data": data.source,
        "setting": {"workers": M, "samples_per_worker": n, "layers": list(widths), "activation": "relu",
                    "parameters": int(run.model.size), "bits": config.bits, "l2": config.l2, "method": "laq",
                    "dtype": "float64"},
        "torch_formulations": choices,
        "validated_iterations": validate,
        "uploads_in_timed_iterations": uploads,
        "iteration": {name: timing.to_dict() for name, timing in timings.items()},
        "read": read.to_dict(),
        "floor": floor,
        "floor_notes": {"bytes": "the (M, n, F) shards summed whole (np.add.reduce of their flat view) after "
                                 "each iteration; labels and model not counted",
                        "flops": "forward, dW and the gradient passed down (see training_flops)"},
        "flops": flops,
        "peak_matmul": peak,
        "summary": _summary("iteration", timings, floor, flops, peak),
    }


def run(mode: str, threads: int, data_dir=None, peaks: dict | None = None) -> dict:
    """The MLP's part of the ``rounds`` suite: its round and its LAQ iteration, against the product peaks
    ``peaks`` of the softmax benchmarks (``{"stc_round": ..., "laq_iteration": ...}``; None: measured here)."""
    peaks = peaks or {}
    log("rounds: MLP round")
    results = {"mlp_round": mlp_round_benchmark(mode, data_dir, peaks.get("stc_round"))}
    log("rounds: MLP LAQ iteration")
    results["mlp_laq_iteration"] = mlp_laq_iteration_benchmark(mode, data_dir, peaks.get("laq_iteration"))
    return results


def _alone(mode: str, threads: int, data_dir=None) -> dict:
    """``python -m benchmarks.mlp``: the MLP's benchmarks as a results file of the ``rounds`` suite."""
    thread_report = common.apply_threads(threads)
    return {"suite": "rounds", "mode": mode, "machine": common.machine_info(thread_report),
            **run(mode, threads, data_dir)}


def main(argv=None) -> None:
    common.suite_main(__doc__, _alone, argv)


if __name__ == "__main__":
    main()
