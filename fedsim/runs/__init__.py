"""Runs: the run folder and its files, provenance, records and summaries, and the loop that runs an
experiment into a folder (and resumes it).

Each module owns one thing: :mod:`~fedsim.runs.folder` the files, :mod:`~fedsim.runs.provenance` the
versions and commit, :mod:`~fedsim.runs.records` what records and summaries hold, :mod:`~fedsim.runs.loop`
the loop.
"""

from fedsim.runs.folder import RunFolder, RunFolderError, RunResult, default_run_dir, read_run
from fedsim.runs.loop import RunOutcome, build_run, execute, resume_run, run_each, start_run
from fedsim.runs.records import WALL_TIME_FIELDS, strip_wall_time, summarize

__all__ = ["RunFolder", "RunFolderError", "RunOutcome", "RunResult", "WALL_TIME_FIELDS", "build_run",
           "default_run_dir", "execute", "read_run", "resume_run", "run_each", "start_run", "strip_wall_time",
           "summarize"]
