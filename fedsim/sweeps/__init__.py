"""Sweeps: grids of runs over settings and seeds, on local cores or a Dask cluster, resumable, reported
over seeds (``fedsim sweep``).

:mod:`~fedsim.sweeps.spec` reads a sweep file into its planned runs, :mod:`~fedsim.sweeps.folder` keeps
the sweep folder (its manifest, its lock, the check of each run folder), :mod:`~fedsim.sweeps.execute` runs
them (the backends), :mod:`~fedsim.sweeps.worker` is what a worker process does, and
:mod:`~fedsim.sweeps.report` tabulates and draws the results.
"""

from fedsim.sweeps.execute import BACKENDS, all_finished, run_sweep
from fedsim.sweeps.folder import SweepError, read_manifest, resume_hint
from fedsim.sweeps.spec import PlannedRun, Sweep, load_sweep

__all__ = ["BACKENDS", "PlannedRun", "Sweep", "SweepError", "all_finished", "load_sweep", "read_manifest",
           "resume_hint", "run_sweep"]
