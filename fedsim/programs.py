"""What every command-line program of fedsim shares (the ``fedsim`` command, :mod:`fedsim.cli`, and the
example scripts): exit statuses, one-line errors, a run's outcome reported, the ``--model`` options.

Exit status: 0 success; 1 the run diverged, data could not be had, or the system refused (a disk, a permission,
a path); 2 a bad command line, config, run or sweep folder (one error line on stderr); 128 + signal number when
a run or a sweep was stopped by a signal (130 for Ctrl-C).
"""

from __future__ import annotations

import argparse
import errno
import shlex
import signal
import sys
import warnings
from pathlib import Path

from fedsim.errors import UsageError

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2


class OneLineParser(argparse.ArgumentParser):
    """argparse with its errors as one line, ``PROG: error: ...`` (usage through --help), as every other error."""

    def error(self, message):
        program, _, command = self.prog.partition(" ")      # "run" for `fedsim run`; "" for fedsim itself
        self.exit(EXIT_USAGE, f"{program}: error: {command + ': ' if command else ''}{message} (see {self.prog} "
                              f"--help)\n")


def error_status(error: Exception) -> tuple[int, str] | None:
    """The exit status (module docstring) and the one line telling of an error a user can fix; None for an
    error fedsim did not expect. A run folder refused while the system refused a write (a RunFolderError raised
    in handling an OSError) is the system's refusal: 1."""
    from fedsim.compress.budget import BudgetError
    from fedsim.config import ConfigError
    from fedsim.data.registry import DataSettingError
    from fedsim.data.search import DatasetNotFoundError
    from fedsim.runs import RunFolderError
    from fedsim.sweeps.folder import SweepError
    if isinstance(error, RunFolderError) and isinstance(error.__context__, OSError):
        return EXIT_FAILED, str(error)
    if isinstance(error, (UsageError, ConfigError, RunFolderError, SweepError, DataSettingError, BudgetError)):
        return EXIT_USAGE, str(error)
    if isinstance(error, DatasetNotFoundError):
        return EXIT_FAILED, str(error)
    if isinstance(error, OSError):      # the system's words
        where = f" ({error.filename})" if error.filename else ""
        return EXIT_FAILED, f"{error.strerror or error}{where}"
    return None


def one_line_errors(prog: str, body, *, interrupted: str = "interrupted", debug: bool = False,
                    unexpected: str | None = None) -> int:
    """``body()``'s exit status; an error printed as the one line ``PROG: error: ...`` with the status of
    :func:`error_status`, each warning as ``PROG: warning: ...`` (``fedsim`` and the examples end alike).

    Ctrl-C prints ``PROG: `` and the interrupt's text (else ``interrupted``): 128 + SIGINT = 130; a closed
    pipe (``fedsim compare ... | head``) ends quietly with 0. An error fedsim did not expect is one line with
    the advice ``unexpected`` if that is given, else raised (its traceback), as every error is with ``debug``.
    """
    def one_line_warning(message, category, filename, lineno, file=None, line=None):
        print(f"{prog}: warning: {' '.join(str(message).split())}", file=sys.stderr)

    try:
        with warnings.catch_warnings():
            warnings.showwarning = one_line_warning      # restored when the body ends
            return body()
    except KeyboardInterrupt as error:
        from fedsim.runs.loop import EXIT_SIGNAL_BASE
        print(f"{prog}: {str(error) or interrupted}", file=sys.stderr)
        return EXIT_SIGNAL_BASE + signal.SIGINT
    except BrokenPipeError:
        return EXIT_OK
    except Exception as error:
        if debug:
            raise
        told = error_status(error)
        if told is None and unexpected is None:
            raise
        status, text = told or (EXIT_FAILED, f"unexpected {type(error).__name__}: {error} ({unexpected})")
        from fedsim.data.search import DatasetNotFoundError
        if not isinstance(error, DatasetNotFoundError):      # its lines: where fedsim looked, what to do
            text = " ".join(text.split())
        if len(text) > 4000:
            text = f"{text[:2000]} ... [{len(text) - 4000:,} characters cut] ... {text[-2000:]}"
        print(f"{prog}: error: {text}", file=sys.stderr)
        return status


def command_line() -> list[str]:
    """This process's command line as it can be run again: ``python -m fedsim ...`` with this interpreter when it
    was started so (``sys.argv[0]`` is then the path of fedsim's ``__main__.py``), else ``sys.argv``."""
    spec = getattr(sys.modules.get("__main__"), "__spec__", None)
    if spec is not None and spec.name.endswith(".__main__"):
        return [sys.executable, "-m", spec.name.removesuffix(".__main__"), *sys.argv[1:]]
    return list(sys.argv)


def stopped_at_once(again: str) -> str:
    """What a second Ctrl-C during a run means: stopped mid-step; ``again`` (the command that continues)
    starts from the last checkpoint."""
    return f"stopped at once; continue from the last checkpoint (if any; else from the start) with: {again}"


#: The errors of a write refused for want of room, and what each means.
NO_SPACE = {errno.ENOSPC: "the disk is full", errno.EDQUOT: "the disk quota is used up",
            errno.EFBIG: "the file size limit is reached"}


def no_space(error: OSError, folder: Path, again: str | None) -> OSError:
    """``error`` (a write refused for want of room: :data:`NO_SPACE`) told in one line: which folder,
    why, and ``again``, the command that continues from what was saved (None: nothing was)."""
    where = f"{error.filename} in {folder}" if error.filename else str(folder)
    then = (f"everything up to the last checkpoint is saved; make room, then continue with: {again}" if again
            else "make room, then run the same command again")
    return OSError(error.errno, f"cannot write {where}: {NO_SPACE[error.errno]} ({error.strerror}); {then}")


def report_outcome(outcome, *, prog: str = "fedsim", again: str | None = None) -> int:
    """Tell on stderr how a run ended (a :class:`~fedsim.runs.RunOutcome`) unless it completed now; its
    exit status. ``again`` is the command that continues an interrupted run (default
    ``fedsim run --resume RUN_DIR``)."""
    folder, unit = outcome.folder.path, outcome.unit
    if outcome.status == "interrupted":
        print(f"{prog}: interrupted after {outcome.completed} of {outcome.planned} {unit}; everything so far "
              f"is saved. Continue with: {again or shlex.join(['fedsim', 'run', '--resume', str(folder)])}",
              file=sys.stderr)
    elif outcome.status == "finished-before":
        print(f"{prog}: nothing to resume in {folder}: {outcome.message}", file=sys.stderr)
    elif outcome.status == "diverged":
        print(f"{prog}: the run diverged after {outcome.completed} {unit}: {outcome.message}\n"
              f"{prog}: the completed {unit} are saved in {folder}", file=sys.stderr)
    return outcome.exit_code


def report_outcomes(outcomes: dict, *, prog: str, again: str) -> int | None:
    """:func:`report_outcome` of each of ``outcomes`` (those of :func:`fedsim.runs.run_each`); the exit
    status of the interrupted run that ended them, if one did."""
    for outcome in outcomes.values():
        status = report_outcome(outcome, prog=prog, again=again)
        if outcome.status == "interrupted":
            return status
    return None


#: ``--hidden`` of an example's ``--model`` with hidden layers when not given (the STC and LAQ networks' width).
DEFAULT_HIDDEN = (200,)


def add_model_options(parser: argparse.ArgumentParser) -> None:
    """The examples' ``--model`` (a registered model: model.name) and ``--hidden`` (model.hidden)."""
    from fedsim.models import MODELS
    parser.add_argument("--model", choices=sorted(MODELS),
                        help="the model of every run (model.name; default: the preset's, softmax regression)")
    parser.add_argument("--hidden", nargs="+", type=int, metavar="WIDTH",
                        help=f"widths of its hidden layers, e.g. --hidden 256 128 (model.hidden; default "
                             f"{' '.join(map(str, DEFAULT_HIDDEN))} for a model with hidden layers)")


def model_overrides(args) -> list[tuple[str, object]]:
    """The ``[model]`` settings of :func:`add_model_options`' options; none without them (the preset's model)."""
    from fedsim.models import MODELS
    overrides = [] if args.model is None else [("model.name", args.model)]
    if args.hidden is not None:
        overrides.append(("model.hidden", list(args.hidden)))
    elif args.model is not None and MODELS[args.model].hidden_layers:
        overrides.append(("model.hidden", list(DEFAULT_HIDDEN)))
    return overrides


def describe_model(model) -> str:
    """A ``[model]`` table in a few words and a comma, or nothing for the default table (softmax regression)."""
    from fedsim.models import ModelConfig
    if model == ModelConfig():
        return ""
    layers = f" {'-'.join(map(str, model.hidden))} {model.activation}" if model.hidden else ""
    return f"model {model.name}{layers} ({model.init_kind} init), "
