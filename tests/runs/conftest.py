"""What the run tests share, and the other tests that run fedsim import: the tiny federated run (and the
finished one), a preset run to its end and read back, a run folder's records without wall time, an action taken
inside a run's step loop (a crash, a signal), and the check of a command's one-line error."""

import pytest

from fedsim.config import load_preset
from fedsim.runs import RunFolder, read_run, start_run, strip_wall_time
from tests.conftest import error_lines

#: A small offline federated run: 8 synthetic devices, 12 rounds (about 10 ms each), a checkpoint every 4.
TINY_FEDERATED = ["data.synthetic_devices=8", "federated.n_clients=8", "federated.rounds=12",
                  "run.checkpoint_every=4"]
#: tiny_federated() as options of `fedsim run`.
ROUNDS12 = [part for setting in TINY_FEDERATED for part in ("--set", setting)]


def tiny_federated(*overrides):
    return load_preset("synthetic", TINY_FEDERATED + list(overrides))


@pytest.fixture(scope="session")
def finished(tmp_path_factory):
    """An uninterrupted run of :func:`tiny_federated`: (its folder, its records without wall time)."""
    out = tmp_path_factory.mktemp("finished") / "run"
    outcome = start_run(tiny_federated(), out, name="run", quiet=True)
    assert outcome.status == "completed", outcome.message
    return out, history(out)


def finished_run(root, name: str, preset: str, overrides=()):
    """The preset ``preset`` with ``overrides`` (``section.key=value`` strings) run to its end into ``root/name``,
    read back (:func:`fedsim.runs.read_run`)."""
    outcome = start_run(load_preset(preset, list(overrides)), root / name, name=name, quiet=True)
    assert outcome.status == "completed", outcome.message
    return read_run(root / name)


def history(run_dir) -> list[dict]:
    """The records of the run folder ``run_dir`` without wall time (what reproduces bit for bit)."""
    return strip_wall_time(RunFolder(run_dir).read_history())


def before_step(monkeypatch, run_class, completed: int, action) -> None:
    """``run_class.step`` calls ``action()`` first when ``completed`` steps are done."""
    original_step = run_class.step

    def step(self):
        if self.completed == completed:
            action()
        return original_step(self)
    monkeypatch.setattr(run_class, "step", step)


def one_line_error(result, status=2, *fragments):
    """The command failed with ``status`` and said so in exactly one line containing ``fragments``."""
    lines = error_lines(result.stderr)
    assert result.returncode == status, (result.returncode, result.stderr)
    assert len(lines) == 1 and lines[0].startswith("fedsim: error: "), result.stderr
    assert "Traceback" not in result.stderr
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
    return lines[0]
