"""Several of this folder's scripts in one Python process, one after the other:
python run_steps.py SCRIPT.py ARGS... [--then SCRIPT.py ARGS...]...

What `make pipeline` runs after the trainings (the fold's localization report, the final stage, inference, the
reports): torch and timm are imported once instead of once a script (about 5 s of CPU each on 2 cores). Each
step is the script's own main with its own command line, so its messages and one-line errors name it; the
first step that exits non-zero ends the run with its exit code, as make would. Every step is checked to be
one of this folder's scripts before the first one runs.
"""
from __future__ import annotations

import functools
import importlib.util
import sys
from pathlib import Path
from types import ModuleType

from src.core import cli
from src.core.faults import InputError

HERE = Path(__file__).resolve().parent
THEN = "--then"


class StepError(InputError, ValueError):
    """A step that is not one of this folder's scripts."""


def split_steps(argv: list[str]) -> list[tuple[Path, list[str]]]:
    """['a.py', '--x', '1', '--then', 'b.py'] -> [(HERE/a.py, ['--x', '1']), (HERE/b.py, [])]; StepError for an
    empty step or a script that is not here."""
    steps, current = [], []
    for arg in [*argv, THEN]:
        if arg != THEN:
            current.append(arg)
            continue
        if not current:
            raise StepError(f"an empty step (each {THEN} must be followed by a script)")
        script = HERE / current[0]
        if Path(current[0]).name != current[0] or script.suffix != ".py" or not script.is_file() \
                or script.name == Path(__file__).name:
            raise StepError(f"{current[0]!r} is not one of the scripts in {HERE}")
        steps.append((script, current[1:]))
        current = []
    return steps


@functools.cache  # a script run twice (the two localization reports) is executed once
def _module(script: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"_step_{script.stem}", script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__)
        return 0
    own = sys.argv
    try:
        for script, args in split_steps(argv):
            sys.argv = [str(script), *args]  # so the step's messages name it
            code = cli.guard(_module(script).main, args)
            if code:
                return code
    finally:
        sys.argv = own
    return 0


if __name__ == "__main__":
    sys.exit(cli.guard(main))
