import pandas as pd
import pytest

from src.atomic import atomic_path, save_torch, write_csv


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
    from src.atomic import remove_orphans, temp_path

    keep = tmp_path / "last.pt"
    keep.write_bytes(b"x")
    orphan = temp_path(keep)
    orphan.write_bytes(b"half")
    assert remove_orphans(tmp_path) == [orphan] and sorted(p.name for p in tmp_path.iterdir()) == ["last.pt"]
