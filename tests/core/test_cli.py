import importlib

import pytest

import make_folds as make_folds_script
import score as score_script
from src.core.cli import guard
from src.data.tables import DataError

SCRIPTS = ("train.py", "infer.py", "localize.py", "prepare.py", "make_folds.py", "ensemble.py", "evaluate.py",
           "evaluate_localization.py", "score.py", "bench.py")


def test_bad_input_is_one_line_naming_the_file(tmp_path, capsys):
    missing = tmp_path / "nowhere"
    assert guard(make_folds_script.main, ["--data-dir", str(missing), "--out", str(tmp_path / "f.csv")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and str(missing / "train.csv") in err and "file not found" in err
    bad = tmp_path / "solution.csv"
    bad.write_text("row_id,normal_mild\n")
    assert guard(score_script.main, ["--solution", str(bad), "--submission", str(bad)]) == 2
    assert "missing column" in capsys.readouterr().err
    with pytest.raises(DataError):  # --debug shows the traceback instead
        guard(make_folds_script.main, ["--data-dir", str(missing), "--debug"])


def _help(script: str, capsys) -> str:
    module = importlib.import_module(script.removesuffix(".py"))
    with pytest.raises(SystemExit) as done:
        module.main(["--help"])
    assert done.value.code == 0, script
    return " ".join(capsys.readouterr().out.split())


def test_every_script_shows_its_defaults_and_the_shared_flags(capsys):
    for script in SCRIPTS:
        text = _help(script, capsys)
        assert "--debug" in text, script
        if "--data-dir" in text:
            assert "(default: " in text, script
        # Each default once: none for switches or unset flags, none after help that states it already.
        assert "(default: None)" not in text and "(default: False)" not in text, script
        options = text.split("options:")[-1].split(" --")
        assert all(o.count("default") <= 1 for o in options), (script, [o for o in options if o.count("default") > 1])
    text = _help("train.py", capsys)  # every config key with its default, and the recipe flags
    assert "--crop.size_px 128" in text and "--loc.level_weight 0.0" in text and "--print-config" in text
    text = _help("evaluate_localization.py", capsys)
    assert "--fold-ids N" in text and "--folds FOLDS" in text and "--out-dir" not in text
    assert "--out-dir OUT_DIR" in _help("evaluate.py", capsys)


def test_scripts_print_one_line_without_a_traceback(tmp_path):
    import subprocess
    import sys

    from conftest import REPO

    from src.core.constants import LABEL_COLUMNS

    data = tmp_path / "data"
    data.mkdir()
    (data / "train.csv").write_text("study_id," + ",".join(LABEL_COLUMNS) + "\n")  # header only
    for cmd, says in ((["make_folds.py", "--data-dir", str(data), "--out", str(tmp_path / "f.csv")], "no studies"),
                      (["prepare.py", "--data-dir", str(data), "--cache-dir", str(tmp_path / "c")], "file not found"),
                      (["train.py", "--data-dir", str(data), "--preset", "tiny", "--runs", str(tmp_path / "r"),
                        "--folds", str(tmp_path / "f.csv"), "--cache_dir", str(tmp_path / "c")], "file not found")):
        done = subprocess.run([sys.executable, *cmd], cwd=REPO, capture_output=True, text=True, timeout=300)
        assert done.returncode == 2, (cmd[0], done.stderr[-800:])
        lines = [line for line in done.stderr.splitlines() if line.strip() and "Warning" not in line and "warn" not in line]
        assert len(lines) == 1 and lines[0].startswith(f"{cmd[0]}: ") and says in lines[0], (cmd[0], done.stderr[-800:])
        assert "Traceback" not in done.stderr
