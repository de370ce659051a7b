"""Run folders into the tools researchers watch: ``fedsim export RUN_DIR ... --to tensorboard DIR``.

TensorBoard: one event-file run per fedsim run, ``DIR/<run folder's name>`` (``DIR/<parent>/<name>`` when
two runs share a name), written with tensorboardX (the extra ``tensorboard``); an export again replaces
the event files it wrote before. The scalars:

* federated, step = round: ``accuracy/test``, ``accuracy/train``, ``loss/test``, ``loss/train`` (the
  record's ``test_accuracy``, ... where evaluated), ``bits/up``, ``bits/down`` (of the round) and
  ``bits/cumulative`` (up + down so far);
* lazy, step = iteration k: ``loss/objective`` (f(theta^k)), ``accuracy/test`` (at theta^k where measured;
  at step K, the final accuracy at theta^K), ``bits/up`` (uploaded in iteration k), ``bits/cumulative``.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

#: How to get what the TensorBoard export needs.
TENSORBOARD_INSTALL = 'pip install "fedsim-compress[tensorboard]" (or: pip install tensorboardX)'
#: The end of the names of the event files fedsim writes (and replaces on an export again).
EVENT_FILE_SUFFIX = ".fedsim"


def scalars(run) -> list[tuple[str, float, int]]:
    """(tag, value, step) of every scalar of ``run`` (a :class:`fedsim.runs.RunResult`), in record order."""
    rows, cumulative = [], 0
    for record in run.history:
        if run.family == "lazy":
            step = int(record["iteration"])
            values = {"loss/objective": record["objective"], "accuracy/test": record.get("test_accuracy"),
                      "bits/up": int(record["bits"]) - cumulative, "bits/cumulative": int(record["bits"])}
            cumulative = int(record["bits"])
        else:
            step = int(record["round"])
            cumulative += int(record["bits_up"]) + int(record["bits_down"])
            values = {f"{kind}/{split}": record.get(f"{split}_{kind}") for kind in ("accuracy", "loss")
                      for split in ("test", "train")}
            values.update({"bits/up": record["bits_up"], "bits/down": record["bits_down"],
                           "bits/cumulative": cumulative})
        rows += [(tag, float(value), step) for tag, value in values.items() if value is not None]
        if "final_test_accuracy" in record:            # lazy: at theta^K, after the last iteration
            rows.append(("accuracy/test", float(record["final_test_accuracy"]), step + 1))
    return rows


def to_tensorboard(runs, out) -> list[Path]:
    """Write each run's :func:`scalars` as one TensorBoard run under ``out`` (named as the module says); the
    folders written. ImportError (naming :data:`TENSORBOARD_INSTALL`) when tensorboardX is not installed."""
    try:
        from tensorboardX import SummaryWriter
    except ImportError:
        raise ImportError(f"the TensorBoard export needs the extra tensorboard: {TENSORBOARD_INSTALL}") from None
    names = Counter(run.path.name for run in runs)
    folders = [Path(out) / (f"{run.path.parent.name}/{run.path.name}" if names[run.path.name] > 1 else run.path.name)
               for run in runs]
    for run, folder in zip(runs, folders):
        for old in folder.glob(f"events.out.tfevents.*{EVENT_FILE_SUFFIX}"):
            old.unlink()
        writer = SummaryWriter(logdir=str(folder), filename_suffix=EVENT_FILE_SUFFIX, max_queue=1000)
        for tag, value, step in scalars(run):
            writer.add_scalar(tag, value, global_step=step)
        writer.close()
    return folders


__all__ = ["EVENT_FILE_SUFFIX", "TENSORBOARD_INSTALL", "scalars", "to_tensorboard"]
