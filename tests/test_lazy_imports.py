"""The commands that compute nothing start without Numba, SciPy or matplotlib; the kernel modules that the
compressors name are imported at their first use."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
HEAVY = ("numba", "scipy", "matplotlib")


def run_python(code: str, *arguments: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
               FEDSIM_NO_REPO_DATA="1", MPLBACKEND="Agg")
    return subprocess.run([sys.executable, *arguments, "-c", code], env=env, capture_output=True, text=True,
                          timeout=120, cwd=REPO)


def loaded(code: str) -> str:
    """What ``code``, run in a new Python, printed after ``LOADED`` (it must end with exit status 0)."""
    finished = run_python(code)
    assert finished.returncode == 0, finished.stderr[-3000:]
    return finished.stdout.rsplit("LOADED", 1)[1]


def loaded_after(commands: list[list[str]]) -> list[str]:
    return eval(loaded(f"import sys, fedsim.cli\n"
                       f"for argv in {commands!r}:\n"
                       f"    assert fedsim.cli.main(argv) == 0, argv\n"
                       f"print('LOADED', sorted({{m.split('.')[0] for m in sys.modules}} & set({HEAVY!r})))\n"))


@pytest.mark.parametrize("commands", [
    [["show-config", "--preset", "stc-mnist"]],
    [["show-config", "--preset", "laq-mnist"], ["show-config", "--preset", "synthetic"]],
    [["show-config", "--set", "federated.method=qsgd_up"], ["show-config", "--set", "lazy.method=laq",
                                                              "--set", "family='lazy'"]],
    [["presets"]],
])
def test_commands_that_compute_nothing_load_no_heavy_library(commands):
    assert loaded_after(commands) == []


def test_help_imports_no_heavy_library():
    finished = run_python("import sys, fedsim.cli\ntry:\n    fedsim.cli.main(['--help'])\nexcept SystemExit:\n"
                          "    pass\nimport fedsim.cli\nfedsim.cli.build_parser()\n", "-X", "importtime")
    assert finished.returncode == 0, finished.stderr[-3000:]
    imported = {line.split("|")[-1].strip().split(".")[0] for line in finished.stderr.splitlines()
                if line.startswith("import time:")}
    assert "fedsim" in imported and not imported & set(HEAVY)


def test_a_run_still_loads_what_it_needs(tmp_path):
    """The deferred kernel modules and SciPy do load when a run uses them (a lazy run's step sizes)."""
    argv = ["run", "--preset", "laq-synthetic", "--set", "lazy.iterations=2", "--out", str(tmp_path / "r"), "--quiet"]
    code = ("import sys, fedsim.cli\n"
            f"assert fedsim.cli.main({argv!r}) == 0\n"
            "import fedsim.kernels, fedsim.kernels.laq\n"
            "print('LOADED', 'numba' in sys.modules, 'scipy' in sys.modules, "
            "fedsim.kernels.laq is sys.modules['fedsim.kernels.laq'])\n")
    assert loaded(code).split() == ["True", "True", "True"]


def test_deferred_kernel_modules_behave_like_the_modules():
    code = ("import sys\n"
            "from fedsim.kernels import sparsify\n"
            "assert 'numba' not in sys.modules\n"
            "import numpy as np\n"
            "x = np.array([1.5, -2.0, 0.0], np.float32)\n"
            "print(sparsify.all_finite(x))\n"                  # first use: the module is imported
            "import fedsim.kernels\n"
            "real = sys.modules['fedsim.kernels.sparsify']\n"
            "assert fedsim.kernels.sparsify is real and sparsify.all_finite is real.all_finite\n"
            "from fedsim.kernels import sparsify as again\n"
            "assert again is real\n"
            "sparsify.EXTRA = 3\n"                              # an assignment lands on the module
            "assert real.EXTRA == 3\n"
            "del sparsify.EXTRA\n"
            "assert not hasattr(real, 'EXTRA')\n"
            "print('LOADED', sparsify.__name__, 'numba' in sys.modules)\n")
    assert loaded(code).split() == ["fedsim.kernels.sparsify", "True"]


def test_the_laq_bit_range_is_the_kernels():
    from fedsim import kernels
    from fedsim.kernels import laq
    assert (laq.MIN_BITS, laq.MAX_BITS) == (kernels.LAQ_MIN_BITS, kernels.LAQ_MAX_BITS) == (1, 16)
    with pytest.raises(AttributeError, match="no attribute 'nonexistent'"):
        kernels.nonexistent
