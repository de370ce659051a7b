"""``fedsim compare``'s tables: one per family present, each drawn up by its family; runs compared against
one f* only when they minimize the same objective (the same data, model and the family's objective settings)."""

from __future__ import annotations


def text_table(headers: list[str], rows: list[list], right: bool = True) -> str:
    """Columns as wide as their widest cell, a rule under the headers; the first column to the left, the
    others to the right (``right``) or to the left too."""
    widths = [max(len(str(cell)) for cell in column) for column in zip(headers, *rows)]
    lines = ["  ".join(str(cell).rjust(width) if i and right else str(cell).ljust(width)
                       for i, (cell, width) in enumerate(zip(line, widths)))
             for line in [headers, *rows]]
    lines.insert(1, "  ".join("-" * width for width in widths))
    return "\n".join(lines)


def same_data(runs, objective: tuple = ()) -> dict[str, list]:
    """``runs`` grouped by the data they ran on, each group named: the [data] table (not where its files
    are) and the seed where it draws the data or the clients' shards: for synthetic data (as ``load_data`` keys
    the data it loaded) and every partition but contiguous and natural (f sums each client's mean loss, so it
    depends on the shards: a dirichlet split, unequal iid or shards pieces, classes_per_client leaving samples
    out; equal shards of all samples give the same f for every seed, but the config does not tell them); with
    ``objective`` (a family's :attr:`~fedsim.algorithms.family.Report.objective`), by the objective they
    minimize: also the [model] table (not its init) and those settings."""
    keys = []
    for run in runs:
        data = {key: value for key, value in (run.config.get("data") or {}).items()
                if key not in ("data_dir", "download")}
        if data.get("dataset") == "synthetic" or data.get("partition") not in ("contiguous", "natural"):
            data["seed"] = run.config.get("seed", 0)
        if objective:
            model = {f"model.{key}": value for key, value in (run.config.get("model") or {}).items() if key != "init"}
            data.update(model, **{name: (run.config.get(name.split(".")[0]) or {}).get(name.split(".")[1])
                                  for name in objective})
        keys.append(data)
    differing = sorted({key for data in keys for key in data if len({repr(d.get(key)) for d in keys}) > 1})
    groups: dict[str, list] = {}
    for run, data in zip(runs, keys):
        name = ", ".join([str(data.get("dataset", "?"))] + [f"{key} {data.get(key)}" for key in differing])
        groups.setdefault(name, []).append(run)
    return groups


def compare_tables(runs, target_accuracy: float, target_residual: float) -> str:
    """The text of ``fedsim compare``: one table per family present, each drawn up by its family. A
    family whose numbers are relative to the best objective of the runs (its sweep curve is a residual,
    f - f*) gets one table per data the runs ran on: f* is a property of the data, not shared across it."""
    from fedsim.algorithms.family import group_by_family
    from fedsim.runs.folder import tell_apart
    runs = tell_apart(list(runs))
    targets = {"accuracy": target_accuracy, "residual": target_residual}
    blocks = []
    for declared, chosen in group_by_family(runs):
        relative = declared.report.curve[3:] == ("residual",)
        groups = same_data(chosen, declared.report.objective) if relative else {"": chosen}
        for data, grouped in groups.items():
            title, headers, rows = declared.report.compare(grouped, targets)
            if len(groups) > 1:                 # on the title's first line (a footnote may follow it)
                first, *notes = title.split("\n")
                title = "\n".join([f"{first} on {data}", *notes])
            blocks.append(f"{title}\n{text_table(headers, rows)}")
    return "\n\n".join(blocks)


__all__ = ["compare_tables", "same_data", "text_table"]
