import pandas as pd
import pytest

from src.core.atomic import atomic_path, save_torch, write_csv


def test_atomic_path_replaces_only_on_success(tmp_path):
    target = tmp_path / "sub" / "a.csv"
    write_csv(pd.DataFrame({"x": [1]}), target)
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("killed")
    assert pd.read_csv(target)["x"].tolist() == [1]  # the old file is intact
    assert sorted(p.name for p in target.parent.iterdir()) == ["a.csv"]  # and no temporary file is left


def test_suffix_for_writers_that_insist_on_one(tmp_path):
    import numpy as np

    with atomic_path(tmp_path / "a.npy", ".npy") as tmp:
        np.save(tmp, np.arange(3))  # np.save would append .npy to a name without it
    assert np.load(tmp_path / "a.npy").tolist() == [0, 1, 2]
    save_torch({"k": 1}, tmp_path / "c.pt")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.npy", "c.pt"]


def test_remove_orphans_takes_only_temporary_files(tmp_path):
    from src.core.atomic import remove_orphans, temp_path

    keep = tmp_path / "last.pt"
    keep.write_bytes(b"x")
    orphan = temp_path(keep)
    orphan.write_bytes(b"half")
    assert remove_orphans(tmp_path) == [orphan] and sorted(p.name for p in tmp_path.iterdir()) == ["last.pt"]


def test_every_file_write_goes_through_the_atomic_helper():
    """A write call anywhere in the code (src/, the scripts, kaggle/) either lives in atomic.py or writes the
    temporary path of an atomic_path block (`tmp`), so no kill ever leaves a half-written file behind."""
    import re
    from pathlib import Path

    repo = Path(__file__).resolve().parents[2]
    writes = re.compile(r"\.to_csv\(|\.to_json\(|\.to_parquet\(|\.write_text\(|\.write_bytes\(|np\.save\(|np\.savez|"
                        r"\.savefig\(|\.save_as\(|json\.dump\(|torch\.save\(|shutil\.copy|open\([^)]*['\"][wax]b?\+?['\"]")
    files = [*(repo / "src").rglob("*.py"), *repo.glob("*.py"), *(repo / "kaggle").glob("*.py")]
    found = []
    for path in files:
        if path.name == "atomic.py":
            continue
        lines = path.read_text().splitlines()
        for i, line in enumerate(lines):
            code = line.split("#")[0]
            if not writes.search(code) or code.strip().startswith(('"', "'")):  # code, not a docstring
                continue
            call = line + (lines[i + 1] if i + 1 < len(lines) else "")
            target = re.search(r"\(\s*(\w+)(\s*=)?", call[writes.search(line).start():])
            to_string = target is not None and target.group(2) is not None  # frame.to_json(indent=1): no file
            descriptor = target is not None and target.group(1).isdigit()  # open(1, "w"): a stream, not a file
            if not to_string and not descriptor and (target is None or target.group(1) != "tmp"):
                found.append(f"{path.relative_to(repo)}:{i + 1}: {line.strip()}")
    assert not found, "writes outside src/atomic.py:\n" + "\n".join(found)


def test_cache_lock_makes_a_second_builder_wait(tmp_path):
    """While one process holds a cache file's lock, another cannot take it (it waits for the file instead)."""
    import subprocess
    import sys

    from src.core.atomic import cache_lock

    target = tmp_path / "sub" / "crops.npy"
    probe = ("import sys; from filelock import FileLock, Timeout\ntry:\n    FileLock(sys.argv[1] + '.lock').acquire(timeout=0.1)"
             "\n    print('taken')\nexcept Timeout:\n    print('busy')")
    with cache_lock(target):
        held = subprocess.run([sys.executable, "-c", probe, str(target)], capture_output=True, text=True).stdout.strip()
    free = subprocess.run([sys.executable, "-c", probe, str(target)], capture_output=True, text=True).stdout.strip()
    assert (held, free) == ("busy", "taken")
