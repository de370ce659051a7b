"""benchmarks/agreement.py: the independent torch implementation's STC is the paper's operator (fedsim's
compressor gives the same message on vectors without ties at the threshold), and its command line refuses
what it cannot run. The 100-round comparison itself is the benchmark's run (benchmarks/results/agreement.json)."""

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
