"""The runs whose histories are recorded in ``tests/algorithms/golden/<BLAS-SIMD>/`` and checked bit for bit.

Every preset, every federated method at full and half participation, every lazy method, and the client
optimizer, threshold, scope and dtype variants, on offline data (plus the two MNIST-scale presets on the
shared Fashion-MNIST files when they are there). Recorded once before a refactor
(``python -m tests.algorithms.golden_cases --record``); ``tests/algorithms/test_golden_histories.py`` reruns
each case and compares every record field except wall time.

Re-recorded only when a change alters results on purpose, each time listed here:

* the BLAS thread fix (one BLAS thread by default): laq-mnist, in its last bits;
* the one-pass gradient (``fedsim.models.softmax``: blocks of rows, the weight gradient summed block by
  block): laq-mnist, whose 1,000-sample shards are the only data here large enough to be split into
  blocks; its iteration-0 quantized aggregate moved (an exact tie of the all-zero start, rounded the
  other way). Every offline case and stc-mnist stayed bitwise equal.

The multilayer perceptron's cases (:func:`mlp_cases`, issue #24) were recorded when the MLP landed, into
a file of their own (``golden/mlp_histories.json``, by ``python -m tests.algorithms.golden_cases
--record-mlp``), so that recording them leaves the softmax histories above untouched.

The last bits of a matrix product depend on the BLAS kernel (OpenBLAS picks one per processor: SkylakeX,
Haswell, ...), and some of NumPy's functions' on its SIMD loops (AVX-512, x86-64 level X86_V4, or AVX2,
X86_V3; the AVX512_ICL group changed no history here): through the models, so does every history. Each pair
has its own folder (:func:`platform_folder`), and a test compares against the folder of the machine it runs
on. The SkylakeX + X86_V4 histories are the ones described above. The Haswell + X86_V3 ones were recorded
from commit ed13263, whose results had been checked against those (CI on a SkylakeX machine), on an AMD
EPYC processor with AVX2. The Haswell + X86_V4 ones were recorded on an AMD EPYC with AVX-512 running the
Haswell kernel (OPENBLAS_CORETYPE), by the commit that added them, after it had reproduced both other sets
there (OPENBLAS_CORETYPE=SkylakeX; NPY_DISABLE_CPU_FEATURES="X86_V4 AVX512_ICL"). A machine whose pair has
no folder fails the tests with the command that records one (``--record --with-data`` and
``--record-mlp``, from a commit checked elsewhere).

A case is (preset, overrides, steps). Overrides use today's setting names; a renamed setting is renamed
here, with the recorded numbers left as they are.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

GOLDEN = Path(__file__).with_name("golden")


def platform_folder() -> Path:
    """The golden files of this machine's arithmetic: NumPy's BLAS kernel and the widest x86-64 level of its
    SIMD loops (``golden/openblas-0.3.31.188.0-SkylakeX-X86_V4``; elsewhere every SIMD extension named)."""
    from fedsim.data.cache import numpy_simd
    from fedsim.runs.provenance import numpy_blas
    simd = numpy_simd().split()
    levels = [name for name in simd if re.fullmatch(r"X86_V\d", name)]
    return GOLDEN / re.sub(r"[^A-Za-z0-9._]+", "-", f"{numpy_blas()} {levels[-1] if levels else ' '.join(simd)}")


GOLDEN_FILE = platform_folder() / "histories.json"
MLP_GOLDEN_FILE = GOLDEN_FILE.with_name("mlp_histories.json")

FEDERATED_METHODS = ("none", "fedavg", "signsgd", "topk_up", "topk_updown", "stc_up", "stc_updown")
LAZY_METHODS = ("gd", "qgd", "lag-wk", "lag-ps", "laq", "slaq")
SMALL_FEDERATED = ["data.synthetic_devices=10", "federated.n_clients=10"]
SMALL_LAZY = ["data.synthetic_devices=8", "lazy.n_workers=8", "lazy.eval_every=10"]


def cases() -> dict[str, tuple[str, list[str], int]]:
    """name -> (preset, overrides, number of steps)."""
    found = {"preset synthetic": ("synthetic", [], 15), "preset laq-synthetic": ("laq-synthetic", [], 60)}
    for method in FEDERATED_METHODS:
        for rate in (1.0, 0.5):
            found[f"federated {method} participation {rate}"] = (
                "synthetic", SMALL_FEDERATED + [f"federated.method={method}",
                                                f"federated.participation_rate={rate}"], 8)
    found["federated optimizer"] = ("synthetic", SMALL_FEDERATED + [
        "federated.momentum=0.8", "federated.l2=0.01", "federated.lr_schedule=exponential",
        "federated.lr_decay=0.9", "federated.local_iterations=3", "model.init=glorot"], 6)
    found["federated stc sampled window global"] = ("synthetic", SMALL_FEDERATED + [
        "stc.threshold=sampled", "stc.sample_mode=window", "federated.compression_scope=global",
        "stc.sample_fraction=0.3"], 6)
    found["federated stc sampled uniform"] = ("synthetic", SMALL_FEDERATED + [
        "stc.threshold=sampled", "federated.participation_rate=0.5"], 6)
    found["federated float64 topk"] = ("synthetic", SMALL_FEDERATED + [
        "federated.method=topk_updown", "federated.dtype=float64"], 6)
    for method in LAZY_METHODS:
        extra = ["lazy.minibatch_size=20"] if method == "slaq" else []
        found[f"lazy {method}"] = ("laq-synthetic", SMALL_LAZY + [f"lazy.method={method}"] + extra, 40)
    found["lazy laq float32 glorot"] = ("laq-synthetic", SMALL_LAZY + [
        "lazy.dtype=float32", "model.init=glorot", "lazy.bits=2"], 30)
    return found


def mlp_cases() -> dict[str, tuple[str, list[str], int]]:
    """The MLP (issue #24) in both families, float32 and float64, relu and tanh, one and two hidden layers;
    each under 0.3 s."""
    relu_8 = ["model.name=mlp", "model.hidden=[8]"]
    tanh_6_5 = ["model.name=mlp", "model.hidden=[6, 5]", "model.activation=tanh"]
    return {
        "mlp federated stc_updown relu float32 participation 0.5": (
            "synthetic", SMALL_FEDERATED + relu_8 + ["federated.participation_rate=0.5"], 8),
        "mlp federated fedavg tanh float64 optimizer": (
            "synthetic", SMALL_FEDERATED + tanh_6_5 + [
                "federated.method=fedavg", "federated.dtype=float64", "federated.local_iterations=3",
                "federated.momentum=0.5", "federated.l2=0.01"], 6),
        "mlp lazy laq relu float64": (
            "laq-synthetic", SMALL_LAZY + relu_8 + ["lazy.step_size=0.01"], 40),
        "mlp lazy lag-wk tanh float32": (
            "laq-synthetic", SMALL_LAZY + tanh_6_5 + ["lazy.method=lag-wk", "lazy.dtype=float32",
                                                      "lazy.step_size=0.01"], 30),
    }


def data_cases() -> dict[str, tuple[str, list[str], int]]:
    """The MNIST-scale presets on Fashion-MNIST (need the shared data folder)."""
    return {"preset stc-mnist on fashion-mnist": ("stc-mnist", ["data.dataset=fashion-mnist"], 2),
            "preset laq-mnist on fashion-mnist test split": (
                "laq-mnist", ["data.dataset=fashion-mnist", "data.train_split=test"], 15)}


def history_of(preset: str, overrides: list[str], steps: int) -> list[dict]:
    """The records (wall time left out) of the first ``steps`` steps of the case, as JSON values."""
    from fedsim.config import load_preset
    from fedsim.runs import build_run, strip_wall_time
    from fedsim.runs.folder import to_json
    from fedsim.runs.provenance import pinned_threads
    config = load_preset(preset, overrides)
    run = build_run(config, progress=False)
    with pinned_threads(config.run.blas_threads):      # as fedsim run steps it
        for _ in range(steps):
            run.step()
    return json.loads(to_json(strip_wall_time(run.history)))


def record(chosen: dict[str, tuple[str, list[str], int]], path: Path) -> None:
    """Run each chosen case and write all their histories into ``path`` (replacing the file)."""
    golden = {name: {"preset": preset, "overrides": overrides, "steps": steps,
                     "history": history_of(preset, overrides, steps)}
              for name, (preset, overrides, steps) in chosen.items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(golden, indent=0, sort_keys=True) + "\n")
    print(f"recorded {len(golden)} cases into {path}")


def recorded() -> dict:
    """Every recorded case by name, from all the golden files of this machine's BLAS and SIMD."""
    if not GOLDEN_FILE.parent.is_dir():
        recorded_for = ", ".join(sorted(path.name for path in GOLDEN.iterdir() if path.is_dir()))
        raise AssertionError(f"no golden histories for this BLAS and SIMD, {GOLDEN_FILE.parent.name} (recorded for: "
                             f"{recorded_for}); record them from a commit checked on one of those: python -m "
                             f"tests.algorithms.golden_cases --record --with-data, then --record-mlp")
    softmax, mlp = (json.loads(path.read_text()) for path in (GOLDEN_FILE, MLP_GOLDEN_FILE))
    assert not set(softmax) & set(mlp), "a case name is recorded in two golden files"
    return {**softmax, **mlp}


if __name__ == "__main__":
    if "--record-mlp" in sys.argv:
        record(mlp_cases(), MLP_GOLDEN_FILE)
    elif "--record" in sys.argv:
        record({**cases(), **(data_cases() if "--with-data" in sys.argv else {})}, GOLDEN_FILE)
    else:
        sys.exit("usage: python -m tests.algorithms.golden_cases --record [--with-data] | --record-mlp")
