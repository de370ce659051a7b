"""Run the benchmark suites; print the targets; write the results outside the source tree.

Usage::

    python -m benchmarks.run --quick            # a few minutes: fewer sizes and repeats
    python -m benchmarks.run --full             # everything in the issue's grid
    python -m benchmarks.run --full --threads 2 --only kernels rounds
    python -m benchmarks.run --full --threads 1 2 --only kernels rounds   # and their thread scaling
    python -m benchmarks.run --full --write-readme   # the maintainers' run: tables into the tracked files

Every suite runs in a fresh process whose BLAS, OpenMP, torch and Numba thread counts are all set to
``--threads`` (default 1) before any of them loads. Results go to ``--out`` (default: the user cache,
``$FEDSIM_CACHE/benchmarks/<mode>`` or ``~/.cache/fedsim/benchmarks/<mode>``) as one JSON file per suite,
each with the machine, library versions, date and thread settings, and ``tables.md`` beside them (the
tables of benchmarks/README.md). Only ``--write-readme`` touches tracked files (a full run of every suite:
it is refused otherwise): it writes the JSON into ``benchmarks/results/`` and regenerates the README's
generated block. A suite that fails (for
instance because two implementations disagree) makes the command exit with status 1 and writes no tables.

Several thread counts (``--threads 1 2``): every suite runs at the first count as above (``<suite>.json``);
the suites of :data:`SCALING_SUITES` also run once more at each further count N, each count in its own
fresh process, into ``<suite>.threads-N.json``, and the tables gain a thread-scaling section. Running a
suite removes its results at other counts from earlier runs in ``--out``, so the scaling section never
compares results of different versions.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

from benchmarks import common, report

SUITES = ("kernels", "rounds", "local_epoch", "storage", "scale", "compile", "products", "sweep")
# The suites that run at every count of ``--threads`` (the others run at the first count only).
SCALING_SUITES = ("kernels", "rounds")
RESULTS = Path(__file__).resolve().parent / "results"
README = Path(__file__).resolve().parent / "README.md"


def default_data_dir() -> Path | None:
    """``shared/data`` next to the checkout, if present (fedsim's own search path is used otherwise)."""
    candidate = common.REPO.parent / "shared" / "data"
    return candidate if candidate.is_dir() else None


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    modes = parser.add_mutually_exclusive_group()
    modes.add_argument("--quick", dest="mode", action="store_const", const="quick", help="a few minutes (default)")
    modes.add_argument("--full", dest="mode", action="store_const", const="full", help="the whole grid")
    modes.add_argument("--smoke", dest="mode", action="store_const", const="smoke",
                       help="tiny sizes, seconds: checks that everything runs and validates")
    parser.set_defaults(mode="quick")
    parser.add_argument("--threads", type=int, nargs="+", default=[1], metavar="N",
                        help="threads for BLAS, torch and Numba alike (default 1); several counts (e.g. 1 2) "
                             f"run {' and '.join(SCALING_SUITES)} at each of them, the other suites at the "
                             "first, and add a thread-scaling table")
    parser.add_argument("--only", nargs="+", choices=SUITES, default=list(SUITES))
    parser.add_argument("--out", type=Path, default=None,
                        help="results folder (default: the user cache's benchmarks/<mode>; with "
                             "--write-readme in full mode: benchmarks/results)")
    parser.add_argument("--write-readme", action="store_true",
                        help="regenerate the generated block of --readme (a tracked file) from these results "
                             "(only with --full and every suite)")
    parser.add_argument("--readme", type=Path, default=README, help="README whose tables --write-readme regenerates")
    parser.add_argument("--data-dir", type=Path, default=None,
                        help="folder with the Fashion-MNIST files (default: ../shared/data if present, "
                             "else fedsim's search path; random data of the same shapes if none)")
    args = parser.parse_args(argv)
    from fedsim.constraints import Integer
    for threads in args.threads:
        common.check_option(parser, "--threads", Integer(low=1), threads)
    if len(set(args.threads)) != len(args.threads):
        parser.error(f"argument --threads: counts repeated: {' '.join(map(str, args.threads))}")
    common.check_data_dir(parser, args.data_dir)
    if args.write_readme and (args.mode != "full" or set(args.only) != set(SUITES)):
        parser.error("argument --write-readme: it replaces every table of the README, so it needs --full and "
                     "every suite (no --only)")
    return args


def result_name(suite: str, threads: int | None = None) -> str:
    """The results file stem (and key of the results dict) of a suite: ``kernels`` at the first thread
    count, ``kernels.threads-2`` at a further count."""
    return suite if threads is None else f"{suite}.threads-{threads}"


def load_results(out: Path) -> dict:
    """Every suite's results in ``out``: ``{suite: payload}`` first (in :data:`SUITES` order), then
    ``{"<suite>.threads-N": payload}`` for the scaling suites' results at further counts (N ascending)."""
    results = {suite: json.loads((out / f"{suite}.json").read_text()) for suite in SUITES
               if (out / f"{suite}.json").exists()}
    for suite in SCALING_SUITES:
        pattern = re.compile(rf"{suite}\.threads-([0-9]+)\.json")
        counts = sorted(int(match.group(1)) for match in map(pattern.fullmatch, os.listdir(out)) if match)
        for threads in counts:
            name = result_name(suite, threads)
            results[name] = json.loads((out / f"{name}.json").read_text())
    return results


def run_suite(suite: str, mode: str, threads: int, out: Path, data_dir: Path | None,
              name: str | None = None) -> bool:
    """Run one suite in a fresh process into ``out/<name>.json`` (default name: the suite's); True if it
    succeeded."""
    environment = common.thread_environment(threads)
    environment["PYTHONPATH"] = os.pathsep.join(filter(None, [str(common.REPO), environment.get("PYTHONPATH")]))
    command = [sys.executable, "-m", f"benchmarks.{suite}", "--mode", mode, "--threads", str(threads),
               "--json", str(out / f"{name or suite}.json")]
    if data_dir is not None:
        command += ["--data-dir", str(data_dir)]
    common.log(f"== {suite} ({mode}, {threads} thread{'s' if threads > 1 else ''})")
    started = time.perf_counter()
    finished = subprocess.run(command, cwd=common.REPO, env=environment)
    load = " ".join(f"{value:.2f}" for value in os.getloadavg()) if hasattr(os, "getloadavg") else "n/a"
    common.log(f"== {suite}: {'ok' if finished.returncode == 0 else 'FAILED'} in "
               f"{time.perf_counter() - started:.0f} s (load average now {load})")
    return finished.returncode == 0


def run_counts(suite: str, args, out: Path, data_dir: Path | None) -> bool:
    """Run one suite at the first thread count, and a scaling suite also at the further counts (after
    removing its results at other counts left by earlier runs); True if every run succeeded."""
    first, *further = args.threads
    if suite in SCALING_SUITES:
        for stale in out.glob(f"{suite}.threads-*.json"):
            stale.unlink()
    else:
        further = []
    succeeded = run_suite(suite, args.mode, first, out, data_dir)
    for threads in further:
        succeeded = run_suite(suite, args.mode, threads, out, data_dir, result_name(suite, threads)) and succeeded
    return succeeded


def default_out(mode: str, write_readme: bool) -> Path:
    """Where results go unless --out says: the tracked benchmarks/results only for a full --write-readme
    run; otherwise the user cache (never a file of the source tree)."""
    if write_readme and mode == "full":
        return RESULTS
    from fedsim.data.search import cache_dir
    return cache_dir() / "benchmarks" / mode


def main(argv=None) -> int:
    args = parse_args(argv)
    out = args.out or default_out(args.mode, args.write_readme)
    out.mkdir(parents=True, exist_ok=True)
    data_dir = args.data_dir or default_data_dir()
    failed = [suite for suite in args.only if not run_counts(suite, args, out, data_dir)]
    if failed:
        common.log(f"failed suites: {', '.join(failed)}; README not updated")
        return 1
    results = load_results(out)
    for row in report.targets(results):
        common.log(f"target: {row['target']}: {row['measured']} ({row['bound']}): "
                   f"{row.get('status', 'met')}")
    (out / "tables.md").write_text(report.render(results) + "\n")
    common.log(f"results and tables.md in {out}")
    if args.write_readme:
        report.update_readme(args.readme, results)
        common.log(f"tables written to {args.readme}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
