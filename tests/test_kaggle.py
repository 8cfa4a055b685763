import json
import os
import shutil

import pandas as pd
import pytest

from conftest import REPO, make_fake_runs


def _load_meta():
    """kaggle/meta.py as a module (it is a script beside the Kaggle files, not part of src/)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("kaggle_packaging", REPO / "kaggle" / "meta.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


meta = _load_meta()
copy_runs, fill = meta.copy_runs, meta.fill


def test_metadata_parses_and_stays_offline(tmp_path):
    kernel = json.loads((REPO / "kaggle" / "kernel-metadata.json").read_text())
    assert kernel["enable_internet"] == "false" and kernel["enable_gpu"] == "true"
    assert kernel["competition_sources"] == ["rsna-2024-lumbar-spine-degenerative-classification"]
    assert kernel["code_file"] == "kaggle_inference.ipynb" and kernel["kernel_type"] == "notebook"
    for name in ("dataset-metadata.json", "wheels-metadata.json"):
        meta = json.loads((REPO / "kaggle" / name).read_text())
        assert meta["id"].startswith("KAGGLE_USERNAME/") and meta["licenses"]
    filled = fill(REPO / "kaggle" / "kernel-metadata.json", tmp_path / "k.json", "alice")
    assert filled["id"] == "alice/rsna2024-lumbar-inference"
    assert all(s.startswith("alice/") for s in filled["dataset_sources"])


def test_copy_runs_takes_only_what_inference_needs(tmp_path):
    run = tmp_path / "runs" / "cnn_lstm" / "fold3"
    run.mkdir(parents=True)
    for name in ("config.yaml", "best.pt", "last.pt", "oof.csv", "log.csv"):
        (run / name).write_text("x")
    (tmp_path / "runs" / "ensemble.json").write_text("{}")
    copied = copy_runs(tmp_path / "runs", tmp_path / "out")
    assert sorted(p.relative_to(tmp_path / "out").as_posix() for p in copied) == [
        "cnn_lstm/fold3/best.pt", "cnn_lstm/fold3/config.yaml", "ensemble.json"]


def test_package_ships_only_what_inference_imports(tmp_path):
    closure = {p.relative_to(REPO).as_posix() for p in meta.code_closure([REPO / "infer.py", REPO / "localize.py"])}
    assert {"src/__init__.py", "src/pipeline.py", "src/localizer/__init__.py", "src/localizer/infer.py",
            "src/localizer/plan.py", "src/run_folders.py", "src/dicom.py", "src/classify.py"} <= closure
    # Training, data generation, folds and evaluation never ship.
    assert not closure & {"src/synth.py", "src/engine.py", "src/tasks.py", "src/folds.py", "src/evaluation.py",
                          "src/localizer/task.py", "kaggle/meta.py"}
    written = meta.package(make_fake_runs(tmp_path / "runs"), tmp_path / "out")
    names = {p.relative_to(tmp_path / "out").as_posix() for p in written}
    assert {"infer.py", "localize.py", "requirements.txt", "runs/attn_resnext/fold0/best.pt"} <= names
    assert closure <= names


@pytest.mark.filterwarnings("ignore")
def test_notebook_runs_against_a_kaggle_like_input_folder(synth_dir, tmp_path, monkeypatch):
    """The notebook's code cells, run with KAGGLE_INPUT pointing at a local copy of the /kaggle/input layout."""
    kaggle_input = tmp_path / "input"
    competition = kaggle_input / "rsna-2024-lumbar-spine-degenerative-classification"
    competition.mkdir(parents=True)
    for name in ("test_series_descriptions.csv", "sample_submission.csv", "train.csv"):
        shutil.copy(synth_dir / name, competition / name)
    shutil.copytree(synth_dir / "test_images", competition / "test_images")
    code = kaggle_input / "rsna2024-lumbar-code-weights"
    meta.package(make_fake_runs(tmp_path / "runs"), code)
    working = tmp_path / "working"
    working.mkdir()
    monkeypatch.setenv("KAGGLE_INPUT", str(kaggle_input))
    monkeypatch.setenv("KAGGLE_WORKING", str(working))
    notebook = json.loads((REPO / "notebooks" / "kaggle_inference.ipynb").read_text())
    namespace: dict = {}
    for cell in notebook["cells"]:
        if cell["cell_type"] == "code":
            source = "".join(cell["source"])
            assert not any(line.lstrip().startswith(("!", "%")) for line in source.splitlines())
            exec(compile(source, "kaggle_inference.ipynb", "exec"), namespace)
    sub = pd.read_csv(working / "submission.csv")
    sample = pd.read_csv(competition / "sample_submission.csv")
    assert sub["row_id"].tolist() == sample["row_id"].tolist()
    assert os.environ["NO_ALBUMENTATIONS_UPDATE"] == "1"
