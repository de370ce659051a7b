"""What a new user meets first: progress on a pipe, the note while kernels compile, show-config's allowed
values, a warning for settings a run does not use, help texts, a data_dir that does not exist."""

import re

import pytest

from tests.conftest import TINY, error_lines, fedsim


def test_progress_on_a_pipe_is_a_line_every_few_seconds_at_most(tmp_path):
    result = fedsim(tmp_path, "run", "--preset", "synthetic", *TINY, "--set", "federated.rounds=400",
                    "--out", tmp_path / "run")
    assert result.returncode == 0, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.startswith("fedsim: synthetic: round ")]
    assert lines and lines[-1].startswith("fedsim: synthetic: round 400/400")
    seconds = [int(re.search(r"\((\d+) s", line).group(1)) for line in lines]
    assert len(lines) <= max(seconds) / 5 + 2, lines            # one line per 5 s at most, plus the last
    assert "\r" not in result.stderr                            # no bar redrawn into a file


def test_a_first_run_with_an_empty_kernel_cache_says_it_is_compiling(tmp_path):
    first, again = (fedsim(tmp_path, "run", "--preset", "synthetic", *TINY, "--set", "federated.rounds=2", "--out",
                           tmp_path / out, NUMBA_CACHE_DIR=str(tmp_path / "empty-cache")) for out in ("run", "again"))
    assert first.returncode == 0, first.stderr
    assert "compiling the kernels this run uses (once per machine" in first.stderr
    assert "compiling" not in again.stderr


def test_show_config_lists_the_allowed_values(tmp_path):
    text = fedsim(tmp_path, "show-config", "--preset", "synthetic").stdout
    method = next(line for line in text.splitlines() if line.startswith('method = "stc_updown"'))
    assert "stc_updown" in method.split("#", 1)[1] and "qsgd_up" in method and "fedavg" in method
    partition = next(line for line in text.splitlines() if line.startswith("partition ="))
    assert "classes_per_client | dirichlet | shards | iid | contiguous | natural" in partition
    lazy_method = next(line for line in text.splitlines() if line.startswith('method = "laq"'))
    assert "gd, qgd, lag-wk, lag-ps, laq, slaq" in lazy_method
    assert "one of METHODS" not in text and "one of PARTITIONS" not in text


@pytest.mark.parametrize("config", [["--preset", "synthetic"], []])     # also with no config: the defaults
def test_settings_a_run_does_not_use_are_named(tmp_path, config):
    result = fedsim(tmp_path, "show-config", *config, "--set", "lazy.bits=2", "--set", "qsgd.levels=4",
                    "--set", "data.dirichlet_alpha=0.3", "--set", "federated.lr_decay=0.5", "--set", "run.f_star=1")
    assert result.returncode == 0
    # a setting of a used table that the partition, the schedule or the family does not read
    assert "data.dirichlet_alpha (read only with data.partition = \"dirichlet\", not " in result.stderr
    assert "federated.lr_decay (read only with federated.lr_schedule = \"exponential\" or \"step\", not " \
           "\"constant\")" in result.stderr
    assert "run.f_star (read only with family = \"lazy\", not \"federated\")" in result.stderr
    assert "settings not used by this run: [lazy] (family is 'federated')" in result.stderr
    assert "[qsgd] (method 'stc_updown' does not use the qsgd compressor)" in result.stderr


def test_help_texts(tmp_path):
    for command in ("plot", "compare"):
        text = fedsim(tmp_path, command, "--help").stdout
        assert re.search(r"RUN_DIR\s+run folders", text), text


def test_a_data_dir_that_does_not_exist_is_an_error(tmp_path):
    result = fedsim(tmp_path, "run", "--preset", "stc-mnist", "--data-dir", tmp_path / "nonexistent",
                    "--out", tmp_path / "run")
    lines = error_lines(result.stderr)
    assert result.returncode == 2 and len(lines) == 1 and "data_dir" in lines[0], result.stderr
