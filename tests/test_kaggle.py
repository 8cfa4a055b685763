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


def _wheel(folder, name: str, version: str) -> None:
    """A minimal pure-Python wheel of package `name` (importable as `name`), for the test's own Python."""
    import base64
    import hashlib
    import zipfile

    files = {f"{name}/__init__.py": f"VERSION = {version!r}\n",
             f"{name}-{version}.dist-info/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n",
             f"{name}-{version}.dist-info/WHEEL": "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n"}

    def digest(text: str) -> str:
        return base64.urlsafe_b64encode(hashlib.sha256(text.encode()).digest()).rstrip(b"=").decode()

    record = "".join(f"{path},sha256={digest(text)},{len(text.encode())}\n" for path, text in files.items())
    files[f"{name}-{version}.dist-info/RECORD"] = record + f"{name}-{version}.dist-info/RECORD,,\n"
    with zipfile.ZipFile(folder / f"{name}-{version}-py3-none-any.whl", "w") as z:
        for path, text in files.items():
            z.writestr(path, text)


def _tree_state(root) -> dict:
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(root.rglob("*"))}


@pytest.mark.filterwarnings("ignore")
def test_notebook_runs_against_a_kaggle_like_input_folder(synth_dir, tmp_path, monkeypatch, capsys):
    """The notebook's code cells, in order, against a local copy of the /kaggle/input layout: the competition
    files, the code-and-weights dataset and a wheels dataset built for this Python. The wheel cell installs
    only what is missing (pip's target redirected into the test folder), the cache goes to RSNA_CACHE,
    progress is streamed, every row of sample_submission is written and nothing under the input changes."""
    kaggle_input = tmp_path / "input"
    competition = kaggle_input / "rsna-2024-lumbar-spine-degenerative-classification"
    competition.mkdir(parents=True)
    for name in ("test_series_descriptions.csv", "sample_submission.csv", "train.csv"):
        shutil.copy(synth_dir / name, competition / name)
    shutil.copytree(synth_dir / "test_images", competition / "test_images")
    code = kaggle_input / "rsna2024-lumbar-code-weights"
    meta.package(make_fake_runs(tmp_path / "runs"), code)
    wheels = kaggle_input / "rsna2024-lumbar-wheels"
    wheels.mkdir()
    _wheel(wheels, "rsna_notebook_probe", "1.0")  # missing here: must be installed
    _wheel(wheels, "pydicom", "0.0.1")  # already installed: must be left alone
    before = _tree_state(kaggle_input)
    working, cache, site = tmp_path / "working", tmp_path / "cache", tmp_path / "site"
    working.mkdir()
    monkeypatch.setenv("KAGGLE_INPUT", str(kaggle_input))
    monkeypatch.setenv("KAGGLE_WORKING", str(working))
    monkeypatch.setenv("RSNA_CACHE", str(cache))
    monkeypatch.setenv("PIP_TARGET", str(site))  # pip installs here instead of into the test's environment
    monkeypatch.setenv("PIP_NO_INDEX", "1")  # no internet
    notebook = json.loads((REPO / "notebooks" / "kaggle_inference.ipynb").read_text())
    namespace: dict = {}
    for cell in notebook["cells"]:
        if cell["cell_type"] == "code":
            source = "".join(cell["source"])
            assert not any(line.lstrip().startswith(("!", "%")) for line in source.splitlines())
            exec(compile(source, "kaggle_inference.ipynb", "exec"), namespace)
    printed = capsys.readouterr().out
    assert (site / "rsna_notebook_probe" / "__init__.py").is_file()
    assert not (site / "pydicom").exists() and "pydicom 3.0.2: already installed, kept" in printed
    assert "localize" in printed and "wrote" in printed  # infer.py's progress came through the cell
    sub = pd.read_csv(working / "submission.csv")
    sample = pd.read_csv(competition / "sample_submission.csv")
    assert sub["row_id"].tolist() == sample["row_id"].tolist()
    assert os.environ["NO_ALBUMENTATIONS_UPDATE"] == "1"
    assert any(cache.rglob("*")) and not (working / "cache").exists()  # the cache lives outside the output
    assert _tree_state(kaggle_input) == before


def test_package_refuses_runs_of_another_dataset(tmp_path):
    runs = make_fake_runs(tmp_path / "runs")  # trained (by config) on the default synthetic data
    assert set(meta.run_datasets(runs).values()) == {"synth"}
    assert meta.package(runs, tmp_path / "ok", dataset="synth")
    with pytest.raises(SystemExit, match="runs were trained on another dataset than 'rsna-2024"):
        meta.package(runs, tmp_path / "refused", dataset="rsna-2024-lumbar-spine-degenerative-classification")
    assert not (tmp_path / "refused").exists()
    with pytest.raises(SystemExit, match="nothing to package"):
        meta.main(["package", "--runs", str(tmp_path / "empty"), str(tmp_path / "out")])
