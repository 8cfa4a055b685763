import errno
import re

import numpy as np
import pandas as pd
import pytest

import prepare as prepare_script
from src.core.cli import guard
from src.data.cache import load_series, series_cache_path
from src.data.tables import load_series_descriptions

PROGRESS = re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d ")  # progress.py's timestamped lines


def _no_space(*args, **kwargs):
    raise OSError(errno.ENOSPC, "No space left on device")


def test_a_full_disk_during_prepare_is_one_line_and_keeps_the_cache(synth_dir, tmp_path, capsys, monkeypatch):
    cache = tmp_path / "cache"
    args = ["--data-dir", str(synth_dir), "--cache-dir", str(cache), "--split", "test", "--workers", "1"]
    assert guard(prepare_script.main, args) == 0
    table = load_series_descriptions(synth_dir / "test_series_descriptions.csv")
    entries = [series_cache_path(cache, "test", r.study_id, r.series_id) for r in table.itertuples()]
    lost = entries[1]
    lost.unlink()
    monkeypatch.setattr(np, "savez", _no_space)
    capsys.readouterr()
    assert guard(prepare_script.main, args) == 2
    lines = [line for line in capsys.readouterr().err.splitlines() if not PROGRESS.match(line)]
    assert len(lines) == 1 and "No space left on device" in lines[0] and str(lost) in lines[0], lines
    for path in entries:
        if path != lost:
            assert load_series(path).volume.size  # every good entry is still there and reads
    assert not list(cache.rglob(".*.tmp*"))
    monkeypatch.undo()
    assert guard(prepare_script.main, args) == 0 and lost.is_file()  # a rerun with room fills the gap


@pytest.mark.filterwarnings("ignore")
def test_a_full_disk_during_inference_still_writes_every_row(synth_dir, tmp_path, capsys, monkeypatch):
    """The cache cannot be written: the submission is still complete (the prior), infer.py says so in one
    line and exits 3, and the summary names the file."""
    from conftest import make_fake_runs

    import infer as infer_script

    runs = make_fake_runs(tmp_path / "runs")
    out = tmp_path / "sub" / "submission.csv"
    monkeypatch.setattr(np, "savez", _no_space)
    code = guard(infer_script.main, ["--data-dir", str(synth_dir), "--runs", str(runs), "--out", str(out),
                                     "--cache-dir", str(tmp_path / "cache"), "--workers", "1"])
    captured = capsys.readouterr()
    assert code == 3, captured.err
    sample = pd.read_csv(synth_dir / "sample_submission.csv")
    assert pd.read_csv(out)["row_id"].tolist() == sample["row_id"].tolist()
    assert "No space left on device" in captured.out and str(tmp_path / "cache") in captured.out
    assert [line for line in captured.err.splitlines() if line.strip() and not PROGRESS.match(line)] == [
        f"infer.py: {out} holds the training prior in every row: no model under {runs} could be used (see the summary)"]


def test_geometry_alone_reads_the_same_geometry_without_the_pixels(synth_dir, tmp_path):
    from src.data.cache import prepare

    prepare(synth_dir, tmp_path / "cache", "test", workers=1)
    r = load_series_descriptions(synth_dir / "test_series_descriptions.csv").iloc[0]
    path = series_cache_path(tmp_path / "cache", "test", r.study_id, r.series_id)
    full, geometry = load_series(path), load_series(path, pixels=False)
    assert geometry.volume.shape == full.volume.shape and len(geometry) == len(full) and geometry.shape == full.shape
    for name in ("instance_numbers", "positions", "orientations", "spacings"):
        assert np.array_equal(getattr(geometry, name), getattr(full, name)), name
    assert np.allclose(geometry.pixel_to_patient(1, 3.0, 4.0), full.pixel_to_patient(1, 3.0, 4.0))
    assert not geometry.volume.any() and not geometry.volume.flags.writeable and full.volume.any()
