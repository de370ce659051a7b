"""A run's summary (summary.json) and what of its records (:mod:`fedsim.runs`; each written by the family's
``step``, :mod:`fedsim.algorithms`) is reproducible."""

from __future__ import annotations

from fedsim.config import ExperimentConfig

#: Record fields that measure wall time; everything else in a record is reproducible bit for bit.
WALL_TIME_FIELDS = ("time",)


def summarize(config: ExperimentConfig, history: list[dict]) -> dict:
    """Family, method, steps done and planned, compute seconds, the simulated seconds (with [system] on),
    and the family's own ``summarize``."""
    summary = {"family": config.family, "method": config.method, "completed": len(history),
               "planned": config.steps, "seconds": float(sum(r.get("time", 0.0) for r in history))}
    if history and "simulated_seconds" in history[-1]:       # cumulative: the last record's is the total
        summary["simulated_seconds"] = history[-1]["simulated_seconds"]
    summary.update(config.algorithm_family.report.summarize(history))
    return summary


def strip_wall_time(records: list[dict]) -> list[dict]:
    """Records without their wall-time fields (:data:`WALL_TIME_FIELDS`): what reproduces bit for bit."""
    return [{key: value for key, value in record.items() if key not in WALL_TIME_FIELDS}
            for record in records]


__all__ = ["WALL_TIME_FIELDS", "strip_wall_time", "summarize"]
