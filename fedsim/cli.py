"""The ``fedsim`` command (also ``python -m fedsim``): :func:`build_parser` declares its commands and options
(``fedsim --help``), a ``command_*`` function carries out each. Exit statuses and one-line errors:
:mod:`fedsim.programs` (shared with the example scripts).
"""

from __future__ import annotations

import argparse
import contextlib
import math
import shlex
import sys
from collections import Counter
from functools import partial
from pathlib import Path

from fedsim import __version__, report_card
from fedsim.programs import (EXIT_FAILED, EXIT_OK, EXIT_USAGE, NO_SPACE, OneLineParser, UsageError, no_space,
                             one_line_errors, report_outcome, stopped_at_once)


# ---------------------------------------------------------------------------------------------------------
# argument parsing


def _add_config_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", nargs="?", metavar="CONFIG.toml", help="experiment config file (TOML)")
    parser.add_argument("--preset", metavar="NAME", help="a built-in config (see `fedsim presets`)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a setting, e.g. --set federated.lr=0.1 --set "
                             "data.dataset=fashion-mnist (values are TOML values; repeatable)")
    parser.add_argument("--seed", type=int, metavar="N", help="the run's seed (same as --set seed=N)")
    parser.add_argument("--dataset", metavar="NAME", help="mnist | fashion-mnist | synthetic | npz:PATH "
                                                          "(same as --set data.dataset=NAME)")
    parser.add_argument("--data-dir", metavar="DIR", help="a folder searched first for dataset files")


def _positive_seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"must be a number of seconds > 0, got {text!r}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(
        prog="fedsim", description="Simulate communication-efficient federated learning (STC, FedAvg, "
                                   "signSGD, top-k) and lazy aggregation (GD, QGD, LAG, LAQ, SLAQ).")
    parser.add_argument("--version", action="version", version=f"fedsim {__version__}")
    parser.add_argument("--debug", action="store_true",
                        help="on an error, show the Python traceback instead of the one-line message")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    run = commands.add_parser("run", help="run an experiment into a run folder",
                              description="Run an experiment from a config file or a preset; or continue "
                                          "an interrupted run with --resume.")
    _add_config_options(run)
    run.add_argument("--extend-to", type=int, metavar="N",
                     help="with --resume: continue to N rounds / iterations in all (also a finished run)")
    run.add_argument("--resume", metavar="RUN_DIR", help="continue the interrupted run in RUN_DIR from its "
                                                         "last checkpoint")
    run.add_argument("--out", metavar="DIR", help="the run folder (default: runs/<name>-<timestamp>)")
    run.add_argument("--quiet", action="store_true", help="no progress bar; print only the run folder")

    commands.add_parser("presets", help="list the built-in configs")

    show = commands.add_parser("show-config",
                               help="print the effective config as TOML, every setting filled in")
    _add_config_options(show)

    data = commands.add_parser("data", help="fetch datasets, or show what is on disk")
    data_commands = data.add_subparsers(dest="data_command", metavar="ACTION", required=True)
    fetch = data_commands.add_parser("fetch", help="find or download (and verify) a dataset's four files",
                                     description="Find a dataset's four files (verified), else download them from "
                                                 "the registry's mirrors, or from FEDSIM_MIRRORS: base URLs "
                                                 "(http, https, file), a file at <base>/<dataset>/<file>.")
    fetch.add_argument("name", metavar="NAME", help="mnist | fashion-mnist")
    fetch.add_argument("--data-dir", metavar="DIR", help="a folder searched first")
    fetch.add_argument("--timeout", type=_positive_seconds, default=30.0,
                       help="seconds to wait for a server to answer, in (0, 3600] (default 30)")
    info = data_commands.add_parser("info", help="for each dataset file: where it was found, whether and how "
                                                 "its checksum verified")
    info.add_argument("--data-dir", metavar="DIR", help="a folder searched first")

    plot = commands.add_parser("plot", help="overlay runs in figures (PNG and SVG)")
    plot.add_argument("runs", nargs="+", metavar="RUN_DIR",
                      help="run folders (of `fedsim run`; finished or not); runs of one family are overlaid")
    plot.add_argument("--out", metavar="DIR", help="where the figures go (default: RUN_DIR/plots for one "
                                                   "run, ./plots for several)")
    plot.add_argument("--x", choices=("rounds", "iterations", "bits", "time", "simulated"),
                      help="the x axis: the steps (default), bits up + down, wall time (the records' 'time') or "
                           "simulated time ([system]), cumulative")

    sweep = commands.add_parser(
        "sweep", help="run a grid of runs (local cores or Dask), or report / plot a sweep folder",
        description="fedsim sweep SWEEP.toml [options]: run every run of the sweep, each into its own run folder "
                    "(again: finished runs are skipped, interrupted ones resumed). fedsim sweep report DIR: the tidy "
                    "table (report.csv) and a summary over seeds. fedsim sweep plot DIR: curves with a band over "
                    "seeds and the final metric against an axis.")
    sweep.add_argument("target", metavar="SWEEP.toml | report | plot", help="a sweep file, or report / plot")
    sweep.add_argument("folder", nargs="?", metavar="DIR", help="with report / plot: the sweep folder")
    sweep.add_argument("--workers", type=int, default=None, help="processes running runs (default and cap: the "
                                                                 "cores, the memory for one run each, the runs; "
                                                                 "not with --scheduler)")
    sweep.add_argument("--threads", type=int, default=None, help="BLAS / OpenMP / Numba threads per worker fedsim "
                                                                 "starts (default 1; not with --scheduler)")
    sweep.add_argument("--backend", help="local (a process pool, default) | dask")
    sweep.add_argument("--scheduler", metavar="ADDRESS", help="with --backend dask: tcp://host:port of a running "
                                                              "scheduler (default: a LocalCluster)")
    sweep.add_argument("--out", metavar="DIR", help="the sweep folder (default runs/<sweep name>); plot: where the "
                                                    "figures go (default DIR/plots)")
    sweep.add_argument("--dry-run", action="store_true", help="list the runs and their folders; run nothing")
    sweep.add_argument("--quiet", action="store_true", help="no progress")

    compare = commands.add_parser("compare",
                                  help="a table of final and best accuracy, cost to a target, time")
    compare.add_argument("runs", nargs="+", metavar="RUN_DIR", help="run folders (of `fedsim run`; finished or not)")
    compare.add_argument("--target-accuracy", type=float, default=0.8, metavar="A",
                         help="federated runs: bits and rounds to the first test accuracy >= A (default 0.8)")
    compare.add_argument("--target-residual", type=float, default=1e-6, metavar="R",
                         help="lazy runs: iterations, communications and bits to f - f* <= R (default 1e-6)")

    export = commands.add_parser("export", help="write runs for another tool: TensorBoard event files")
    export.add_argument("runs", nargs="+", metavar="RUN_DIR", help="run folders (of `fedsim run`; finished or not)")
    export.add_argument("--to", nargs=2, required=True, metavar=("FORMAT", "DIR"),
                        help="tensorboard DIR: one TensorBoard run per run folder under DIR (then: tensorboard "
                             "--logdir DIR)")
    report_card.add_report_parser(commands)       # fedsim compressors report: its options beside its logic
    return parser


# ---------------------------------------------------------------------------------------------------------
# configs


def resolve_config(args):
    """(ExperimentConfig, name) from CONFIG or --preset, --set and the shortcut options."""
    from fedsim.config import load_config_file, load_preset
    if args.config and args.preset:
        raise UsageError("give either a CONFIG file or --preset NAME, not both")
    overrides = list(args.overrides)
    keys = {text.partition("=")[0].strip() for text in overrides}
    for option, key, value in (("--seed", "seed", args.seed), ("--dataset", "data.dataset", args.dataset),
                               ("--data-dir", "data.data_dir", args.data_dir)):
        if value is not None and key in keys:
            raise UsageError(f"{option} and --set {key}=... give {key} two values; give one of them")
    if args.seed is not None:
        overrides.append(("seed", args.seed))
    if args.dataset is not None:
        overrides.append(("data.dataset", args.dataset))
    if args.data_dir is not None:   # absolute, so that the saved config works from any folder
        from fedsim.data.search import data_dir_path
        overrides.append(("data.data_dir", str(data_dir_path(args.data_dir).resolve())))
    notes: list[str] = []
    if args.preset:
        config, name = load_preset(args.preset, overrides, notes=notes), args.preset
    elif args.config:
        config, name = load_config_file(args.config, overrides, notes=notes), Path(args.config).stem
    elif args.command == "show-config":
        from fedsim.config import apply_overrides, config_from_dict, unused_tables
        raw = apply_overrides({}, overrides)
        config, name = config_from_dict(raw, "defaults"), "defaults"
        notes.extend(unused_tables(raw, config))
    else:
        raise UsageError("give a CONFIG file or --preset NAME (see `fedsim presets`), or --resume RUN_DIR")
    config = _as_entered(config)
    for note in notes:
        print(f"fedsim: warning: settings not used by this run: {note}", file=sys.stderr)
    return config, name


def _as_entered(config):
    """``config`` as a new run takes it from the user: -0.0 as 0.0 (one value, one fingerprint), a relative (or ~)
    data.data_dir made absolute as --data-dir makes it (the saved config works from any folder), a blank one
    refused. Here only: a run folder's config.toml and a sweep's or an example's runs are read as written, so
    that the fingerprints of folders made before stay as they were."""
    from fedsim.config import ConfigError, config_from_dict, config_to_dict
    from fedsim.data.search import expand_home
    document = config_to_dict(config)
    for values in document.values():
        if isinstance(values, dict):
            values.update({name: 0.0 for name, value in values.items() if type(value) is float and value == 0})
    data_dir = document["data"].get("data_dir")
    if data_dir is not None and (not data_dir.strip() or "\0" in data_dir):
        raise ConfigError(f"data.data_dir must be the path of a folder, or unset (only the standard search path), "
                          f"got {data_dir!r}")
    if data_dir is not None and not Path(data_dir).is_absolute():
        document["data"]["data_dir"] = str(expand_home(data_dir, "data.data_dir").resolve())
    return config_from_dict(document)


def command_presets(args) -> int:
    from fedsim.config import list_presets
    presets = list_presets()
    width = max(map(len, presets), default=0)
    for name, description in presets.items():
        print(f"{name:<{width}}  {description}")
    return EXIT_OK


def command_show_config(args) -> int:
    from fedsim.config_toml import config_to_toml
    config, name = resolve_config(args)
    print(config_to_toml(config, header=f"fedsim {__version__} effective config ({name})"), end="")
    return EXIT_OK


# ---------------------------------------------------------------------------------------------------------
# run


def _print_results(outcome, quiet: bool) -> None:
    """What a run that completed now reached (the run folder alone when ``quiet``)."""
    folder, summary = outcome.folder.path, outcome.summary or {}
    if quiet:
        print(folder)
        return
    parts = [f"{outcome.completed} {outcome.unit}"]
    if "final_test_accuracy" in summary:
        best = summary.get("best_test_accuracy")
        parts.append(f"final test accuracy {summary['final_test_accuracy']:.4f}"
                     + (f" (best {best:.4f})" if best is not None else ""))
    from fedsim.algorithms.family import family
    parts += family(outcome.family).report.achieved(summary)
    parts.append(f"{summary.get('seconds', 0.0):.1f} s")
    print(f"run completed: {'; '.join(parts)}")
    print(f"results: {folder}")


def command_run(args) -> int:
    from fedsim.runs import default_run_dir, resume_run, start_run
    made: list[Path] = []       # folders made for a run without --out: removed again if it did not start in them
    if args.resume:
        given = [flag for flag, value in (("CONFIG", args.config), ("--preset", args.preset),
                                          ("--set", args.overrides), ("--seed", args.seed),
                                          ("--dataset", args.dataset), ("--data-dir", args.data_dir),
                                          ("--out", args.out)) if value not in (None, [])]
        if given:
            raise UsageError(f"--resume continues a run with the config saved in its folder; it does not "
                             f"take {', '.join(given)} (to run more steps: --extend-to N)")
        out = Path(args.resume)
        run = partial(resume_run, out, quiet=args.quiet, extend_to=args.extend_to)
    else:
        if args.extend_to is not None:
            raise UsageError("--extend-to goes with --resume RUN_DIR")
        if args.out is not None and not args.out.strip():
            raise UsageError("--out must name the run folder; got an empty path")
        config, name = resolve_config(args)
        # a folder of fedsim's naming is made now: a run started meanwhile without --out takes the next name
        fresh = [] if args.out is not None or Path("runs").exists() else [Path("runs")]
        out = Path(args.out) if args.out is not None else default_run_dir(name, create=True)
        made = [] if args.out is not None else [out, *fresh]
        if not args.quiet:
            family = config.algorithm_family
            print(f"fedsim: {name}: {config.method} on {config.data.dataset}, {config.n_clients} "
                  f"{family.report.clients_word}, {config.steps} {family.units} -> {out}", flush=True)
        run = partial(start_run, config, out, name=name, quiet=args.quiet)
    again = shlex.join(["fedsim", "run", "--resume", str(out)]
                       + (["--extend-to", str(args.extend_to)] if args.extend_to is not None else []))
    try:
        outcome = run()
    except KeyboardInterrupt:       # a Ctrl-C before the steps (the data loading), or a second one: stopped mid-step
        if not (out / "config.toml").is_file():
            raise KeyboardInterrupt("stopped before the run started: nothing is saved; run the same command "
                                    "again") from None
        raise KeyboardInterrupt(stopped_at_once(again)) from None
    except OSError as error:
        if error.errno not in NO_SPACE:
            raise
        raise no_space(error, out, again if (out / "config.toml").is_file() else None) from None
    finally:
        with contextlib.suppress(OSError):
            for folder in made:
                folder.rmdir()          # only if empty
    if outcome.status == "completed":
        _print_results(outcome, args.quiet)
    return report_outcome(outcome)


# ---------------------------------------------------------------------------------------------------------
# data


def command_data_fetch(args) -> int:
    from fedsim.data.fetch import fetch
    from fedsim.data.search import DatasetNotFoundError, dataset_status
    from fedsim.data.registry import DATASETS, FILE_KEYS
    if args.name not in DATASETS:
        hint = " (synthetic data is generated, it needs no files)" if args.name == "synthetic" else ""
        raise UsageError(f"dataset NAME must be one of {', '.join(DATASETS)}, got {args.name!r}{hint}")
    failures = []
    for key in FILE_KEYS:       # fetch checks the settings (timeout, FEDSIM_MIRRORS), then takes a copy on disk
        try:
            fetch(args.name, key, data_dir=args.data_dir, progress=None, timeout=args.timeout)
        except DatasetNotFoundError as error:
            failures.append(error)
    _print_status(args.name, dataset_status(args.name, args.data_dir))
    for error in failures:
        print(error, file=sys.stderr)
    if failures:
        print(f"fedsim: {len(failures)} of {len(FILE_KEYS)} files of {args.name} could not be had",
              file=sys.stderr)
        return EXIT_FAILED
    return EXIT_OK


def _print_status(name: str, rows: list[dict]) -> None:
    print(f"{name}:")
    width = max(len(row["key"]) for row in rows)
    for row in rows:
        if row["verified"]:
            state = f"verified by {row['method']} ({row['reason']})"
        elif row["path"] is not None:
            state = f"FAILED verification: {row['reason']}"
        else:
            state = "not found"
        where = f"\n    {row['path']}" if row["path"] is not None else ""
        print(f"  {row['key']:<{width}}  {state}{where}")


def command_data_info(args) -> int:
    from fedsim.data.cache import array_cache_dir, cache_enabled, cache_entries, stored_bytes
    from fedsim.data.search import cache_dir, dataset_status, folder_problem, search_path
    from fedsim.data.registry import DATASETS
    print(f"download cache: {cache_dir()}")
    entries = cache_entries()
    stored = stored_bytes(entries)
    state = "" if cache_enabled() else "; off (FEDSIM_ARRAY_CACHE=0)"
    print(f"preprocessed arrays: {array_cache_dir()} ({len(entries)} entries, {stored / 1e6:.0f} MB{state}; "
          f"delete the folder to clear it)")
    print("search path, in order:")
    for folder, source in search_path(args.data_dir):
        problem = folder_problem(folder)        # as the error that lists the folders searched says it
        print(f"  {folder}  [{source}]{f'  ({problem})' if problem else ''}")
    for name in DATASETS:
        _print_status(name, dataset_status(name, args.data_dir))
    print("synthetic:\n  generated from the seed (FedProx's Synthetic(alpha, beta)); no files")
    return EXIT_OK


# ---------------------------------------------------------------------------------------------------------
# results


def _read_runs(paths):
    from fedsim.runs import read_run
    return [read_run(path) for path in paths]


def _with_records(runs) -> list:
    """The runs that have records; each of the others is left out with a warning line."""
    for run in runs:
        if not run.history:
            print(f"fedsim: warning: {run.path} has no records yet; left out", file=sys.stderr)
    return [run for run in runs if run.history]


def plot_folder(runs, out=None) -> Path:
    """Where ``fedsim plot`` writes: ``out`` if given, else RUN_DIR/plots for one run, else ./plots."""
    if out:
        return Path(out)
    return runs[0].path / "plots" if len(runs) == 1 else Path("plots")


def command_plot(args) -> int:
    from fedsim.plot import plot_runs
    runs = _read_runs(args.runs)
    out = plot_folder(runs, args.out)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise OSError(error.errno, f"cannot write the figures into {out} ({error.strerror}); choose another "
                                   f"folder with --out") from None
    notes: list[str] = []
    return _print_figures(plot_runs(_with_records(runs), out, notes=notes, x=args.x), notes, "the runs")


def _print_figures(paths: list[Path], notes: list[str], runs: str) -> int:
    """Each of ``notes`` as a warning line, then the figures' paths; a UsageError if there is no figure of
    ``runs`` (``"the runs"``)."""
    if not paths:
        raise UsageError(f"none of {runs} has any records to plot (with values a figure can show)")
    for note in notes:
        print(f"fedsim: warning: {note}", file=sys.stderr)
    for path in paths:
        print(path)
    return EXIT_OK


def command_compare(args) -> int:
    if not 0 <= args.target_accuracy <= 1:
        raise UsageError(f"--target-accuracy must be in [0, 1], got {args.target_accuracy}")
    if not (math.isfinite(args.target_residual) and args.target_residual >= 0):
        raise UsageError(f"--target-residual must be a finite number >= 0, got {args.target_residual}")
    from fedsim.runs.compare import compare_tables
    print(compare_tables(_read_runs(_run_folders_among(args.runs)), args.target_accuracy, args.target_residual))
    return EXIT_OK


def _run_folders_among(paths: list[str]) -> list[str]:
    """``paths`` without the folders that are not run folders, each left out with a line (``fedsim compare
    runs/*`` meets the examples' folders of run folders); all of ``paths`` when none is a run folder (the
    error then names them). A path that does not exist stays: a typo is an error."""
    from fedsim.runs.folder import CONFIG_FILE
    kept = [path for path in paths if not Path(path).is_dir() or (Path(path) / CONFIG_FILE).is_file()]
    for path in paths if kept else []:
        if path not in kept:
            inner = sorted(found.parent.name for found in Path(path).glob(f"*/{CONFIG_FILE}"))
            holds = f" (it holds the run folders {', '.join(inner[:3])}{' ...' if len(inner) > 3 else ''}: " \
                    f"fedsim compare {Path(path) / '*'})" if inner else ""
            print(f"fedsim: {path} is not a run folder; left out{holds}", file=sys.stderr)
    return kept or paths


def command_export(args) -> int:
    from fedsim import export
    kind, out = args.to
    if kind != "tensorboard":
        raise UsageError(f"--to FORMAT must be tensorboard, got {kind!r}")
    runs = _with_records(_read_runs(_run_folders_among(args.runs)))
    try:
        folders = export.to_tensorboard(runs, out)
    except ImportError as error:        # the extra is not installed
        raise UsageError(str(error)) from None
    for folder in folders:
        print(folder)
    return EXIT_OK


def command_sweep(args) -> int:
    from fedsim.sweeps import BACKENDS, all_finished, load_sweep, run_sweep
    from fedsim.sweeps.execute import SweepInterrupted
    from fedsim.sweeps.folder import resume_command, resume_hint, sweep_options
    from fedsim.sweeps.report import (collect, format_budget, format_summary, left_out, platforms_note, plot_sweep,
                                      summarize_over_seeds, tidy_rows, write_csv)
    if args.target in ("report", "plot"):
        if not args.folder:
            raise UsageError(f"fedsim sweep {args.target} needs the sweep folder DIR")
        if args.target == "report" and args.out is not None:
            raise UsageError(f"--out goes with sweep SWEEP.toml and sweep plot; sweep report writes report.csv "
                             f"into DIR ({args.folder})")
        ignored = [flag for flag, value in (("--workers", args.workers), ("--threads", args.threads),
                                            ("--backend", args.backend), ("--scheduler", args.scheduler),
                                            ("--dry-run", args.dry_run or None), ("--quiet", args.quiet or None))
                   if value is not None]
        if ignored:
            raise UsageError(f"{', '.join(ignored)} go{'es' if len(ignored) == 1 else ''} with sweep SWEEP.toml, "
                             f"which runs the runs; sweep {args.target} only reads DIR ({args.folder})")
        if args.target == "plot":
            notes: list[str] = []
            return _print_figures(plot_sweep(args.folder, args.out, notes=notes), notes, f"the runs of {args.folder}")
        manifest, entries = collect(args.folder)
        axes = list(manifest["axes"])
        rows = tidy_rows(args.folder, (manifest, entries))
        print(f"tidy table: {write_csv(args.folder, rows)} ({len(rows)} rows)")
        print(format_summary(summarize_over_seeds(rows, axes), axes))
        budget = format_budget(manifest, entries)
        if budget is not None:          # runs that solved a knob for federated.bits_per_round
            print(f"\n{budget}")
        platforms = platforms_note(entries)
        if platforms is not None:
            print(f"fedsim: sweep report: note: {platforms}", file=sys.stderr)
        # checked folders only (no number under the wrong settings), and every run not in the table said
        missing = left_out(entries, rows)
        for line in missing:
            print(f"fedsim: sweep report: {line}; left out of the report", file=sys.stderr)
        return EXIT_FAILED if missing else EXIT_OK
    if args.folder:
        raise UsageError(f"fedsim sweep SWEEP.toml takes no second argument (got {args.folder!r})")
    if args.backend is not None and args.backend not in BACKENDS:     # also before a --dry-run
        raise UsageError(f"--backend must be one of {', '.join(BACKENDS)}, got {args.backend!r}")
    if args.scheduler is not None and args.workers is not None:
        raise UsageError("--workers sets how many workers fedsim starts; --scheduler runs the sweep on the workers "
                         "its owner started (add some with `dask worker ADDRESS`)")
    notes: list[str] = []
    sweep = load_sweep(args.target, notes=notes)
    for note in notes:      # as fedsim run says them, once each
        print(f"fedsim: warning: settings not used by the sweep's runs: {note}", file=sys.stderr)
    out = Path(args.out) if args.out else Path("runs") / sweep.name
    if args.dry_run:
        print(f"sweep {sweep.name}: {len(sweep.runs)} runs of {sweep.base} into {out}")
        for planned in sweep.runs:
            print(f"  runs/{planned.folder_name}  {planned.label}")
        return EXIT_OK
    from fedsim.experiment_data import check_data
    from fedsim.sweeps.spec import run_settings
    # once, before any run starts: each run's data, and its partition of npz data
    check_data((f"{sweep.source.name}" + (f": the run with {run_settings(planned.values)}" if planned.values else ""),
                planned.config) for planned in sweep.runs)
    # the options that say where and how it runs, repeated in the command that continues it
    options = sweep_options(args.backend, args.scheduler, args.workers, args.threads)
    again = resume_command(args.target, out, options)
    try:
        statuses = run_sweep(sweep, out, backend="local" if args.backend is None else args.backend,
                             workers=args.workers, threads=args.threads, scheduler=args.scheduler, quiet=args.quiet)
    except SweepInterrupted as stopped:
        counts = Counter(entry.get("status") for entry in stopped.statuses.values())
        waiting = len(sweep.runs) - len(stopped.statuses)
        print(f"fedsim: sweep {sweep.name} {stopped}: {counts['interrupted']} runs interrupted (each resumes "
              f"from its checkpoint), {waiting} pending, {counts['completed']} completed; manifest: "
              f"{out / 'manifest.json'}; {resume_hint(args.target, out, options)}", file=sys.stderr)
        return stopped.exit_code
    except KeyboardInterrupt:       # a second Ctrl-C: stopped mid-step
        raise KeyboardInterrupt(stopped_at_once(again)) from None
    counts = Counter(entry.get("status", "failed") for entry in statuses.values())
    print(f"sweep {sweep.name}: " + ", ".join(f"{count} {status}" for status, count in sorted(counts.items()))
          + f"; manifest: {out / 'manifest.json'}")
    for name, entry in statuses.items():
        if entry.get("status") != "completed":
            print(f"fedsim: {name}: {entry.get('status')}: {entry.get('message', '')}", file=sys.stderr)
    # a file the runs read that changed while the sweep ran: its runs read two versions of it
    mixed = [entry["problem"] for entry in collect(out)[1] if entry["mixed"]]
    for problem in mixed:
        print(f"fedsim: sweep {sweep.name}: {problem}", file=sys.stderr)
    return EXIT_OK if all_finished(statuses) and not mixed else EXIT_FAILED


COMMANDS = {"run": command_run, "sweep": command_sweep, "presets": command_presets, "show-config": command_show_config,
            "plot": command_plot, "compare": command_compare, "export": command_export,
            "compressors": report_card.command}


def main(argv=None) -> int:
    """Run the ``fedsim`` command with ``argv`` (default ``sys.argv[1:]``); returns the exit status."""
    argv = sys.argv[1:] if argv is None else list(argv)
    spaced = next((i for i, token in enumerate(argv[:-1]) if token == "--set" and "=" not in argv[i + 1]), None)
    if spaced is not None:      # `--set federated.lr 0.1` would take 0.1 for a CONFIG file or an unrecognized argument
        example = "stc.p=0.01" if "compressors" in argv[:spaced] else "federated.lr=0.1"     # a key the command takes
        print(f"fedsim: error: --set needs key=value, joined by '=' with no space (e.g. --set {example}); got "
              f"{shlex.join(argv[spaced:spaced + 3])}", file=sys.stderr)
        return EXIT_USAGE
    args = build_parser().parse_args(argv)
    if args.command == "data":
        handler = command_data_fetch if args.data_command == "fetch" else command_data_info
    else:
        handler = COMMANDS[args.command]
    return one_line_errors("fedsim", partial(handler, args), debug=args.debug,
                           unexpected="run again with --debug for the traceback, and please report it")
