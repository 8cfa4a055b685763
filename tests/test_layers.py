"""The layers of src/ (pyproject.toml's import-linter contracts) hold, and the check catches an upward import."""
from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
LINT = Path(sys.executable).parent / "lint-imports"


def _lint(root: Path) -> subprocess.CompletedProcess:
    return subprocess.run([str(LINT), "--no-cache"], cwd=root, capture_output=True, text=True,
                          env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(root)}, timeout=120)


@pytest.fixture()
def tree(tmp_path) -> Path:
    """A copy of src/ and pyproject.toml, to break."""
    if not LINT.is_file():
        pytest.skip(f"{LINT}: import-linter is not installed (make install)")
    shutil.copytree(REPO / "src", tmp_path / "src", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(REPO / "pyproject.toml", tmp_path / "pyproject.toml")
    return tmp_path


def test_the_layers_hold(tree):
    done = _lint(tree)
    assert done.returncode == 0, done.stdout[-2000:]
    assert "Contracts: 2 kept, 0 broken." in done.stdout


@pytest.mark.parametrize("module, upward", [
    ("core/constants.py", "from ..inference import pipeline"),  # the core imports a stage
    ("localizer/plan.py", "from ..classifier import crops"),  # a stage imports a later one
    ("training/engine.py", "from ..classifier import models"),  # the train loop knows a concrete model
])
def test_an_upward_import_breaks_the_check(tree, module, upward):
    path = tree / "src" / module
    path.write_text(path.read_text() + f"\n{upward}  # noqa\n")
    done = _lint(tree)
    assert done.returncode == 1
    assert "BROKEN" in done.stdout
    importer = "src." + module.removesuffix(".py").replace("/", ".")
    assert importer in done.stdout
