"""What every script shares: one argument parser style, the common flags, clear one-line errors.

The same flag means the same kind of value in every script: `--data-dir DIR`, `--runs DIR`, `--cache-dir DIR`,
`--folds PATH` (a folds.csv), `--fold-ids 0 1` (fold numbers), `--out FILE`, `--out-dir DIR`, `--workers N`.
`--help` shows every default.
"""
from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path
from typing import Any, Callable

from .faults import InputError
from .parallel import default_workers
from .paths import SYNTH_DIR, folds_file_for, runs_dir_for

# Errors that describe bad input (naming the file) rather than a bug: printed as one line, no traceback.
INPUT_ERRORS = (InputError, OSError)


class _Formatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """The script's docstring as written, and every flag's default once: not for on/off switches, flags
    without a default, or help that already says what the default is."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if action.default in (None, False, argparse.SUPPRESS) or "default" in text:
            return text
        return super()._get_help_string(action)


def parser(doc: str | None, epilog: str | None = None, prog: str | None = None) -> argparse.ArgumentParser:
    """An ArgumentParser for a script: its docstring as the description, defaults shown, and --debug.
    prog: how the usage line names the command (default: the script's file name)."""
    ap = argparse.ArgumentParser(prog=prog, description=doc, epilog=epilog, formatter_class=_Formatter)
    ap.add_argument("--debug", action="store_true", help="show the full traceback of an error")
    return ap


def add_data_dir(ap: argparse.ArgumentParser, default: Path | None = SYNTH_DIR) -> None:
    ap.add_argument("--data-dir", type=Path, default=default, help="the competition-format data folder")


def add_runs(ap: argparse.ArgumentParser, default: Path | None = None) -> None:
    ap.add_argument("--runs", type=Path, default=default,
                    help="the runs folder ({name}/fold{N}/ inside it); default: runs/<data-dir name>")


def add_cache_dir(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--cache-dir", type=Path, default=None,
                    help="the preprocessing cache (writable); default: input/cache/<data-dir name>-<path hash>")


def add_folds(ap: argparse.ArgumentParser, default: Path | None = None) -> None:
    ap.add_argument("--folds", type=Path, default=default,
                    help="the folds file (study_id, fold); default: folds/<data-dir name>/folds.csv")


def dataset_defaults(a: argparse.Namespace) -> argparse.Namespace:
    """Parsed flags with the per-dataset defaults of those left unset: --runs runs/<data-dir name>, --folds
    folds/<data-dir name>/folds.csv (paths.py), so one dataset's runs never mix with another's."""
    if getattr(a, "data_dir", None) is not None:
        if getattr(a, "runs", False) is None:
            a.runs = runs_dir_for(a.data_dir)
        if getattr(a, "folds", False) is None:
            a.folds = folds_file_for(a.data_dir)
    return a


def add_fold_ids(ap: argparse.ArgumentParser, help: str) -> None:
    ap.add_argument("--fold-ids", type=int, nargs="+", default=None, metavar="N", help=help)


def add_workers(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--workers", type=int, default=default_workers(), help="worker processes (the usable CPUs)")


def _one_line_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """A warning as one line `script: message` (no source line; --debug keeps Python's own format)."""
    print(f"{Path(sys.argv[0]).name}: {str(message).strip()}", file=file or sys.stderr, flush=True)


def guard(main: Callable[[list[str] | None], Any], argv: list[str] | None = None) -> int:
    """Run a script's main: bad input ends in one line `script: what is wrong` and exit code 2 (with --debug,
    the traceback); an int that main returns is the exit code, anything else means 0."""
    argv = sys.argv[1:] if argv is None else list(argv)
    shown = warnings.showwarning
    if "--debug" not in argv:
        warnings.showwarning = _one_line_warning
    try:
        result = main(argv)
    except INPUT_ERRORS as err:
        if "--debug" in argv:
            raise
        print(f"{Path(sys.argv[0]).name}: {err}", file=sys.stderr)
        return 2
    finally:
        warnings.showwarning = shown
    return result if isinstance(result, int) and not isinstance(result, bool) else 0
