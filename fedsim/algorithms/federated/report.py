"""What is said about federated runs, all read from their JSON records (one per round, as history.jsonl
holds them): bits, the round that reaches a target accuracy, the summary, the progress text and the
``fedsim compare`` table."""

from __future__ import annotations

import dataclasses

from fedsim.algorithms.family import Report, cell, compare_row, compare_table


def total_bits(record: dict) -> int:
    """Bits of one round, up + down."""
    return int(record.get("bits_up", 0)) + int(record.get("bits_down", 0))


def reach(history: list[dict], target_accuracy: float) -> dict | None:
    """The first round whose test accuracy is >= ``target_accuracy``: its round, the bits (up, down,
    total) spent through it and, with [system] on, the simulated seconds; None if never reached."""
    up = down = 0
    for record in history:
        up += int(record.get("bits_up", 0))
        down += int(record.get("bits_down", 0))
        if record.get("test_accuracy", -1.0) >= target_accuracy:
            reached = {"round": int(record["round"]), "bits_up": up, "bits_down": down, "bits": up + down}
            if "simulated_seconds" in record:
                reached["simulated_seconds"] = record["simulated_seconds"]
            return reached
    return None


def summarize(history: list[dict]) -> dict:
    """Totals of bits; final and best test accuracy, and the round of the best."""
    summary = {"bits_up": sum(int(r.get("bits_up", 0)) for r in history),
               "bits_down": sum(int(r.get("bits_down", 0)) for r in history)}
    summary["bits"] = summary["bits_up"] + summary["bits_down"]
    if history and "dropped" in history[0]:                   # [system]: updates that missed the deadline
        summary["dropped"] = sum(int(r["dropped"]) for r in history)
    solved = next((r for r in history if "bits_per_round_knob" in r), None)   # the first round with updates
    if solved is not None:                                   # federated.bits_per_round: the knob and what it sent
        summary.update({key: solved[key] for key in ("bits_per_round_knob", "bits_per_round_knob_value")})
        # per client that uploaded (one loss each): unreachable clients (system.availability) sent nothing
        uploads = [r["bits_up"] / len(r["client_losses"]) for r in history if r["client_losses"]]
        summary["bits_up_per_participant"] = sum(uploads) / len(uploads)
    accuracies = [(r["test_accuracy"], i) for i, r in enumerate(history) if "test_accuracy" in r]
    if accuracies:
        best, at = max(accuracies)
        summary.update(final_test_accuracy=accuracies[-1][0], best_test_accuracy=best,
                       best_round=history[at]["round"])
    return summary


def progress_text(record: dict, state: dict) -> str:
    """The progress bar's text after ``record``: the last accuracy and the bits so far."""
    state["bits"] = state.get("bits", 0) + total_bits(record)
    if "test_accuracy" in record:
        state["accuracy"] = record["test_accuracy"]
    accuracy = f"acc {state['accuracy']:.4f}  " if "accuracy" in state else ""
    return f"{accuracy}bits {state['bits']:.3g}"


def achieved(summary: dict) -> list[str]:
    """What the run achieved, for the command line's closing line."""
    said = [f"bits up {summary['bits_up']:.4g}, down {summary['bits_down']:.4g}"]
    if "bits_per_round_knob" in summary:
        said.append(f"{summary['bits_per_round_knob']} = {summary['bits_per_round_knob_value']:.6g} for a mean upload "
                    f"of {summary['bits_up_per_participant']:.6g} bits per participant per round")
    return said


def compare(runs, targets: dict) -> tuple[str, list[str], list[list[str]]]:
    """The `fedsim compare` table of federated runs: accuracy, and rounds and bits to the target; when a run
    has the simulated clock ([system]), the simulated seconds to the target too."""
    target = targets["accuracy"]
    simulated = any("simulated_seconds" in r for run in runs for r in run.history[:1])
    rows = []
    for run in runs:
        accuracies = [r["test_accuracy"] for r in run.history if "test_accuracy" in r]
        reached = reach(run.history, target)
        seconds = [cell(reached and reached.get("simulated_seconds"), ".4g")] if simulated else []
        rows.append(compare_row(run, cell(accuracies[-1] if accuracies else None, ".4f"),
                                cell(max(accuracies) if accuracies else None, ".4f"),
                                cell(reached and reached["round"], "d"), cell(reached and reached["bits"], ".4g"),
                                *seconds, cell(sum(map(total_bits, run.history)), ".4g")))
    return compare_table(f"federated runs (target: test accuracy >= {target:g})", "rounds",
                         ["final acc", "best acc", "rounds to target", "bits to target",
                          *(["simulated s to target"] if simulated else []), "bits total"], rows)


def unused_settings(config: dict) -> set[str]:
    """What of a run's config (parsed TOML) its federated method ignores: ``federated.p_up`` / ``p_down`` unless
    the up / down compressor keeps a fraction ``p`` (QSGD, TernGrad, PowerSGD and sign send every entry),
    ``federated.compression_scope`` off its default if both send dense updates (none, fedavg: the identity's scope
    is irrelevant; at the default it stays a setting all runs share, out of the legends), and the tables of the
    compressors it does not use."""
    from fedsim.algorithms.federated.config import FederatedConfig, methods
    from fedsim.compress import COMPRESSORS
    from fedsim.config import COMPRESSOR_TABLES
    settings = config.get("federated") or {}
    method = methods().get(settings.get("method"))
    if method is None:
        return set()
    default = FederatedConfig.compression_scope
    scope_set = settings.get("compression_scope", default) != default
    return {f"federated.{setting}" for setting, name in (("p_up", method.up), ("p_down", method.down))
            if name in COMPRESSORS and "p" not in {field.name for field in dataclasses.fields(COMPRESSORS[name])}} \
        | set(COMPRESSOR_TABLES) - {method.up, method.down} \
        | ({"federated.compression_scope"} if scope_set and {method.up, method.down} == {"identity"} else set())


REPORT = Report(
    clients_word="clients", summarize=summarize, progress=progress_text, achieved=achieved, compare=compare,
    figure="federated_figure",
    metrics=("final_test_accuracy", "best_test_accuracy", "bits_up", "bits_down", "bits", "simulated_seconds",
             "dropped"),
    curve=("round", "test_accuracy", "test accuracy", "value"), unused=unused_settings,
    fields={"round": (int, True), "bits_up": (int, True), "bits_down": (int, True),
            **dict.fromkeys(("test_accuracy", "train_accuracy", "test_loss", "train_loss", "simulated_seconds",
                             "time"), (float, False))})
