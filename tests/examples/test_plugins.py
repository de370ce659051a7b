"""The plugin example (``examples/plugins/fedsim_int8``: an 8-bit quantizer and a round-robin partitioner)
through every path a user takes: ``fedsim run`` with ``plugins = [...]`` in the config, ``--resume`` of a
run stopped early (``--extend-to``), ``show-config``, a sweep on 2 local workers stopped by Ctrl-C and
continued, a sweep on a real Dask cluster, the report card (``--plugin``), and the entry point route (a
``*.dist-info`` folder on PYTHONPATH, install-free). A plugin that cannot be imported is one line naming it,
exit status 2.

Every fedsim here runs in a child process whose PYTHONPATH holds the example's folder: importing the
plugin into the test process would add its compressor to the registries that other tests walk.
"""

import configparser
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from fedsim.config import tomllib
from tests.conftest import TINY, clean_env, fedsim
from tests.examples.conftest import REPO
from tests.runs.conftest import history, one_line_error
from tests.sweeps.conftest import checkpointed, histories, signal_when

try:
    from tests.sweeps.test_sweeps_dask import dask_cluster  # noqa: F401  (a fixture)
except pytest.skip.Exception:          # no dask.distributed: only the Dask test is skipped
    @pytest.fixture
    def dask_cluster():
        pytest.skip("dask.distributed is not installed (pip install -e '.[dask]')")

PLUGIN_FOLDER = REPO / "examples" / "plugins"
WITH_PLUGIN = os.pathsep.join([str(REPO), str(PLUGIN_FOLDER)])
CONFIG = ('plugins = ["fedsim_int8"]\n\n[data]\ndataset = "synthetic"\npartition = "round_robin"\n'
          'synthetic_devices = 8\n\n[federated]\nmethod = "int8_updown"\nn_clients = 8\nrounds = 6\n')


def sweep_file(tmp_path, rounds: int, seeds: str) -> Path:
    path = tmp_path / "int8.toml"
    path.write_text(f'base = "synthetic"\nname = "int8"\n\n[set]\nplugins = ["fedsim_int8"]\n'
                    f'"data.synthetic_devices" = 8\n"federated.n_clients" = 8\n"federated.rounds" = {rounds}\n\n'
                    f'[grid]\n"federated.method" = ["int8_up", "int8_updown"]\nseed = {seeds}\n')
    return path


def test_the_int8_message_keeps_the_compressor_contract():
    """decode(encode(m)) == m, to_dense() == the decoded row bitwise, bit counts, and |x - x_hat| <= s / 254."""
    code = """if True:
        import numpy as np
        import fedsim_int8
        from fedsim.compress.base import Layout, decode, make_compressor
        compressor = make_compressor("int8")
        for dtype, bits in ((np.float32, 2 * 32 + 8 * 10), (np.float64, 2 * 64 + 8 * 10)):
            rows = np.random.default_rng(0).standard_normal((3, 10)).astype(dtype)
            rows[1, :4] = 0                     # a segment of zeros: scale 0, codes 0
            compressed, _ = compressor.compress(rows, compressor.init(Layout((0, 4, 10))))
            assert list(compressed.encoded_bits) == [bits] * 3 and list(compressed.analytic_bits) == [144.0] * 3
            for row in range(3):
                message = compressed.message(row)
                stream, count = message.encode_with_bit_count()
                assert count == bits and decode(stream, message.format) == message
                assert message.to_dense().tobytes() == compressed.decoded[row].tobytes()
                for start, stop in ((0, 4), (4, 10)):
                    scale = np.abs(rows[row, start:stop]).max()
                    error = np.abs(compressed.decoded[row, start:stop] - rows[row, start:stop]).max()
                    assert error <= scale / 254 * 1.0001
        # Stochastic rounding: within one step s / 127 of x, and unbiased (the mean of 4,000 draws of one row
        # within 5 standard errors of x; a draw's variance is at most (s / 127)^2 / 4).
        stochastic = make_compressor("int8", rounding="stochastic")
        x = np.random.default_rng(1).standard_normal(10)
        draws = np.vstack([stochastic.compress(np.tile(x, (400, 1)), stochastic.init(Layout((0, 10))),
                                               np.random.default_rng(seed))[0].decoded for seed in range(10)])
        step = np.abs(x).max() / 127
        assert np.abs(draws - x).max() <= step * 1.0001 and len(np.unique(draws[:, 0])) == 2
        assert np.abs(draws.mean(axis=0) - x).max() <= 5 * (step / 2) / np.sqrt(len(draws))
        print("ok")
    """
    result = subprocess.run([sys.executable, "-c", code], env=clean_env(Path.cwd(), PYTHONPATH=WITH_PLUGIN),
                            capture_output=True, text=True, timeout=120)
    assert result.stdout.strip() == "ok", result.stderr


def test_run_resume_and_show_config_import_the_plugins_the_config_names(tmp_path):
    config = tmp_path / "int8.toml"
    config.write_text(CONFIG)
    stopped = fedsim(tmp_path, "run", config, "--set", "federated.rounds=3", "--out", "part", "--quiet",
                     PYTHONPATH=WITH_PLUGIN)
    assert stopped.returncode == 0, stopped.stderr
    assert json.loads((tmp_path / "part" / "meta.json").read_text())["config"]["plugins"] == ["fedsim_int8"]
    # Plain `fedsim run --resume`: the plugin is imported from the run folder's config, before it is read.
    resumed = fedsim(tmp_path, "run", "--resume", "part", "--extend-to", "6", "--quiet", PYTHONPATH=WITH_PLUGIN)
    assert resumed.returncode == 0, resumed.stderr
    whole = fedsim(tmp_path, "run", config, "--out", "whole", "--quiet", PYTHONPATH=WITH_PLUGIN)
    assert whole.returncode == 0, whole.stderr
    assert len(history(tmp_path / "whole")) == 6 and history(tmp_path / "part") == history(tmp_path / "whole")

    # The same resume where the plugin cannot be imported: one line naming it and the ImportError's message.
    one_line_error(fedsim(tmp_path, "run", "--resume", "part", "--extend-to", "7", PYTHONPATH=str(REPO)), 2,
                   "plugin 'fedsim_int8' failed to import: No module named 'fedsim_int8'")

    # show-config writes the plugins; its output read again is the same config.
    shown = fedsim(tmp_path, "show-config", config, PYTHONPATH=WITH_PLUGIN)
    assert shown.returncode == 0, shown.stderr
    assert 'plugins = ["fedsim_int8"]' in shown.stdout and 'method = "int8_updown"' in shown.stdout
    assert 'partition = "round_robin"' in shown.stdout
    # --set reaches the plugin's own table, the plugins named in the file or in another --set
    for source in ([config], ["--preset", "synthetic", "--set", 'plugins=["fedsim_int8"]']):
        rounding = fedsim(tmp_path, "show-config", *source, "--set", "int8.rounding=stochastic", PYTHONPATH=WITH_PLUGIN)
        assert rounding.returncode == 0 and 'rounding = "stochastic"' in rounding.stdout, rounding.stderr
    (tmp_path / "shown.toml").write_text(shown.stdout)
    again = fedsim(tmp_path, "show-config", "shown.toml", PYTHONPATH=WITH_PLUGIN)
    assert again.stdout.splitlines()[1:] == shown.stdout.splitlines()[1:], again.stderr

    # Bad plugin settings: one line each, exit status 2.
    for value, expected in (('["no_such_plugin"]', "plugin 'no_such_plugin' failed to import: No module named"),
                            ('["examples/plugins/fedsim_int8"]', "module names like 'mypkg.int8' (no file paths)"),
                            ('"fedsim_int8"', "plugins must be a list of importable module names")):
        refused = fedsim(tmp_path, "show-config", "--set", f"plugins={value}", PYTHONPATH=WITH_PLUGIN)
        one_line_error(refused, 2, expected)
    one_line_error(fedsim(tmp_path, "show-config", "--set", "federated.method=int8_up", PYTHONPATH=WITH_PLUGIN), 2,
                   "int8_up", "stc_updown")        # without plugins = [...]: an unknown method


def test_the_report_card_measures_a_plugins_compressor_imported_with_plugin(tmp_path):
    """``fedsim compressors report --plugin MODULE`` imports the plugin through fedsim's loader before the names
    and --set are checked: its compressor is measured at its own settings; without it, int8 is no compressor."""
    report = ("compressors", "report", "int8", "--draws", "5", "--size", "100")
    measured = fedsim(tmp_path, *report, "--plugin", "fedsim_int8", "--set", "int8.rounding=stochastic",
                      PYTHONPATH=WITH_PLUGIN)
    assert measured.returncode == 0, measured.stderr
    assert [line.split()[0] for line in measured.stdout.splitlines()[3:4]] == ["int8"], measured.stdout
    assert "int8: scope=tensor rounding=stochastic; no theory stated" in measured.stdout
    one_line_error(fedsim(tmp_path, *report, "--plugin", "fedsim_int8", "--set", "int8.roundin=nearest",
                          PYTHONPATH=WITH_PLUGIN), 2, "unknown setting 'int8.roundin' in --set; did you mean "
                                                      "'int8.rounding'?")
    one_line_error(fedsim(tmp_path, *report, PYTHONPATH=WITH_PLUGIN), 2, "got int8 (a plugin's: --plugin MODULE")
    one_line_error(fedsim(tmp_path, *report, "--plugin", "no_such_plugin", PYTHONPATH=WITH_PLUGIN), 2,
                   "plugin 'no_such_plugin' failed to import: No module named 'no_such_plugin'")
    one_line_error(fedsim(tmp_path, *report, "--plugin", "examples/plugins/fedsim_int8", PYTHONPATH=WITH_PLUGIN), 2,
                   "--plugin MODULE must be an importable module name like 'mypkg.int8' (no file paths)")


def test_a_sweep_sets_the_plugins_own_table(tmp_path):
    """A plugin compressor's own table (``int8.rounding``) in a sweep's [set] and [grid] is known once the
    plugins the sweep names are imported; without them on the path, one line naming the plugin (exit 2)."""
    path = sweep_file(tmp_path, rounds=2, seeds="[0]")
    path.write_text(path.read_text().replace("[grid]\n", '"int8.rounding" = "stochastic"\n\n[grid]\n'))
    planned = fedsim(tmp_path, "sweep", path, "--dry-run", PYTHONPATH=WITH_PLUGIN)
    assert planned.returncode == 0 and "2 runs" in planned.stdout, planned.stderr
    path.write_text(path.read_text().replace('"int8.rounding" = "stochastic"\n', "") +
                    '"int8.rounding" = ["nearest", "stochastic"]\n')
    planned = fedsim(tmp_path, "sweep", path, "--dry-run", PYTHONPATH=WITH_PLUGIN)
    assert planned.returncode == 0 and "4 runs" in planned.stdout, planned.stderr
    one_line_error(fedsim(tmp_path, "sweep", path, "--dry-run", PYTHONPATH=str(REPO)), 2,
                   "int8.toml: plugin 'fedsim_int8' failed to import")


@pytest.mark.slow
def test_a_sweep_on_two_local_workers_stopped_by_ctrl_c_is_continued(tmp_path):
    path = sweep_file(tmp_path, rounds=300, seeds="[0, 1]")
    out = tmp_path / "sweep"
    command = [sys.executable, "-m", "fedsim", "sweep", str(path), "--workers", "2", "--out", str(out), "--quiet"]
    process = subprocess.Popen(command, cwd=tmp_path, env=clean_env(tmp_path, PYTHONPATH=WITH_PLUGIN),
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    signal_when(process, lambda: any(checkpointed(folder) for folder in out.glob("runs/*")), signal.SIGINT)
    assert process.returncode == 130
    again = fedsim(tmp_path, "sweep", path, "--workers", "2", "--out", out, "--quiet", PYTHONPATH=WITH_PLUGIN,
                   timeout=300)
    assert again.returncode == 0 and "4 completed" in again.stdout, again.stderr
    metas = {folder: json.loads((folder / "meta.json").read_text()) for folder in (out / "runs").iterdir()}
    resumed = [folder for folder, meta in metas.items() if len(meta["sessions"]) == 2]
    assert resumed, "no run was interrupted and continued"
    config = metas[resumed[0]]["config"]
    alone = fedsim(tmp_path, "run", "--preset", "synthetic", "--set", 'plugins=["fedsim_int8"]',
                   "--set", f"federated.method={config['federated']['method']}", "--seed", config["seed"],
                   "--set", "federated.rounds=300", *TINY, "--out", "alone", "--quiet", PYTHONPATH=WITH_PLUGIN)
    assert alone.returncode == 0, alone.stderr
    assert history(resumed[0]) == history(tmp_path / "alone")


@pytest.fixture
def plugin_on_path(monkeypatch):
    """The example's folder on PYTHONPATH of every process started from now on (the Dask workers too)."""
    monkeypatch.setenv("PYTHONPATH", WITH_PLUGIN)


@pytest.mark.slow
def test_a_dask_sweep_imports_the_plugins_in_its_workers(tmp_path, plugin_on_path, dask_cluster):
    path = sweep_file(tmp_path, rounds=4, seeds="[0]")
    results = {backend: fedsim(tmp_path, "sweep", path, "--backend", backend, *extra, "--out", backend, "--quiet",
                               timeout=180)
               for backend, extra in (("dask", ["--scheduler", dask_cluster.address]), ("local", ["--workers", "2"]))}
    for result in results.values():
        assert result.returncode == 0 and "2 completed" in result.stdout, (result.stderr, dask_cluster.log_tails())
    assert histories(tmp_path / "dask") == histories(tmp_path / "local")


def test_the_plugin_package_depends_on_this_projects_distribution():
    """``pip install ./examples/plugins`` pulls in the distribution setup.cfg names (PyPI's ``fedsim`` is
    an unrelated project)."""
    setup = configparser.ConfigParser()
    setup.read(REPO / "setup.cfg")
    project = tomllib.loads((PLUGIN_FOLDER / "pyproject.toml").read_text())["project"]
    assert project["dependencies"] == [setup["metadata"]["name"]]


def test_the_entry_point_route_needs_no_plugins_setting(tmp_path):
    """A ``*.dist-info`` folder with an ``entry_points.txt`` on PYTHONPATH is an installed distribution to
    importlib.metadata: its ``fedsim.plugins`` entry points are imported in every fedsim process."""
    def distribution(folder: Path, target: str) -> str:
        info = folder / "fedsim_int8-0.1.dist-info"
        info.mkdir(parents=True)
        (info / "METADATA").write_text("Metadata-Version: 2.1\nName: fedsim-int8\nVersion: 0.1\n")
        (info / "entry_points.txt").write_text(f"[fedsim.plugins]\nint8 = {target}\n")
        return os.pathsep.join([WITH_PLUGIN, str(folder)])

    installed = distribution(tmp_path / "good", "fedsim_int8")
    result = fedsim(tmp_path, "run", "--preset", "synthetic", "--set", "federated.method=int8_up",
                    "--set", "federated.rounds=2", "--out", "run", "--quiet", PYTHONPATH=installed)
    assert result.returncode == 0, result.stderr
    assert len(history(tmp_path / "run")) == 2
    resumed = fedsim(tmp_path, "run", "--resume", "run", "--extend-to", "3", "--quiet", PYTHONPATH=installed)
    assert resumed.returncode == 0 and len(history(tmp_path / "run")) == 3, resumed.stderr
    card = fedsim(tmp_path, "compressors", "report", "int8", "--draws", "5", "--size", "100", PYTHONPATH=installed)
    assert card.returncode == 0 and "int8: scope=tensor rounding=nearest" in card.stdout, card.stderr

    broken = distribution(tmp_path / "bad", "no_such_module")
    one_line_error(fedsim(tmp_path, "show-config", PYTHONPATH=broken), 2, "plugin 'int8' (entry point no_such_module "
                   "of fedsim.plugins) failed to import: No module named 'no_such_module'")
