"""benchmarks/agreement.py: the independent torch implementation's STC is the paper's operator (fedsim's
compressor gives the same message on vectors without ties at the threshold), and its command line refuses
what it cannot run. The 100-round comparison itself is the benchmark's run (benchmarks/results/agreement.json)."""

import json
from types import SimpleNamespace

import numpy as np
import pytest

from benchmarks import agreement
from fedsim.compress.base import Layout, make_compressor


@pytest.mark.parametrize("size, p", [(10, 0.001), (200, 0.05), (4096, 0.002), (20_480, 0.001)])
def test_the_torch_sides_stc_is_fedsims_on_one_tensor(torch, size, p):
    x = np.random.default_rng(size).standard_normal(size)          # continuous: no ties at the threshold
    compressor = make_compressor("stc", p=p)
    fedsim_message = compressor.compress(x[None], compressor.init(Layout((0, size))))[0].decoded[0]
    torch_message = agreement.sparse_ternary(torch.from_numpy(x), p).numpy()
    assert np.count_nonzero(torch_message) == max(1, int(np.ceil(p * size)))
    np.testing.assert_allclose(torch_message, fedsim_message, rtol=1e-12, atol=0)


def test_bad_options_are_one_line(capsys):
    with pytest.raises(SystemExit) as stopped:
        agreement.main(["--rounds", "0"])
    assert stopped.value.code == 2 and "--rounds and --torch-seeds must be >= 1" in capsys.readouterr().err


@pytest.mark.parametrize("fedsim_accuracy, status", [(0.76, 0), (0.80, 1)])
def test_the_results_go_to_the_user_cache_and_a_gap_past_3_points_fails(monkeypatch, tmp_path, torch, capsys,
                                                                       fedsim_accuracy, status):
    """Without --out, the JSON goes to the user cache (never into the checkout); a gap beyond the tolerance is
    exit status 1 (both runs replaced by their accuracies: 0.76 or 0.80 against torch's 0.75)."""
    monkeypatch.setenv("FEDSIM_CACHE", str(tmp_path))
    monkeypatch.setattr("fedsim.data.load.load_dataset", lambda *args: SimpleNamespace(y_train=None))
    monkeypatch.setattr("fedsim.data.partition.split_indices", lambda *args, **kwargs: [])
    monkeypatch.setattr(agreement, "fedsim_accuracy", lambda rounds: {"test_accuracy": fedsim_accuracy, "seconds": 1})
    monkeypatch.setattr(agreement, "torch_accuracy", lambda *args: {"test_accuracy": 0.75, "seconds": 1})
    assert agreement.main(["--rounds", "1", "--torch-seeds", "1"]) == status
    written = json.loads((tmp_path / "benchmarks" / "agreement.json").read_text())
    assert written["within_tolerance"] == (status == 0)
    assert ("NOT within 3 points" in capsys.readouterr().out) == (status == 1)
