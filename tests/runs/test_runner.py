"""Run folders: history/checkpoint consistency, summaries, crash / interrupt and resume."""

import json
import os
import signal
import subprocess
from pathlib import Path

import numpy as np
import pytest

import fedsim
from fedsim.algorithms.federated import FederatedRun, reach as federated_reach
from fedsim.algorithms.lazy import (LazyRun, f_star_of as lazy_f_star, records_reach as lazy_reach,
                                   records_spent_before as lazy_bits_before)
from fedsim.config import ConfigError, load_preset
from fedsim.runs import (RunFolder, RunFolderError, default_run_dir, read_run, resume_run, start_run, strip_wall_time,
                         summarize)
from fedsim.runs.folder import (CHECKPOINT_FILE, CHECKPOINT_NOTE_FILE, CONFIG_FILE, HISTORY_FILE, META_FILE,
                                SUMMARY_FILE)
from tests.runs.conftest import before_step, history, tiny_federated

# A small offline lazy run: 6 synthetic devices, 25 iterations.
TINY_LAZY = ["data.synthetic_devices=6", "lazy.n_workers=6", "lazy.iterations=25", "lazy.eval_every=10"]


# --- the folder ---------------------------------------------------------------------------------------------

def test_history_is_cut_back_to_the_checkpoint(tmp_path):
    folder = RunFolder(tmp_path)
    lines = [json.dumps({"round": r}) for r in range(1, 6)]
    (tmp_path / HISTORY_FILE).write_text("\n".join(lines) + "\n" + '{"round": 6, "tr')   # half-written line
    assert [r["round"] for r in folder.read_history()] == [1, 2, 3, 4, 5]
    folder.truncate_history(3)
    assert (tmp_path / HISTORY_FILE).read_text() == "\n".join(lines[:3]) + "\n"
    folder.truncate_history(0)
    assert (tmp_path / HISTORY_FILE).read_bytes() == b""
    # fewer records than the checkpoint: rebuilt from the checkpoint's own copy, or refused
    folder.truncate_history(2, [{"round": 1}, {"round": 2}])
    assert folder.read_history() == [{"round": 1}, {"round": 2}]
    with pytest.raises(RunFolderError, match="holds 2 records but the checkpoint has 4"):
        folder.truncate_history(4)


def test_checkpoint_round_trip(tmp_path):
    folder = RunFolder(tmp_path)
    assert folder.read_checkpoint() is None
    arrays = {"weights": np.arange(5, dtype=np.float32), "touched": np.array([0, 3], np.int64)}
    meta = {"round": 7, "history": [{"round": 1, "x": 0.1}], "rng": {"state": 2 ** 100}}
    folder.write_checkpoint(arrays, meta, planned=20)
    read_arrays, read_meta, _ = folder.read_checkpoint()
    assert read_meta == meta
    assert read_arrays.keys() == arrays.keys()
    for key in arrays:
        np.testing.assert_array_equal(read_arrays[key], arrays[key])
        assert read_arrays[key].dtype == arrays[key].dtype
    note = json.loads((tmp_path / CHECKPOINT_NOTE_FILE).read_text())
    assert (note["completed"], note["planned"]) == (7, 20)
    with pytest.raises(ValueError, match="reserved"):
        folder.write_checkpoint({"__meta__": np.zeros(1)}, meta, planned=20)


def test_default_run_dir_is_new_and_safe(tmp_path):
    first = default_run_dir("my config/v1", root=tmp_path)
    assert first.parent == tmp_path and first.name.startswith("my-config-v1-")
    first.mkdir()
    second = default_run_dir("my config/v1", root=tmp_path)
    assert second != first and not second.exists()
    made = default_run_dir("my config/v1", root=tmp_path, create=True)    # what `fedsim run` without --out takes
    assert made.is_dir() and made != first
    with pytest.raises(RunFolderError, match="cannot create the run folder /proc/fedsim-runs/x-"):
        default_run_dir("x", root="/proc/fedsim-runs", create=True)


# --- summaries and targets ----------------------------------------------------------------------------------

def test_federated_summary_and_reach_on_hand_made_records():
    history = [{"round": 1, "bits_up": 10, "bits_down": 5, "test_accuracy": 0.5, "time": 1.0},
               {"round": 2, "bits_up": 10, "bits_down": 5, "time": 1.0},
               {"round": 3, "bits_up": 10, "bits_down": 5, "test_accuracy": 0.9, "time": 1.0},
               {"round": 4, "bits_up": 10, "bits_down": 5, "test_accuracy": 0.85, "time": 0.5}]
    assert federated_reach(history, 0.8) == {"round": 3, "bits_up": 30, "bits_down": 15, "bits": 45}
    assert federated_reach(history, 0.95) is None
    summary = summarize(tiny_federated(), history)
    assert summary["bits_up"] == 40 and summary["bits_down"] == 20 and summary["bits"] == 60
    assert (summary["final_test_accuracy"], summary["best_test_accuracy"], summary["best_round"]) == \
        (0.85, 0.9, 3)
    assert summary["seconds"] == 3.5 and summary["completed"] == 4


def test_lazy_reach_counts_the_cost_of_reaching_theta_k():
    # record k: objective at theta^k; communications / bits cumulative THROUGH iteration k
    history = [{"objective": 5.0, "communications": 3, "bits": 30},
               {"objective": 2.0, "communications": 4, "bits": 40},
               {"objective": 1.0 + 1e-7, "communications": 6, "bits": 60},
               {"objective": 1.0, "communications": 7, "bits": 70}]
    communications, bits = lazy_bits_before(history)
    assert communications.tolist() == [0, 3, 4, 6] and bits.tolist() == [0, 30, 40, 60]
    assert lazy_reach(history, 1.0, 1e-6) == {"iteration": 2, "communications": 4, "bits": 40}
    assert lazy_reach(history, 0.0, 1e-6) is None


# --- runs ---------------------------------------------------------------------------------------------------

def test_run_writes_every_file(tmp_path, finished):
    config, reference = tiny_federated(), finished[1]
    out = tmp_path / "run"
    outcome = start_run(config, out, name="tiny", quiet=True, command=["fedsim", "run"])
    assert (outcome.status, outcome.completed, outcome.exit_code) == ("completed", 12, 0)
    for name in (CONFIG_FILE, META_FILE, HISTORY_FILE, SUMMARY_FILE, CHECKPOINT_FILE, CHECKPOINT_NOTE_FILE):
        assert (out / name).is_file(), name
    assert not [name for name in os.listdir(out) if name.endswith(".part")]    # no temporary file left
    folder = RunFolder(out)
    assert folder.read_config() == config
    history = folder.read_history()
    assert [r["round"] for r in history] == list(range(1, 13))
    assert strip_wall_time(history) == reference          # same seed, same records, bit for bit
    meta = json.loads((out / META_FILE).read_text())
    assert meta["seed"] == 0 and meta["command"] == ["fedsim", "run"]
    assert all(meta[key] for key in ("fedsim", "numpy", "numba", "python", "started")), meta
    checkout = Path(fedsim.__file__).resolve().parents[1]
    if (checkout / ".git").exists():       # fedsim imported from a git checkout (CI's clean clone is one)
        head = subprocess.run(["git", "-C", str(checkout), "rev-parse", "HEAD"], capture_output=True, text=True)
        assert meta["git_commit"] == head.stdout.strip() and isinstance(meta["git_dirty"], bool)
    else:                                  # an installed copy: nothing to record
        assert "git_commit" not in meta
    assert meta["sessions"][0]["status"] == "completed"
    summary = json.loads((out / SUMMARY_FILE).read_text())
    assert summary["status"] == "completed" and summary["completed"] == 12
    assert summary["final_test_accuracy"] == history[-1]["test_accuracy"]
    assert summary["bits"] == sum(r["bits_up"] + r["bits_down"] for r in history)
    result = read_run(out)
    assert (result.family, result.method, result.status) == ("federated", "stc_updown", "completed")
    with pytest.raises(RunFolderError, match="already holds a run"):
        start_run(config, out, name="tiny", quiet=True)


def crash():
    raise RuntimeError("simulated crash")


@pytest.mark.parametrize("method", ["stc_updown", "laq", "lag-ps", "slaq"])
def test_crash_then_resume_equals_an_uninterrupted_run(tmp_path, monkeypatch, method):
    """A crash in step 7 (federated) or 11 (lazy) of a run checkpointed every 4 steps; and the observer of each
    session sees the records written to history.jsonl, in order: the resume's from the checkpoint on (the
    steps done again after it are observed again, equal bit for bit)."""
    if method == "stc_updown":
        config, run_class, crashed_at = tiny_federated(), FederatedRun, 6
    else:
        config = load_preset("laq-synthetic", TINY_LAZY + [f"lazy.method={method}", "run.checkpoint_every=4",
                                                           "lazy.minibatch_size=5"])
        run_class, crashed_at = LazyRun, 10
    checkpoint = crashed_at // 4 * 4
    start_run(config, tmp_path / "straight", name="straight", quiet=True)
    reference = strip_wall_time(RunFolder(tmp_path / "straight").read_history())
    out = tmp_path / "run"
    before_step(monkeypatch, run_class, crashed_at, crash)
    first_session, second_session = [], []
    with pytest.raises(RuntimeError, match="simulated crash"):
        start_run(config, out, name="crash", quiet=True, observer=first_session.append)
    monkeypatch.undo()
    folder = RunFolder(out)
    assert first_session == folder.read_history()
    assert len(folder.read_history()) == crashed_at            # steps past the checkpoint included
    assert json.loads((out / CHECKPOINT_NOTE_FILE).read_text())["completed"] == checkpoint
    assert not (out / SUMMARY_FILE).exists()
    outcome = resume_run(out, quiet=True, observer=second_session.append)
    assert (outcome.status, outcome.completed) == ("completed", config.steps)
    assert strip_wall_time(folder.read_history()) == reference
    assert second_session == folder.read_history()[checkpoint:]
    assert strip_wall_time(second_session[:crashed_at - checkpoint]) == strip_wall_time(first_session[checkpoint:])
    sessions = json.loads((out / META_FILE).read_text())["sessions"]
    assert [(s["from"], s["to"]) for s in sessions] == [(0, checkpoint), (checkpoint, config.steps)]
    # the crashed session's wall time counts up to its checkpoint: the run's wall time holds its steps' time
    summary = json.loads((out / SUMMARY_FILE).read_text())
    assert summary["wall_seconds"] == sessions[0]["seconds"] + sessions[1]["seconds"] >= summary["seconds"] > 0
    again = resume_run(out, quiet=True)
    assert again.status == "finished-before" and again.exit_code == 0


@pytest.mark.parametrize("number", [signal.SIGINT, signal.SIGTERM, signal.SIGHUP])
def test_a_stop_signal_stops_at_a_round_boundary_and_resumes(tmp_path, monkeypatch, finished, number):
    config, reference = tiny_federated(), finished[1]
    out = tmp_path / "run"
    handler = signal.getsignal(number)
    # as Ctrl-C (or a SIGTERM, a closed terminal's SIGHUP) during round 6: the round still completes
    before_step(monkeypatch, FederatedRun, 5, lambda: signal.raise_signal(number))
    outcome = start_run(config, out, name="stopped", quiet=True)
    monkeypatch.undo()
    assert (outcome.status, outcome.completed, outcome.exit_code) == ("interrupted", 6, 128 + number)
    assert signal.getsignal(number) is handler      # handlers restored
    folder = RunFolder(out)
    assert len(folder.read_history()) == 6
    assert json.loads((out / CHECKPOINT_NOTE_FILE).read_text())["completed"] == 6
    assert not (out / SUMMARY_FILE).exists()
    assert resume_run(out, quiet=True).status == "completed"
    assert strip_wall_time(folder.read_history()) == reference


@pytest.mark.parametrize("killed", ["before config.toml", "after config.toml"])
def test_a_run_killed_while_it_starts_can_be_resumed_or_started_again(tmp_path, monkeypatch, finished, killed):
    """A kill while start_run writes the folder's first files (simulated by an exception in the config's
    write): a folder holding config.toml holds meta.json too, so --resume runs it from the start; one killed
    before that may take the new run."""
    import fedsim.runs.loop as loop
    write_config = loop._write_config

    def killed_there(folder, config, name):
        if killed == "after config.toml":
            write_config(folder, config, name)
        raise KeyboardInterrupt

    monkeypatch.setattr(loop, "_write_config", killed_there)
    out = tmp_path / "run"
    with pytest.raises(KeyboardInterrupt):
        start_run(tiny_federated(), out, name="run", quiet=True)
    monkeypatch.undo()
    if killed == "after config.toml":
        outcome = resume_run(out, quiet=True)
    else:
        assert not (out / CONFIG_FILE).exists()
        outcome = start_run(tiny_federated(), out, name="run", quiet=True)
    assert outcome.status == "completed" and history(out) == finished[1]


def test_a_folder_that_is_no_run_or_a_checkpoint_of_another_config_is_refused(tmp_path):
    with pytest.raises(RunFolderError, match="is not a fedsim run folder"):
        resume_run(tmp_path, quiet=True)
    out = tmp_path / "run"
    start_run(tiny_federated("federated.rounds=4"), out, name="a", quiet=True)
    (out / SUMMARY_FILE).unlink()
    # a checkpoint of this run whose model has other dimensions than the config's
    arrays, meta, identity = RunFolder(out).read_checkpoint()
    arrays["server_weights"] = arrays["server_weights"][:-1]
    RunFolder(out).write_checkpoint(arrays, meta, planned=4, identity=identity)
    with pytest.raises(RunFolderError, match="does not fit the run's config"):
        resume_run(out, quiet=True)
    # and a config.toml edited to fit another run is refused before any checkpoint is read
    RunFolder(out).write_config(tiny_federated("federated.rounds=6"))
    with pytest.raises(RunFolderError, match=r"was edited after the run started \(federated.rounds: 4 -> 6\)"):
        resume_run(out, quiet=True)


# A synthetic run's config.toml as fedsim bd3cc2d wrote it (the other settings at their defaults) and the
# config_sha256 it recorded in meta.json: a relative or ~ data.data_dir and a -0.0 are read back as written.
EARLIER = ('[data]\ndataset = "synthetic"\npartition = "natural"\nsynthetic_devices = 8\n{data}\n'
           '[federated]\nn_clients = 8\nrounds = 1\nbatch_size = 10\n{federated}\n')


@pytest.mark.parametrize("data, federated, recorded", [
    ('data_dir = "dd"', "", "0bf569d6c9606766a464230887f950c7518d0854d5a3af1951b1a098aeae0114"),
    ('data_dir = "~/dd"', "", "f0bf6767f9fde1ff35d65f0d1dde7c6cfbd5a6813d31080e07395e58d2166faa"),
    ("", "l2 = -0.0", "39844c444c1441737d5b06969fd9f94ed93e8ac547efcf17ea14a88ccfca7bb8"),
])
def test_a_run_folder_of_an_earlier_fedsim_resumes(tmp_path, data, federated, recorded):
    """Its config reads back to the fingerprint its meta.json recorded (was: 'edited after the run started')."""
    out = tmp_path / "run"
    out.mkdir()
    (out / CONFIG_FILE).write_text(EARLIER.format(data=data, federated=federated))
    (out / META_FILE).write_text(json.dumps({"name": "earlier", "run_id": "0" * 32, "config_sha256": recorded,
                                             "sessions": [{"started": "2026-12-07T01:00:00", "from": 0}]}))
    assert resume_run(out, quiet=True).status == "completed"
    assert json.loads((out / META_FILE).read_text())["config_sha256"] == recorded


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
def test_divergence_is_recorded(tmp_path):
    config = tiny_federated("federated.method=fedavg", "federated.lr=1e38", "federated.local_iterations=10")
    outcome = start_run(config, tmp_path / "run", name="diverge", quiet=True)
    assert outcome.status == "diverged" and outcome.exit_code == 1 and "NaN or inf" in outcome.message
    summary = json.loads((tmp_path / "run" / SUMMARY_FILE).read_text())
    assert summary["status"] == "diverged" and "NaN or inf" in summary["message"]


def test_setting_that_does_not_fit_the_data_is_a_config_error(tmp_path):
    config = load_preset("synthetic", ["data.partition=classes_per_client", "federated.n_clients=100000"])
    with pytest.raises(ConfigError, match="the config does not fit the data: federated.n_clients"):
        start_run(config, tmp_path / "run", name="bad", quiet=True)
    assert not (tmp_path / "run").exists()


def test_lazy_progress_ends_with_the_accuracy_the_summary_reports(tmp_path, capsys):
    """At the final theta^K (0.8302), not at the last evaluation's theta^8 (0.8113)."""
    out = tmp_path / "lazy"
    start_run(load_preset("laq-synthetic", TINY_LAZY + ["lazy.iterations=9", "lazy.eval_every=8"]), out,
              name="lazy")
    last_line = capsys.readouterr().err.strip().splitlines()[-1]
    final = json.loads((out / SUMMARY_FILE).read_text())["final_test_accuracy"]
    assert last_line.startswith("fedsim: lazy: iteration 9/9") and f"acc {final:.4f}" in last_line, last_line
    assert f"{RunFolder(out).read_history()[8]['test_accuracy']:.4f}" != f"{final:.4f}"


def test_lazy_run(tmp_path):
    config = load_preset("laq-synthetic", TINY_LAZY)
    out = tmp_path / "lazy"
    observed = []
    outcome = start_run(config, out, name="lazy", quiet=True, observer=observed.append)
    assert outcome.status == "completed" and outcome.completed == 25
    history = RunFolder(out).read_history()
    assert observed == history
    assert [r["iteration"] for r in history] == list(range(25))
    first, last = history[0], history[-1]
    assert first["uploads"] == list(range(6))             # every worker uploads at k = 0
    assert last["communications"] == sum(len(r["uploads"]) for r in history)
    # LAQ, b = 4: each upload costs b P + 32 bits; P = 60 * 10 + 10
    assert last["bits"] == last["communications"] * (4 * 610 + 32)
    assert [r["iteration"] for r in history if "test_accuracy" in r] == [0, 10, 20]
    summary = json.loads((out / SUMMARY_FILE).read_text())
    assert summary["final_objective"] == last["objective"] and "final_test_accuracy" in summary
    assert lazy_f_star([read_run(out)]) == min(r["objective"] for r in history)


def test_the_data_is_loaded_and_split_on_the_runs_blas_threads(monkeypatch):
    """The STC pipeline resizes with BLAS products: loading and splitting run pinned to run.blas_threads,
    like the run, whatever the process's BLAS threads are."""
    from threadpoolctl import threadpool_info, threadpool_limits

    import fedsim.runs.loop as loop
    seen = []

    def watched(function):
        def call(*args, **kwargs):
            seen.append({pool["num_threads"] for pool in threadpool_info() if pool["user_api"] == "blas"})
            return function(*args, **kwargs)
        return call

    monkeypatch.setattr(loop, "load_data", watched(loop.load_data))
    monkeypatch.setattr(loop, "split_among_clients", watched(loop.split_among_clients))
    with threadpool_limits(limits=1):
        loop.build_run(load_preset("synthetic", ["run.blas_threads=2"]), progress=False)
    assert seen == [{2}, {2}]


def test_round_1_solved_for_a_bit_budget_before_the_folder_trains_on_the_runs_threads(tmp_path, monkeypatch):
    """bits_per_round is solved on round 1's updates before the run folder is made: that round trains pinned to
    run.blas_threads (BLAS and the softmax blocks), as execute() pins the rounds after it."""
    from threadpoolctl import threadpool_info, threadpool_limits

    from fedsim.algorithms.federated.run import FederatedRun
    from fedsim.models import softmax
    seen, local_round = [], FederatedRun._local_round

    def watched(self, t):
        seen.append(({pool["num_threads"] for pool in threadpool_info() if pool["user_api"] == "blas"},
                     softmax._threads))
        return local_round(self, t)

    monkeypatch.setattr(FederatedRun, "_local_round", watched)
    config = load_preset("synthetic", ["run.blas_threads=2", "federated.rounds=2", "federated.bits_per_round=1000"])
    with threadpool_limits(limits=1):
        assert start_run(config, tmp_path / "run", name="budget", quiet=True).status == "completed"
    assert seen == [({2}, 2)] * 2


def test_round_1_solved_for_a_bit_budget_counts_in_the_sessions_time_and_compile_note(tmp_path, monkeypatch, capsys):
    """Round 1, trained before the folder to solve bits_per_round, is the session's: its time counts in its record,
    its progress line and wall_seconds (no shorter than seconds), and a compile in it is announced as a first
    step's is (here round 1's training "compiles" for 0.6 s)."""
    import contextlib
    import time

    import fedsim.runs.loop as loop
    compiles, local_round = {"started": 0}, FederatedRun._local_round

    def compiling(self, t):
        if t == 1:
            compiles["started"] += 1
            compiles["round 1 at"] = loop.now()
            time.sleep(0.6)
        return local_round(self, t)

    monkeypatch.setattr(FederatedRun, "_local_round", compiling)
    monkeypatch.setattr(loop, "_counting_compiles", contextlib.contextmanager(lambda: (yield compiles)))
    monkeypatch.setattr(loop, "COMPILE_NOTE_SECONDS", 0.3)
    stamps = iter(range(1000))
    monkeypatch.setattr(loop, "now", lambda: f"t{next(stamps):03d}")     # the order of the stamps
    config = load_preset("synthetic", ["federated.rounds=2", "federated.bits_per_round=1000"])
    assert start_run(config, tmp_path / "run", name="budget").status == "completed"
    # the session started before its round 1 was trained (was: stamped when the folder was made, after it)
    assert json.loads((tmp_path / "run" / META_FILE).read_text())["sessions"][0]["started"] < compiles["round 1 at"]
    summary = json.loads((tmp_path / "run" / SUMMARY_FILE).read_text())
    assert summary["wall_seconds"] >= summary["seconds"] >= RunFolder(tmp_path / "run").read_history()[0]["time"] >= 0.6
    said = capsys.readouterr().err.splitlines()
    assert loop.COMPILE_NOTE in said and not any("round 1/2" in line and "(0 s)" in line for line in said), said
