"""Record the runs behind README.md's LAQ tables and the LAQ bits sweep's sentence, into this folder.

    python examples/results/record.py                      # all three recordings (~25 CPU-minutes)
    python examples/results/record.py laq-mnist laq-bits   # some of laq-mnist, laq-fashion-mnist, laq-bits

Each recording is a folder of finished run folders: ``laq-mnist`` and ``laq-fashion-mnist`` hold the runs of
the README's ``examples/laq_mnist.py`` command before each table (the arguments below; the test checks that
they are the README's), ``laq-bits`` the LAQ runs of ``examples/sweeps/laq_bits.toml`` that the LAQ MNIST
table does not already hold (b = 2 and b = 8; its b = 4 run is the table's LAQ run, same config). Each run
folder keeps what the tables and the sentence are computed from: config.toml, meta.json (its command made
the one below), summary.json, and history.jsonl gzipped (history.jsonl.gz, every record as written).
tests/examples/test_readme_tables.py checks the README against these runs, and these runs against what
today's code computes (their first iterations always, in full with ``-m reproduce``).
"""

from __future__ import annotations

import gzip
import importlib.util
import json
import shutil
import sys
from pathlib import Path

RESULTS = Path(__file__).resolve().parent
EXAMPLES = RESULTS.parent
#: The README's laq_mnist.py arguments of each table's recording.
TABLES = {
    "laq-mnist": ["--dataset", "mnist", "--train-split", "test"],
    "laq-fashion-mnist": ["--dataset", "fashion-mnist", "--train-split", "test", "--alpha", "0.01",
                          "--iterations", "7000", "--methods", "gd", "lag-wk", "laq", "--f-star-from", "lbfgs"],
}
SWEEP = "laq-bits"
KEPT = ("config.toml", "meta.json", "summary.json")     # with history.jsonl, gzipped


def laq_example():
    """examples/laq_mnist.py as a module."""
    spec = importlib.util.spec_from_file_location("laq_mnist_example", EXAMPLES / "laq_mnist.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def record_table(name: str, folder: Path) -> None:
    """The table's command into ``folder`` (its runs, then its table printed)."""
    result = laq_example().main(TABLES[name] + ["--out", str(folder), "--quiet"])
    if isinstance(result, int):
        raise SystemExit(result)


def record_sweep(folder: Path) -> None:
    """The bits sweep's LAQ runs whose config none of the LAQ MNIST table's runs has, as ``fedsim run``, into
    ``folder``."""
    from fedsim.config import config_fingerprint
    from fedsim.runs import start_run
    from fedsim.sweeps import load_sweep

    example = laq_example()
    options = example.parse_args(TABLES["laq-mnist"])
    in_table = {config_fingerprint(example.config_of(options, method)) for method in options.methods}
    for planned in load_sweep(EXAMPLES / "sweeps" / "laq_bits.toml").runs:
        config = planned.config
        if config.lazy.method == "laq" and config_fingerprint(config) not in in_table:
            name = f"laq-b{config.lazy.bits}"
            outcome = start_run(config, folder / name, name=name, quiet=True)
            if outcome.status != "completed":
                raise SystemExit(f"record.py: {outcome.folder.path}: {outcome.status}")


def trim(name: str, folder: Path) -> None:
    """Keep, of each run folder of the recording ``name`` in ``folder``, the files of :data:`KEPT` and the
    history gzipped; the command in meta.json becomes this script's (no machine paths)."""
    for path in sorted(folder.iterdir()):
        if not path.is_dir():
            path.unlink()                       # the example's table and figures: recomputed by the test
            continue
        history = (path / "history.jsonl").read_bytes()
        with gzip.GzipFile(path / "history.jsonl.gz", "wb", mtime=0) as packed:    # the same bytes every time
            packed.write(history)
        meta = json.loads((path / "meta.json").read_text())
        meta["command"] = ["python", "examples/results/record.py", name]
        (path / "meta.json").write_text(json.dumps(meta, indent=1) + "\n")
        for file in path.iterdir():
            if file.name not in KEPT + ("history.jsonl.gz",):
                file.unlink()


def main(argv=None) -> int:
    from fedsim.errors import UsageError
    from fedsim.programs import one_line_errors

    def record() -> int:
        names = (sys.argv[1:] if argv is None else argv) or [*TABLES, SWEEP]
        unknown = sorted(set(names) - {*TABLES, SWEEP})
        if unknown:
            raise UsageError(f"unknown recording {unknown[0]!r}; choose from {', '.join([*TABLES, SWEEP])}")
        for name in names:
            # made from scratch beside the recording, which it replaces only once complete (a failure keeps it)
            staging = RESULTS / f".{name}.recording"
            shutil.rmtree(staging, ignore_errors=True)
            try:
                record_sweep(staging) if name == SWEEP else record_table(name, staging)
                trim(name, staging)
                shutil.rmtree(RESULTS / name, ignore_errors=True)
                staging.rename(RESULTS / name)
            finally:
                shutil.rmtree(staging, ignore_errors=True)
        return 0

    return one_line_errors("record.py", record)


if __name__ == "__main__":
    sys.exit(main())
