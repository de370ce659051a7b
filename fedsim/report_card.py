"""``fedsim compressors report``: each registered compressor measured against its theory (the report card).

For each compressor (every registered one, a plugin's too: the entry points of ``fedsim.plugins`` and the
modules of ``--plugin MODULE`` are imported first; or those named) at its settings (its defaults, or ``--set
qsgd.levels=4``, each checked before anything is measured), on vectors of a chosen kind, over ``--draws``
draws: the measurement of :mod:`fedsim.compress.theory` (bias, error beside the theory the compressor states,
"-" where none is published, and whether it meets it; bits per entry three ways). A text table, and on
request a CSV file and a figure.

Vectors: ``gaussian`` (standard normal), ``heavy-tailed`` (Student's t with 2 degrees of freedom: a few
entries dominate), in float32 (a run's default), laid out as one (size / 10) x 10 matrix, the weights of a
10-class model (plus a 1-D tensor of the remainder); or real updates: the next round's client updates of
a federated run folder's last checkpoint (a run folder given as the path; its data must be at hand) or of
a preset after two rounds (``preset:NAME``), laid out as the run's model. On heavy-tailed vectors an
error dominated by a few rarely drawn entries (random-k keeps each with probability k / N) needs many
more draws before its mean and standard error can be trusted.
"""

from __future__ import annotations

import csv
import sys
from pathlib import Path

SYNTHETIC = ("gaussian", "heavy-tailed")
COLUMNS = ("compressor", "settings", "vectors", "size", "draws", "bias", "bias_se", "error", "error_se",
           "theory", "relation", "meets", "source", "bits_encoder", "bits_entropy", "bits_formula", "problem")
#: The columns copied from the compressor's Measurement.
MEASURED = ("bias", "bias_se", "error", "error_se", "bits_encoder", "bits_entropy", "bits_formula")
#: Rounds a preset runs before its updates are taken (``--vectors preset:NAME``).
PRESET_ROUNDS = 2
#: Clients whose updates are measured, at most (each one is a vector of its own).
MAX_CLIENTS = 4


def add_report_parser(commands) -> None:
    """The ``compressors`` command and its ``report`` action (the options below)."""
    parser = commands.add_parser("compressors", help="each compressor measured against its theory: bias, "
                                                     "error and bits (fedsim compressors report)")
    actions = parser.add_subparsers(dest="compressors_command", metavar="ACTION", required=True)
    report = actions.add_parser("report", help="bias, error against theory and bits per entry three ways")
    report.add_argument("names", nargs="*", metavar="NAME", help="compressors to measure (default: every one)")
    report.add_argument("--vectors", default="gaussian", metavar="KIND", help="gaussian (default) | heavy-tailed "
                        "| RUN_DIR (a federated run folder's next updates) | preset:NAME")
    report.add_argument("--draws", type=int, default=200, metavar="N", help="draws per vector (default 200)")
    report.add_argument("--size", type=int, default=7850, metavar="D",
                        help="entries of a synthetic vector (default 7850, a 785 x 10 matrix)")
    report.add_argument("--seed", type=int, default=0, metavar="N",
                        help="seed (>= 0) of the gaussian and heavy-tailed vectors and of the compressors' random "
                             "draws (a preset's or run folder's vectors are fixed by its run)")
    report.add_argument("--set", dest="overrides", action="append", default=[], metavar="NAME.SETTING=VALUE",
                        help="a compressor's setting, e.g. --set qsgd.levels=4 (a TOML value; repeatable)")
    report.add_argument("--plugin", dest="plugins", action="append", default=[], metavar="MODULE",
                        help="import MODULE first, a plugin registering a compressor (as a config's plugins = "
                             "[...]; an importable module name; repeatable)")
    report.add_argument("--csv", metavar="FILE", help="also write the table as CSV")
    report.add_argument("--figure", metavar="FILE", help="also draw the error and bits of each compressor")


def command(args) -> int:
    """Run ``fedsim compressors report``; exit status 0, or 1 when a measurement misses its theory or a
    compressor could not be measured (a setting the vectors' layout refuses: one line each on stderr)."""
    from fedsim.errors import UsageError
    from fedsim.compress import COMPRESSORS
    from fedsim.config import import_plugins
    from fedsim.plugins import MODULE_NAME
    for module in args.plugins:
        if not MODULE_NAME.fullmatch(module):
            raise UsageError(f"--plugin MODULE must be an importable module name like 'mypkg.int8' (no file paths), "
                             f"got {module!r}")
    import_plugins(args.plugins)    # the entry points of fedsim.plugins, then each MODULE: their compressors registered
    unknown = [name for name in args.names if name not in COMPRESSORS]
    if unknown:
        raise UsageError(f"compressor NAME must be one of {', '.join(COMPRESSORS)}, got {', '.join(unknown)} (a "
                         f"plugin's: --plugin MODULE imports it)")
    for option, value, low, why in (("--draws", args.draws, 2, " (a standard error needs two)"),
                                    ("--size", args.size, 10, " (a matrix of 10 columns)"),
                                    ("--seed", args.seed, 0, "")):
        if value < low:
            raise UsageError(f"{option} must be an integer >= {low}{why}, got {value}")
    settings = parse_overrides(args.overrides, UsageError)
    names = args.names or list(COMPRESSORS)
    unused = [f"{name}.{setting}" for name, values in settings.items() if name not in names for setting in values]
    if unused:
        print(f"fedsim: warning: settings not used by this report: {', '.join(unused)} (the compressors measured: "
              f"{', '.join(names)})", file=sys.stderr)
    vectors, spec, kind = load_vectors(args.vectors, args.size, args.seed, UsageError)
    rows = report(names, settings, vectors, spec, kind, args.draws, args.seed)
    print(format_table(rows))
    if args.csv:
        print(f"table: {write_csv(rows, args.csv)}")
    if args.figure:
        print(f"figure: {draw(rows, args.figure)}")
    unmeasured = [row for row in rows if row["problem"]]          # no measurement, no "meets"
    for row in unmeasured:
        print(f"fedsim: compressors report: {row['compressor']} not measured: {row['problem']}", file=sys.stderr)
    missed = [row["compressor"] for row in rows if row.get("meets") == "no"]
    for name in missed:
        print(f"fedsim: compressors report: {name}'s measurement misses its theory", file=sys.stderr)
    return 1 if missed or unmeasured else 0


def parse_overrides(overrides: list[str], error) -> dict[str, dict]:
    """``["qsgd.levels=4"]`` -> ``{"qsgd": {"levels": 4}}`` (values read as TOML), checked
    (:func:`check_settings`)."""
    from fedsim.config import override_value
    settings: dict[str, dict] = {}
    for text in overrides:
        key, equals, value = text.partition("=")
        name, dot, setting = key.strip().partition(".")
        if not (equals and dot and setting):
            raise error(f"--set takes NAME.SETTING=VALUE (e.g. qsgd.levels=4), got {text!r}")
        settings.setdefault(name, {})[setting] = override_value(value)
    check_settings(settings, error)
    return settings


def check_settings(settings: dict[str, dict], error) -> None:
    """Each compressor's settings checked as its class checks them, before anything is measured: a NAME that is
    no registered compressor is one line (the closest compressor; a config's table, such as federated, is told
    that --set takes a compressor's settings), a setting that is none of its fields (p and scope included,
    which a config sets in [federated]) one line with the closest of them (``difflib``), a value its
    field's constraint refuses one line naming the setting and what is allowed."""
    import dataclasses
    import difflib
    from fedsim.compress import COMPRESSORS, make_compressor
    from fedsim.config import TABLES, TOP_LEVEL, setting_error
    for name, values in settings.items():
        if name not in COMPRESSORS:
            key, names = f"{name}.{next(iter(values))}", ", ".join(COMPRESSORS)
            if name in TABLES or name in TOP_LEVEL:
                raise error(f"--set {key} is a run config's setting; report --set takes a compressor's settings, "
                            f"NAME.SETTING with NAME one of {names} (e.g. qsgd.levels=4, stc.p=0.1)")
            close = difflib.get_close_matches(name, list(COMPRESSORS), n=1, cutoff=0.6)
            raise error(f"unknown compressor '{name}' in --set {key}; "
                        + (f"did you mean '{close[0]}'?" if close else f"compressors: {names}"))
        fields = [field.name for field in dataclasses.fields(COMPRESSORS[name]) if field.init]
        for setting in values:
            if setting not in fields:      # the closest of its fields, p and scope included (cutoff as config's)
                close = difflib.get_close_matches(setting, fields, n=1, cutoff=0.6)
                raise error(f"unknown setting '{name}.{setting}' in --set; "
                            + (f"did you mean '{name}.{close[0]}'?" if close else f"{name} has: {', '.join(fields)}"))
        try:
            make_compressor(name, **values)
        except (ValueError, TypeError) as problem:
            raise error(str(setting_error(name, problem, fields))) from None


def load_vectors(kind: str, size: int, seed: int, error):
    """``(vectors (V, P), spec, description)`` for ``--vectors`` (module docstring)."""
    import numpy as np
    from fedsim.compress import Layout
    if kind in SYNTHETIC:
        rng = np.random.default_rng([seed, 1])
        vector = rng.standard_normal(size) if kind == "gaussian" else rng.standard_t(2, size)
        rows, rest = divmod(size, 10)
        shapes = ((rows, 10),) + (((rest,),) if rest else ())
        offsets = (0, rows * 10) + ((size,) if rest else ())
        return vector.astype(np.float32)[None, :], Layout(offsets, shapes), kind
    from fedsim.runs import build_run
    preset = kind.startswith("preset:")
    if preset:
        from fedsim.config import load_preset
        run = build_run(load_preset(kind.removeprefix("preset:")), progress=False)
    else:
        from fedsim.runs.folder import CONFIG_FILE, RunFolder
        folder = RunFolder(kind)
        if not folder.file(CONFIG_FILE).is_file():
            raise error(f"--vectors must be gaussian, heavy-tailed, preset:NAME or a run folder; {kind!r} is none")
        run = build_run(folder.read_config(), progress=False)
    if not hasattr(run, "next_updates"):      # before it runs (a lazy run's run() takes other arguments)
        raise error(f"--vectors {kind}: real updates come from federated runs (this is a {type(run).__name__})")
    if preset:
        run.run(PRESET_ROUNDS)
    else:
        checkpoint = folder.read_checkpoint()
        if checkpoint is not None:
            run.load_state_dict(checkpoint[0], checkpoint[1])
    updates = run.next_updates()[:MAX_CLIENTS]
    return updates, run.model.spec, f"{kind} (round {run.completed + 1} updates of {len(updates)} clients)"


def report(names, settings: dict, vectors, spec, kind: str, draws: int, seed: int) -> list[dict]:
    """One row per compressor: its measurement on ``vectors`` combined over them (COLUMNS), or the problem
    that kept it from being measured (a setting it refuses, a layout it cannot take)."""
    import numpy as np
    from fedsim.compress import make_compressor
    from fedsim.compress.theory import Theory, combine, measure, meets
    rows = []
    for name in names:
        row = {"compressor": name, "settings": "", "vectors": kind, "size": vectors.shape[1], "draws": draws,
               "problem": ""}
        rows.append(row)
        try:
            compressor = make_compressor(name, **settings.get(name, {}))
            row["settings"] = " ".join(f"{key}={value}" for key, value in compressor.settings.items())
            rng = np.random.default_rng([seed, 2])
            measured = combine([measure(compressor, vector, spec, draws, rng) for vector in vectors])
        except (ValueError, TypeError) as problem:
            row["problem"] = " ".join(str(problem).split())
            continue
        theory = measured.theory or Theory(None, None, "", "")        # nothing stated: no value, no relation
        row.update({key: getattr(measured, key) for key in MEASURED}, theory=theory.error,
                   relation="" if theory.error is None else theory.relation, source=theory.source,
                   meets={True: "yes", False: "no", None: "-"}[meets(measured, vectors.dtype)])
    return rows


def format_table(rows: list[dict]) -> str:
    """The report card as text: one line per compressor, then the sources of the theories."""
    from fedsim.algorithms.family import cell
    header = (f"{'compressor':<10} {'bias +- se':>19} {'error +- se':>21} {'theory':>13} {'meets':>5} "
              f"{'bits/entry: encoder':>19} {'entropy':>8} {'formula':>8}")
    lines = [f"compressors on {rows[0]['vectors']} vectors of {rows[0]['size']} entries, {rows[0]['draws']} draws"
             if rows else "no compressors", header, "-" * len(header)]
    for row in rows:
        if row["problem"]:
            lines.append(f"{row['compressor']:<10} not measured: {row['problem']}")
            continue
        theory = "-" if row["theory"] is None else f"{row['relation']} {cell(row['theory'], '.4g')}"
        lines.append(f"{row['compressor']:<10} {cell(row['bias'], '.4g'):>9} +- {cell(row['bias_se'], '.4g'):<6} "
                     f"{cell(row['error'], '.4g'):>10} +- {cell(row['error_se'], '.4g'):<7} {theory:>13} "
                     f"{row['meets']:>5} {cell(row['bits_encoder'], '.3f'):>19} "
                     f"{cell(row['bits_entropy'], '.3f'):>8} {cell(row['bits_formula'], '.3f'):>8}")
    lines.append("error = E||C(x) - x||^2 / ||x||^2; theory: <= a bound, = exact, >= a floor; meets: within 4 "
                 "standard errors (and, if unbiased, |bias z| <= 4)")
    lines.append("bits/entry: encoder = the real message; entropy = the plug-in entropy of the message's symbols "
                 "(QSGD's signed levels, TernGrad's, STC's and the sign's ternary or sign symbols, without their "
                 "scales; the floats of the others); formula = the paper's count (TernGrad's: log2(3) N + 32 per "
                 "segment, where its paper counts 2 bits per entry)")
    lines += [f"  {row['compressor']}: {row['settings']}; {row['source'] or 'no theory stated'}"
              for row in rows if not row["problem"]]
    return "\n".join(lines)


def write_csv(rows: list[dict], path) -> Path:
    """The rows as CSV (COLUMNS), written atomically."""
    import io
    from fedsim.files import write_atomic
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows({column: "" if row.get(column) is None else row[column] for column in COLUMNS} for row in rows)
    write_atomic(path, buffer.getvalue())
    return Path(path)


def draw(rows: list[dict], path) -> Path:
    """Two panels: each compressor's measured error beside its theory (log scale), and its bits per entry
    by encoder, entropy and formula."""
    import numpy as np
    from fedsim.plot import _figure
    measured = [row for row in rows if not row["problem"]]
    names = [row["compressor"] for row in measured]
    place = np.arange(len(measured))
    figure, ((left, right),) = _figure(1, 2, width=5.5, height=4.0)
    left.bar(place - 0.2, [max(row["error"], 1e-12) for row in measured], 0.4, label="measured")
    left.bar(place + 0.2, [max(row["theory"], 1e-12) if row["theory"] is not None else 0 for row in measured], 0.4,
             label="theory (bound, exact or floor)")
    left.set(yscale="log", ylabel="E||C(x) - x||^2 / ||x||^2", title="error against theory")
    for way, shift in (("encoder", -0.27), ("entropy", 0.0), ("formula", 0.27)):
        right.bar(place + shift, [row[f"bits_{way}"] for row in measured], 0.27, label=way)
    right.set(yscale="log", ylabel="bits per entry", title="bits: real encoder, symbols' entropy, formula")
    for axes in (left, right):
        axes.set_xticks(place, names, rotation=30)
        axes.legend(fontsize=8)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path)
    return path

