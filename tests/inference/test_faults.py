"""The corruption suite: each fault is built on the tiny generated test split, then infer.py --strict runs with
one shared set of (random-weight) runs. Every row must be written, only the faulty unit's rows may change
against the clean run, the summary must name the fault, and the exit code must be the documented one."""
import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import pydicom
import pytest
from conftest import make_fake_runs

import infer as infer_script
from infer import WRITTEN_BUT_EXTRA_FAILED_EXIT
from src.core.constants import TARGETS
from src.core.faults import MODEL_DROPPED_EXIT
from src.core.run_folders import run_dir
from src.data.tables import load_row_ids, load_series_descriptions, load_submission
from src.inference.pipeline import coordinates_path, faults_path


@dataclass
class Expect:
    unit: str  # the fault's unit in the summary
    name: str  # a piece of its name
    reason: str  # a piece of what it says
    rows: set[str] = field(default_factory=set)  # rows allowed to differ from the clean run
    code: int = 0  # infer.py --strict's exit code
    block: bool = False  # a folder where the submission's coordinates file goes: a write after the submission fails


def _infer(data: Path, runs: Path, out_dir: Path) -> tuple[pd.DataFrame, int, dict, str]:
    out = out_dir / "submission.csv"
    code = infer_script.main(["--data-dir", str(data), "--runs", str(runs), "--out", str(out), "--strict",
                              "--cache-dir", str(out_dir / "cache"), "--workers", "1"])
    return load_submission(out, strict=False), code, json.loads(faults_path(out).read_text()), str(out)


@pytest.fixture(scope="module")
def clean(synth_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("faults")
    data = root / "data"
    shutil.copytree(synth_dir, data, ignore=shutil.ignore_patterns("train_images"))
    runs = make_fake_runs(root / "runs")
    with pytest.warns(UserWarning):  # the tiny set has its own (generated) rough edges
        sub, code, faults, _ = _infer(data, runs, root / "clean")
    assert code == 0 and not [f for f in faults["faults"] if f["unit"] not in ("repair", "study")]
    return data, runs, sub, faults


def _study(data: Path, k: int = 0) -> int:
    return int(load_series_descriptions(data / "test_series_descriptions.csv")["study_id"].unique()[k])


def _rows(sub: pd.DataFrame, study: int) -> set[str]:
    return set(sub.loc[sub["row_id"].str.startswith(f"{study}_"), "row_id"])


def _series(data: Path, study: int, description: str | None = None) -> Path:
    table = load_series_descriptions(data / "test_series_descriptions.csv")
    table = table[table["study_id"] == study]
    if description:
        table = table[table["series_description"] == description]
    return data / "test_images" / str(study) / str(table["series_id"].iloc[0])


# ---- the faults: each changes data or runs in place and says what may change -----------------------------


def duplicate_series_line(data, runs, clean):
    path = data / "test_series_descriptions.csv"
    lines = path.read_text().splitlines()
    path.write_text("\n".join([*lines, lines[1]]) + "\n")
    return Expect("repair", f"study {lines[1].split(',')[0]}", "repeats series")


def corrupt_fold(data, runs, clean):
    shutil.copytree(run_dir(runs, "attn_resnext", 0), run_dir(runs, "attn_resnext", 1))
    (run_dir(runs, "attn_resnext", 1) / "best.pt").write_bytes(b"not a checkpoint")
    return Expect("fold", "attn_resnext fold 1", "dropped", code=MODEL_DROPPED_EXIT)


def corrupt_member(data, runs, clean):
    (run_dir(runs, "cnn_lstm", 0) / "best.pt").write_bytes(b"")
    return Expect("member", "cnn_lstm", "every fold failed", rows=set(clean[2]["row_id"]), code=MODEL_DROPPED_EXIT)


def corrupt_axial_localizer(data, runs, clean):
    (run_dir(runs, "localizer_axial", 0) / "best.pt").write_bytes(b"\x00" * 64)
    sub = clean[2]
    subarticular = set(sub.loc[sub["row_id"].str.contains("subarticular"), "row_id"])
    return Expect("localizer", "localizer_axial", "no loadable fold", subarticular, MODEL_DROPPED_EXIT)


def header_only_series_csv(data, runs, clean):
    path = data / "test_series_descriptions.csv"
    path.write_text(path.read_text().splitlines()[0] + "\n")
    return Expect("models", "classifiers", "no classifier", set(clean[2]["row_id"]), MODEL_DROPPED_EXIT)


def no_runs(data, runs, clean):
    shutil.rmtree(runs)
    runs.mkdir()
    return Expect("models", "classifiers", "no classifier", set(clean[2]["row_id"]), MODEL_DROPPED_EXIT)


def bad_ensemble_member(data, runs, clean):
    (runs / "ensemble.json").write_text(json.dumps({"weights": {"attn_resnext": 0.5, "cnn_lstm": 0.5,
                                                                "../runs_alt/x": 0.3}, "temperature": {}}))
    return Expect("member", "../runs_alt/x", "not a run folder", code=MODEL_DROPPED_EXIT)


def duplicate_instance_numbers(data, runs, clean):
    study = _study(data, 1)
    files = sorted(_series(data, study, "Sagittal T2/STIR").glob("*.dcm"))[:2]
    number = pydicom.dcmread(files[0]).InstanceNumber
    ds = pydicom.dcmread(files[1])
    ds.InstanceNumber = number
    ds.save_as(files[1])
    return Expect("repair", f"study {study}", "InstanceNumber", _rows(clean[2], study))


def unknown_row_id(data, runs, clean):
    return _extra_sample_row(data, f"{_study(data)}_spinal_canal_stenosis_l9_l9")


def traversal_row_id(data, runs, clean):
    return _extra_sample_row(data, "../../x_spinal_canal_stenosis_l1_l2")


def _extra_sample_row(data, row_id):
    path = data / "sample_submission.csv"
    path.write_text(path.read_text() + f"{row_id},0.333,0.333,0.333\n")
    return Expect("input", row_id, "not a study id and a label column", {row_id})


def _file_fault(write, says):
    def fault(data, runs, clean):
        study = _study(data, 2)
        write(sorted(_series(data, study, "Sagittal T2/STIR").glob("*.dcm"))[1])
        return Expect("repair", f"study {study}", says, _rows(clean[2], study))
    fault.__name__ = write.__name__
    return fault


def truncated(f):
    f.write_bytes(f.read_bytes()[:300])


def zero_byte(f):
    f.write_bytes(b"")


def not_dicom(f):
    f.write_text("this is not a DICOM file")


def missing_geometry(f):
    ds = pydicom.dcmread(f)
    del ds.ImagePositionPatient
    ds.save_as(f)


def other_shape(f):
    ds = pydicom.dcmread(f)
    if ds.file_meta.TransferSyntaxUID.is_compressed:
        ds.decompress()
    small = np.ascontiguousarray(ds.pixel_array[::2, ::2])
    ds.Rows, ds.Columns = small.shape
    ds.PixelData = small.tobytes()
    ds.save_as(f)


def deleted_series(data, runs, clean):
    study = _study(data, 1)
    shutil.rmtree(_series(data, study, "Axial T2"))
    return Expect("study", f"study {study}", "series folder not found", _rows(clean[2], study))


def empty_study(data, runs, clean):
    study = _study(data, 0)
    for folder in (data / "test_images" / str(study)).iterdir():
        shutil.rmtree(folder)
    return Expect("study", f"study {study}", "series folder not found", _rows(clean[2], study))


def study_without_folder(data, runs, clean):
    study = _study(data, 3)
    shutil.rmtree(data / "test_images" / str(study))
    return Expect("study", f"study {study}", "series folder not found", _rows(clean[2], study))


def _subarticular(clean) -> set[str]:
    sub = clean[2]
    return set(sub.loc[sub["row_id"].str.contains("subarticular"), "row_id"])


def broken_localizer_config(data, runs, clean):
    (run_dir(runs, "localizer_axial", 0) / "config.yaml").write_text("loc: [unclosed\n")
    return Expect("fold", "localizer_axial fold 0", "config.yaml: does not read (", _subarticular(clean), MODEL_DROPPED_EXIT)


def broken_classifier_config(data, runs, clean):
    (run_dir(runs, "attn_resnext", 0) / "config.yaml").write_text("- not\n- a mapping\n")
    return Expect("member", "attn_resnext", "config.yaml: not a mapping", set(clean[2]["row_id"]), MODEL_DROPPED_EXIT)


def unknown_key_in_config(data, runs, clean):
    path = run_dir(runs, "cnn_lstm", 0) / "config.yaml"
    path.write_text(path.read_text() + "lrr: 3\n")
    return Expect("member", "cnn_lstm", "unknown config key 'lrr' (did you mean 'lr'?)", set(clean[2]["row_id"]),
                  MODEL_DROPPED_EXIT)


def _ensemble_file(name: str, text: str, says: str):
    def fault(data, runs, clean):  # each bad entry falls back alone: here to the clean run's equal weights
        (runs / "ensemble.json").write_text(text)
        return Expect("ensemble", "ensemble file", says, code=MODEL_DROPPED_EXIT)
    fault.__name__ = f"ensemble_{name}"
    return fault


ENSEMBLE_FAULTS = [
    _ensemble_file("infinite_weight", '{"weights": {"attn_resnext": Infinity, "cnn_lstm": 0.5}}',
                   "weight of 'attn_resnext' is inf"),
    _ensemble_file("negative_weight", '{"weights": {"attn_resnext": -1, "cnn_lstm": 0.5}}', "weight of 'attn_resnext' is -1"),
    _ensemble_file("nan_weight", '{"weights": {"attn_resnext": NaN, "cnn_lstm": 2}}', "weight of 'attn_resnext' is nan"),
    _ensemble_file("negative_temperature", '{"weights": {}, "temperature": {"spinal": -1}}', "temperature of spinal is -1"),
    _ensemble_file("not_json", '{"weights": {"attn_resnext": 0.5', "does not read"),
]


def duplicate_sample_row(data, runs, clean):
    path = data / "sample_submission.csv"
    lines = path.read_text().splitlines()
    path.write_text("\n".join([*lines[:3], lines[1], *lines[3:]]) + "\n")
    return Expect("repair", "sample_submission.csv", "repeats an earlier line; written once")


def collapsed_axial_positions(data, runs, clean):
    study = _study(data, 1)
    files = sorted(_series(data, study, "Axial T2").glob("*.dcm"))
    position = pydicom.dcmread(files[0]).ImagePositionPatient
    for f in files:
        ds = pydicom.dcmread(f)
        ds.ImagePositionPatient = position
        ds.save_as(f)
    return Expect("geometry", f"study {study}", "distinct positions along the normal; ordered by InstanceNumber",
                  _rows(clean[2], study), MODEL_DROPPED_EXIT)


def mixed_pixel_spacing(data, runs, clean):
    study = _study(data, 2)
    f = sorted(_series(data, study, "Sagittal T1").glob("*.dcm"))[1]
    ds = pydicom.dcmread(f)
    ds.PixelSpacing = [float(v) * 1.5 for v in ds.PixelSpacing]
    ds.save_as(f)
    return Expect("geometry", f"study {study}", "PixelSpacing of 1 of", _rows(clean[2], study), MODEL_DROPPED_EXIT)


def extra_file_not_writable(data, runs, clean):
    return Expect("output", "files beside the submission", "Is a directory", code=WRITTEN_BUT_EXTRA_FAILED_EXIT,
                  block=True)


CASES = [duplicate_series_line, corrupt_fold, corrupt_member, corrupt_axial_localizer, header_only_series_csv, no_runs,
         bad_ensemble_member, duplicate_instance_numbers, unknown_row_id, traversal_row_id,
         *(_file_fault(w, "skipped unreadable slice") for w in (truncated, zero_byte, not_dicom, missing_geometry)),
         _file_fault(other_shape, "resized"),
         deleted_series, empty_study, study_without_folder,
         broken_localizer_config, broken_classifier_config, unknown_key_in_config, *ENSEMBLE_FAULTS,
         duplicate_sample_row, collapsed_axial_positions, mixed_pixel_spacing, extra_file_not_writable]


@pytest.mark.filterwarnings("ignore")
@pytest.mark.parametrize("case", CASES, ids=lambda c: c.__name__)
def test_a_fault_degrades_only_its_unit_and_is_named(clean, case, tmp_path):
    data, runs = tmp_path / "data", tmp_path / "runs"
    shutil.copytree(clean[0], data)
    shutil.copytree(clean[1], runs)
    expect = case(data, runs, clean)
    if expect.block:
        coordinates_path(tmp_path / "out" / "submission.csv").mkdir(parents=True)
    sub, code, faults, out = _infer(data, runs, tmp_path / "out")
    assert sub["row_id"].tolist() == load_row_ids(data / "sample_submission.csv")  # every row written, in order
    values = sub[list(TARGETS)].to_numpy()
    assert np.isfinite(values).all() and np.allclose(values.sum(1), 1)
    before = clean[2].set_index("row_id")[list(TARGETS)]
    after = sub.set_index("row_id")[list(TARGETS)]
    common = before.index.intersection(after.index)
    changed = set(common[~np.isclose(before.loc[common].to_numpy(), after.loc[common].to_numpy(), atol=1e-6).all(1)])
    assert changed <= expect.rows, sorted(changed - expect.rows)[:5]
    assert any(f["unit"] == expect.unit and expect.name in f["name"] and expect.reason in f["reason"]
               for f in faults["faults"]), faults["faults"]
    assert code == expect.code
    assert faults["model_dropped"] == (expect.code == MODEL_DROPPED_EXIT)
