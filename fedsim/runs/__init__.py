"""Runs: the run folder and its files, provenance, records and summaries, and the loop that runs an
experiment into a folder (and resumes it).

Each module owns one thing: :mod:`~fedsim.runs.folder` the files, :mod:`~fedsim.runs.provenance` the
versions and commit, :mod:`~fedsim.runs.records` what records and summaries hold, :mod:`~fedsim.runs.loop`
the loop.

Observers
---------
``start_run(..., observer=f)``, ``resume_run(..., observer=f)`` and ``run_each(..., observers={name: f})``
call ``f(record)`` with each step's record, the dict written as one line of history.jsonl:

* when: after each step completed in this session, once its record is appended (and flushed) to
  history.jsonl and before any checkpoint that includes it; in step order. A resume does not replay
  the records it finds: ``f`` sees the steps from the checkpoint on. Steps done after the last
  checkpoint before a crash or kill are done again after the resume and observed again, with equal
  records (but ``time``). A step that diverges has no record.
* where: in the process and thread that call ``start_run`` (a sweep's runs take no observer); the run
  waits for ``f`` (its time is not in the record's ``time``). An exception from ``f`` stops the run as
  a crash would: the record stays written, and ``fedsim run --resume`` continues from the last checkpoint.
* what it may not do: change the record (it is the run's own, checkpointed and summarized; copy it
  first), or write into the run folder.

A federated record (one per round): ``round`` (1, 2, ...), ``participants`` (clients sampled this round,
unreachable ones included; the rest take part), ``lr`` (the reachable participants' mean learning rate;
null with none), ``epoch`` (mean passes over a participant's data; null with none), ``iteration`` (local
SGD steps so far), ``client_losses`` (each reachable participant's last local batch loss, nats),
``bits_up`` / ``bits_down`` (bits of this round sent up / down, as encoded), ``bits_up_analytic`` /
``bits_down_analytic`` (the paper's estimate of the same), ``bits_down_catch_up`` (of bits_down: the
catch-up of returning clients); with ``federated.bits_per_round``, in the first round with updates,
``bits_per_round_knob`` (the name of the up compressor's setting solved), ``bits_per_round_knob_value`` (its value) and
``bits_per_round_first`` (mean encoded bits per participant that round); with ``[system]`` on,
``simulated_seconds`` (simulated time since the start, cumulative, s) and ``dropped`` (sampled clients
unreachable or whose update the server did not keep); in evaluated rounds (every ``eval_every`` and the last)
``train_loss`` / ``test_loss`` (mean cross-entropy plus the L2 penalty, nats) and ``train_accuracy`` /
``test_accuracy`` (fraction in [0, 1]) of the server model; ``time`` (seconds of the step, wall time).

A lazy record (one per iteration k = 0, 1, ...): ``iteration`` (k), ``objective`` (f(theta^k), summed
over workers), ``grad_norm_sq`` (||grad f(theta^k)||^2), ``aggregate_norm_sq`` (||sum_m Q_m||^2, the
server's step direction), ``uploads`` (the workers that uploaded), ``communications`` and ``bits``
(uploads and bits so far, cumulative), ``test_accuracy`` where measured (at theta^k, every
``eval_every``), ``final_test_accuracy`` in the last record (at theta^K); with ``lazy.bits_per_upload``, in
the first record, ``bits_per_upload_budget`` (the budget), ``bits_per_upload_b`` (the bits per entry solved)
and ``bits_per_upload_achieved`` (bits per upload); with ``[system]`` on, ``simulated_seconds`` (simulated
time since the start, cumulative, s); ``time`` (seconds, wall time).
"""

from fedsim.runs.folder import RunFolder, RunFolderError, RunResult, default_run_dir, read_run
from fedsim.runs.loop import RunOutcome, build_run, execute, resume_run, run_each, start_run
from fedsim.runs.records import WALL_TIME_FIELDS, strip_wall_time, summarize

__all__ = ["RunFolder", "RunFolderError", "RunOutcome", "RunResult", "WALL_TIME_FIELDS", "build_run",
           "default_run_dir", "execute", "read_run", "resume_run", "run_each", "start_run", "strip_wall_time",
           "summarize"]
