"""8-bit storage against the float path: the LAQ seed iteration and the STC seed round, fedsim alone.

``data.storage = "uint8"`` keeps the images as their 8-bit codes (:class:`fedsim.models.features.Codes`):
a gradient reads 1 byte per feature instead of 8 (LAQ, float64) or 4 (STC, float32). This suite builds the
same run twice, on the float features and on the codes of the same dataset, validates that they agree
(the LAQ objective to 1e-10 relative and the same upload decisions in each validated iteration; the STC
client losses of the first round, from the same start, to 1e-3, since the STC codes round the resized
pixels by up to half a grey level and later rounds drift apart through STC's top-k picks), then steps both
runs interleaved and reports the medians and the speed-up of the codes. Both runs hold the same data in
memory the whole time.
"""

from __future__ import annotations

import time

import numpy as np

from benchmarks import common
from benchmarks.common import assert_close, assert_equal, log

SETTINGS = {
    "smoke": dict(laq_shape=(3, 400, 784), stc_shape=(2000, 1024), n_clients=5, batch=20, validate=3, repeats=3),
    "quick": dict(laq_shape=None, stc_shape=None, n_clients=50, batch=100, validate=5, repeats=7),
    "full": dict(laq_shape=None, stc_shape=None, n_clients=50, batch=100, validate=10, repeats=21),
}


def _images_dataset(pipeline: str, data_dir, shape, seed: int = 0):
    """Fashion-MNIST through ``pipeline``, or 8-bit random images of the same kind (a known source)."""
    from benchmarks.rounds import load_or_synthesize
    from fedsim.data.dataset import Dataset
    from fedsim.experiment_data import pixel_affine
    if shape is None:
        data = load_or_synthesize(pipeline, data_dir, None, None)
        if "Fashion-MNIST" in data.source:
            return data.dataset, data.source
    n, features = shape if shape is not None else ((60_000, 784) if pipeline == "laq" else (60_000, 1024))
    rng = np.random.default_rng(seed)
    scale, offset = pixel_affine("fashion-mnist", pipeline)
    dtype = np.float64 if pipeline == "laq" else np.float32
    codes = rng.integers(0, 256, size=(n + n // 6, features), dtype=np.uint8)
    x = (codes * scale + offset).astype(dtype)
    y = rng.integers(0, 10, size=len(x))
    return (Dataset("fashion-mnist", x[:n], y[:n], x[n:], y[n:], 10),
            f"random 8-bit images, {n} x {features}, {pipeline} scaling")


def laq_storage_benchmark(mode: str, data_dir=None) -> dict:
    from fedsim.algorithms.lazy import LazyConfig, LazyRun
    from fedsim.experiment_data import stored_as_codes
    from fedsim.models import ModelConfig
    settings = SETTINGS[common.check_mode(mode)]
    shape = settings["laq_shape"]
    dataset, source = _images_dataset("laq", data_dir, None if shape is None else (shape[0] * shape[1], shape[2]))
    n_workers = 10 if shape is None else shape[0]
    validate, repeats = settings["validate"], settings["repeats"]
    config = LazyConfig(method="laq", n_workers=n_workers, iterations=validate + repeats + 2,
                        eval_every=10 ** 9)
    glorot = ModelConfig(init="glorot")
    runs = {"float64": LazyRun(config, dataset, model_config=glorot),
            "uint8": LazyRun(config, stored_as_codes(dataset, "laq"), model_config=glorot)}
    for k in range(validate):
        records = {name: run.step() for name, run in runs.items()}
        assert_close(f"LAQ objective at iteration {k} (uint8 vs float64)", records["uint8"]["objective"],
                     records["float64"]["objective"], rtol=1e-10)
        assert_equal(f"LAQ uploads at iteration {k} (uint8 vs float64)", records["uint8"]["uploads"],
                     records["float64"]["uploads"])
    timings = common.time_interleaved({name: run.step for name, run in runs.items()}, repeats, warmup=1)
    log(f"storage: LAQ iteration float64 {timings['float64'].median * 1e3:.1f} ms, "
        f"uint8 {timings['uint8'].median * 1e3:.1f} ms")
    shards = runs["float64"].shards.x
    return {"data": source, "workers": n_workers, "samples_per_worker": int(shards.shape[1]),
            "features": int(shards.shape[2]), "validated_iterations": validate,
            "bytes_per_gradient": {"float64": int(shards.nbytes), "uint8": int(runs["uint8"].shards.x.nbytes)},
            "iteration": {name: timing.to_dict() for name, timing in timings.items()},
            "speedup": timings["float64"].median / timings["uint8"].median}


def stc_storage_benchmark(mode: str, data_dir=None) -> dict:
    from fedsim.algorithms.federated import FederatedConfig, FederatedRun
    from fedsim.experiment_data import DataConfig, split_among_clients, stored_as_codes
    settings = SETTINGS[common.check_mode(mode)]
    dataset, source = _images_dataset("stc", data_dir, settings["stc_shape"])
    n_clients, validate, repeats = settings["n_clients"], settings["validate"], settings["repeats"]
    clients = split_among_clients(DataConfig(dataset="fashion-mnist"), dataset, n_clients, seed=0)
    never = 10 ** 9                          # evaluation is a separate figure
    config = FederatedConfig(method="stc_updown", rounds=never, n_clients=n_clients, batch_size=settings["batch"],
                             eval_every=never)
    runs = {"float32": FederatedRun(config, dataset, clients, seed=0),
            "uint8": FederatedRun(config, stored_as_codes(dataset, "stc"), clients, seed=0)}
    # The first round starts both runs from the same weights: its losses differ only by the codes' rounding.
    # Later rounds drift apart (STC's top-k picks amplify last-bit differences), so they are not compared.
    records = {name: run.step() for name, run in runs.items()}
    assert_close("STC client losses in round 1 (uint8 vs float32)", np.array(records["uint8"]["client_losses"]),
                 np.array(records["float32"]["client_losses"]), rtol=1e-3, atol=1e-4)
    validate = 1
    timings = common.time_interleaved({name: run.step for name, run in runs.items()}, repeats, warmup=1)
    evaluation = common.time_interleaved(
        {name: (lambda run=run: [run.model.evaluate(run.server.weights, x, y) for x, y in run.eval_sets.values()])
         for name, run in runs.items()}, repeats)
    log(f"storage: STC round float32 {timings['float32'].median * 1e3:.1f} ms, "
        f"uint8 {timings['uint8'].median * 1e3:.1f} ms")
    return {"data": source, "clients": n_clients, "batch": settings["batch"], "validated_rounds": validate,
            "round": {name: timing.to_dict() for name, timing in timings.items()},
            "evaluation": {name: timing.to_dict() for name, timing in evaluation.items()},
            "round_speedup": timings["float32"].median / timings["uint8"].median,
            "evaluation_speedup": evaluation["float32"].median / evaluation["uint8"].median}


def run(mode: str, threads: int, data_dir=None) -> dict:
    started = time.perf_counter()
    machine = common.machine_info(common.apply_threads(threads, torch=False))
    return {"suite": "storage", "mode": mode, "machine": machine,
            "laq_iteration": laq_storage_benchmark(mode, data_dir),
            "stc_round": stc_storage_benchmark(mode, data_dir),
            "seconds": time.perf_counter() - started}


def main(argv=None) -> None:
    common.suite_main(__doc__, run, argv)


if __name__ == "__main__":
    main()
