"""fedsim export RUN_DIR ... --to tensorboard DIR: event files that hold each run's history, read back with
tensorboardX's own record format and protobuf messages; one line when the extra is missing."""

import struct
import sys

import numpy as np
import pytest

from fedsim.cli import main
from fedsim.runs import read_run
from tests.conftest import error_lines
from tests.runs.conftest import finished_run


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory):
    """A tiny federated run and a tiny lazy run."""
    root = tmp_path_factory.mktemp("export")
    return (finished_run(root, "stc", "synthetic", ["data.synthetic_devices=8", "federated.n_clients=8",
                                                    "federated.rounds=6", "federated.eval_every=2"]).path,
            finished_run(root, "laq", "laq-synthetic", ["data.synthetic_devices=6", "lazy.n_workers=6",
                                                        "lazy.iterations=12", "lazy.eval_every=5"]).path)


def read_scalars(folder) -> dict[str, list[tuple[int, float]]]:
    """Every scalar of the event files in ``folder``: tag -> [(step, value), ...], each record's framing
    (length, masked CRC-32C of length and data) checked as TensorBoard's reader checks it."""
    from tensorboardX.proto.event_pb2 import Event
    from tensorboardX.record_writer import masked_crc32c
    scalars: dict[str, list[tuple[int, float]]] = {}
    for path in folder.glob("events.out.tfevents.*"):
        data, at = path.read_bytes(), 0
        while at < len(data):
            header = data[at:at + 8]
            (length,), (header_crc,) = struct.unpack("Q", header), struct.unpack("I", data[at + 8:at + 12])
            body = data[at + 12:at + 12 + length]
            (body_crc,) = struct.unpack("I", data[at + 12 + length:at + 16 + length])
            assert (header_crc, body_crc) == (masked_crc32c(header), masked_crc32c(body)), path
            at += 16 + length
            event = Event.FromString(body)
            for value in event.summary.value:
                scalars.setdefault(value.tag, []).append((event.step, value.simple_value))
    return scalars


def test_export_to_tensorboard_holds_each_runs_history(two_runs, tmp_path, capsys):
    pytest.importorskip("tensorboardX", reason="the tensorboard extra is not installed "
                                               "(pip install \"fedsim-compress[tensorboard]\")")
    federated, lazy = two_runs
    assert main(["export", str(federated), str(lazy), "--to", "tensorboard", str(tmp_path / "tb")]) == 0
    assert capsys.readouterr().out.split() == [str(tmp_path / "tb" / "stc"), str(tmp_path / "tb" / "laq")]

    def as_float32(pairs):
        return [(step, float(np.float32(value))) for step, value in pairs]

    history = read_run(federated).history
    got = read_scalars(tmp_path / "tb" / "stc")
    evaluated = [r for r in history if "test_accuracy" in r]
    assert [step for step, _ in got["accuracy/test"]] == [2, 4, 6]
    for tag, key, records in (("accuracy/test", "test_accuracy", evaluated), ("loss/train", "train_loss", evaluated),
                              ("bits/up", "bits_up", history), ("bits/down", "bits_down", history)):
        assert got[tag] == as_float32((r["round"], r[key]) for r in records), tag
    totals = np.cumsum([r["bits_up"] + r["bits_down"] for r in history])
    assert got["bits/cumulative"] == as_float32(zip(range(1, 7), totals))

    history = read_run(lazy).history
    got = read_scalars(tmp_path / "tb" / "laq")
    assert got["loss/objective"] == as_float32((r["iteration"], r["objective"]) for r in history)
    assert got["bits/cumulative"] == as_float32((r["iteration"], r["bits"]) for r in history)
    assert got["accuracy/test"] == as_float32([(0, history[0]["test_accuracy"]), (5, history[5]["test_accuracy"]),
                                               (10, history[10]["test_accuracy"]),
                                               (12, history[-1]["final_test_accuracy"])])
    # an export again replaces its event files: no scalar twice
    assert main(["export", str(lazy), "--to", "tensorboard", str(tmp_path / "tb")]) == 0
    assert read_scalars(tmp_path / "tb" / "laq") == got


def test_without_the_extra_one_line_says_how_to_install_it(two_runs, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "tensorboardX", None)          # import tensorboardX raises ImportError
    assert main(["export", str(two_runs[0]), "--to", "tensorboard", str(tmp_path / "tb")]) == 2
    assert error_lines(capsys.readouterr().err) == [
        'fedsim: error: the TensorBoard export needs the extra tensorboard: pip install '
        '"fedsim-compress[tensorboard]" (or: pip install tensorboardX)']
    assert main(["export", str(two_runs[0]), "--to", "csv", str(tmp_path / "tb")]) == 2
    assert "--to FORMAT must be tensorboard, got 'csv'" in capsys.readouterr().err
