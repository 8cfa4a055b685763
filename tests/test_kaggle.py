import json
import os
import shutil
from pathlib import Path

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
    assert {"src/__init__.py", "src/inference/pipeline.py", "src/localizer/__init__.py", "src/localizer/infer.py",
            "src/localizer/plan.py", "src/core/run_folders.py", "src/data/dicom.py", "src/inference/classify.py",
            "src/registry.py", "src/classifier/models.py", "src/localizer/net.py"} <= closure
    # Training, data generation, folds and evaluation reports never ship.
    assert not closure & {"src/training/engine.py", "src/classifier/task.py", "src/data/folds.py", "src/tasks.py",
                          "src/evaluation/reports.py", "src/localizer/task.py", "kaggle/meta.py"}
    assert not [p for p in closure if p.startswith("src/synth/")]
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
             f"{name}-{version}.dist-info/WHEEL":
                 "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n"}

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
    _wheel(wheels, "pydicom", "0.0.1")  # installed at a good enough version: must be left alone
    _wheel(wheels, "rsna_old_probe", "2.0")  # installed at 1.0, older than the minimum: must be replaced
    old_site = tmp_path / "old_site"
    old_site.mkdir()
    _wheel(old_site, "rsna_old_probe", "1.0")
    import zipfile

    zipfile.ZipFile(old_site / "rsna_old_probe-1.0-py3-none-any.whl").extractall(old_site)
    monkeypatch.syspath_prepend(str(old_site))
    versions = code / "src" / "versions.py"  # the shipped table of minimums, with the probe's minimum added
    versions.write_text(versions.read_text() + '\nMINIMUM_VERSIONS["rsna-old-probe"] = "1.5"\n')
    before = _tree_state(kaggle_input)
    working, cache, site = tmp_path / "working", tmp_path / "cache", tmp_path / "site"
    working.mkdir()
    monkeypatch.setenv("KAGGLE_INPUT", str(kaggle_input))
    monkeypatch.setenv("KAGGLE_WORKING", str(working))
    monkeypatch.setenv("RSNA_CACHE", str(cache))
    monkeypatch.setenv("PIP_TARGET", str(site))  # pip installs here instead of into the test's environment
    monkeypatch.setenv("PYTHONPATH", str(site))  # and infer.py, a subprocess, finds it there
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
    assert not (site / "pydicom").exists() and "pydicom 3.0.2: kept (installed, needs >= 3.0)" in printed
    assert "rsna-old-probe 2.0: installed (1.0 is older than the 1.5 src/ needs)" in printed
    assert (site / "rsna_old_probe-2.0.dist-info").is_dir()
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


def _fake_kaggle(folder, status_output: str, status_code: int):
    """A `kaggle` executable that logs its arguments, answers `datasets status` as told, and behaves like kaggle
    1.7.4.5 on `datasets create` for a dataset that exists: prints the error and exits 0."""
    exe = folder / "kaggle"
    log = folder / "calls.txt"
    exe.write_text(f"""#!/bin/sh
echo "$*" >> {log}
case "$1 $2" in
  "datasets status") echo "{status_output}"; exit {status_code};;
  "datasets create") echo "Dataset creation error: The requested title is already in use"; exit 0;;
  "datasets version") echo "Dataset version is being created. Please check progress at https://x"; exit 0;;
esac
exit 0
""")
    exe.chmod(0o755)
    return exe, log


def _dataset_folder(tmp_path, user="alice"):
    folder = tmp_path / "ds"
    folder.mkdir()
    fill(REPO / "kaggle" / "dataset-metadata.json", folder / "dataset-metadata.json", user)
    return folder


@pytest.mark.parametrize("status_output, status_code, calls", [
    ("404 Client Error: Not Found", 1, ["datasets status", "datasets create", "datasets version"]),  # asked wrong
    ("ready", 0, ["datasets status", "datasets version"]),  # Kaggle has it: the payload is sent once
])
def test_upload_versions_a_dataset_that_exists(tmp_path, status_output, status_code, calls, capsys):
    exe, log = _fake_kaggle(tmp_path, status_output, status_code)
    assert meta.upload(_dataset_folder(tmp_path), "new weights", str(exe)) == "versioned"
    made = log.read_text().splitlines()
    assert [" ".join(c.split()[:2]) for c in made] == calls
    assert "-m new weights" in made[-1] and "alice/rsna2024-lumbar-code-weights" in made[0]


def test_make_kaggle_upload_makes_a_new_version(tmp_path):
    """The Makefile target itself, against the fake CLI (wheels and dataset built beforehand: -o)."""
    import subprocess
    import sys

    exe, log = _fake_kaggle(tmp_path, "404 Client Error: Not Found", 1)
    build = tmp_path / "build"
    for sub, template in (("wheels", "wheels-metadata.json"), ("kaggle_dataset", "dataset-metadata.json")):
        (build / sub).mkdir(parents=True)
        shutil.copy(REPO / "kaggle" / template, build / sub / "dataset-metadata.json")
    env = {**os.environ, "KAGGLE_USERNAME": "alice", "KAGGLE_KEY": "k"}
    done = subprocess.run(["make", "-o", "kaggle-wheels", "-o", "kaggle-dataset", "-o", "install", "kaggle-upload",
                           f"KAGGLE={exe}", f"BUILD={build}", f"PY={sys.executable}"], cwd=REPO, env=env,
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
    made = log.read_text().splitlines()
    assert sum(c.startswith("datasets version") for c in made) == 2
    assert "alice/rsna2024-lumbar-wheels: versioned" in done.stdout
    # An upload error stops make, whatever the CLI's exit code.
    exe.write_text("#!/bin/sh\necho 'Dataset version creation error: See previous output'\nexit 0\n")
    done = subprocess.run(["make", "-o", "kaggle-wheels", "-o", "kaggle-dataset", "-o", "install", "kaggle-upload",
                           f"KAGGLE={exe}", f"BUILD={build}", f"PY={sys.executable}"], cwd=REPO, env=env,
                          capture_output=True, text=True)
    assert done.returncode != 0 and "failed: Dataset version creation error" in done.stderr


def test_credentials_follow_kaggle_config_dir(tmp_path, monkeypatch):
    monkeypatch.delenv("KAGGLE_USERNAME", raising=False)
    monkeypatch.delenv("KAGGLE_KEY", raising=False)
    monkeypatch.setenv("KAGGLE_CONFIG_DIR", str(tmp_path / "cfg"))
    with pytest.raises(SystemExit, match=f"put kaggle.json in {tmp_path / 'cfg'}"):
        meta.check_credentials()
    (tmp_path / "cfg").mkdir()
    (tmp_path / "cfg" / "kaggle.json").write_text('{"username": "bob", "key": "k"}')
    meta.check_credentials()
    assert meta.kaggle_username() == "bob"
    with pytest.raises(SystemExit, match="placeholder"):
        meta.upload(_dataset_folder(tmp_path, "KAGGLE_USERNAME"), "x", "false")


def test_wheels_need_no_credentials():
    """kaggle-wheels downloads only: it neither depends on kaggle-check nor fills the user name."""
    import re

    text = (REPO / "Makefile").read_text()
    rule = re.search(r"^kaggle-wheels:(.*)\n((?:\t.*\n)+)", text, re.M)
    assert "kaggle-check" not in rule.group(1) and "meta.py fill" not in rule.group(2)


def _makefile_value(name: str) -> str:
    import re

    return re.search(rf"^{name} \?= (\S+)", (REPO / "Makefile").read_text(), re.M).group(1)


def test_real_kaggle_wheels_install_together(tmp_path):
    """`make kaggle-wheels` (PyPI) installed into a fresh venv of this Python, when it is Kaggle's Python."""
    import subprocess
    import sys

    kaggle_python = _makefile_value("KAGGLE_PYTHON")
    here = f"{sys.version_info.major}.{sys.version_info.minor}"
    if here != kaggle_python:
        pytest.skip(f"this is Python {here}; the wheels are built for Kaggle's Python {kaggle_python} (Makefile KAGGLE_PYTHON)")
    build = tmp_path / "build"
    done = subprocess.run(["make", "-o", "install", "kaggle-wheels", f"BUILD={build}",
                           f"VENV={Path(sys.executable).parent.parent}"], cwd=REPO, capture_output=True, text=True)
    if done.returncode != 0 and "Could not find" in done.stderr + done.stdout:
        pytest.skip("no package index reachable for the wheels")
    assert done.returncode == 0, done.stderr[-2000:]
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    py = venv / "bin" / "python"
    wheels = sorted(str(w) for w in (build / "wheels").glob("*.whl"))
    subprocess.run([str(py), "-m", "pip", "install", "--no-index", "--no-deps", "--quiet", *wheels], check=True)
    pins = [line.split("==") for line in (REPO / "kaggle" / "requirements-kaggle.txt").read_text().splitlines()
            if "==" in line and not line.startswith("#")]
    check = "import importlib.metadata as m, sys; print(' '.join(m.version(n) for n in sys.argv[1:]))"
    got = subprocess.run([str(py), "-c", check, *[n for n, _ in pins]], capture_output=True, text=True, check=True)
    assert got.stdout.split() == [v for _, v in pins]
    subprocess.run([str(py), "-c", "import pydicom, pylibjpeg, yaml; from pydicom.pixels import apply_rescale"], check=True)


@pytest.mark.parametrize("code, written", [(0, True), (3, True), (4, True), (1, False), (2, False)])
def test_the_notebook_goes_on_after_every_exit_code_that_wrote_the_submission(tmp_path, capsys, code, written):
    """The notebook's inference cell, with infer.py replaced by a program that exits `code`: 0, 3 and 4 wrote
    submission.csv (the cell goes on to the row check), 1 and 2 did not (the cell stops)."""
    import subprocess
    import sys

    notebook = json.loads((REPO / "notebooks" / "kaggle_inference.ipynb").read_text())
    cell = next("".join(c["source"]) for c in notebook["cells"] if "infer.py" in "".join(c["source"])
                and "subprocess.Popen" in "".join(c["source"]))
    (tmp_path / "infer.py").write_text(f"import sys\nprint('summary: 2 degradation(s)')\nsys.exit({code})\n")
    namespace = {"sys": sys, "os": os, "subprocess": subprocess, "CODE": tmp_path, "COMPETITION": tmp_path,
                 "WORKING": tmp_path, "CACHE": tmp_path / "cache"}
    if written:
        exec(compile(cell, "kaggle_inference.ipynb", "exec"), namespace)
        printed = capsys.readouterr().out
        assert "summary: 2 degradation(s)" in printed and f"infer.py exited {code}: " in printed
    else:
        with pytest.raises(RuntimeError, match=f"infer.py exited {code}: no submission written"):
            exec(compile(cell, "kaggle_inference.ipynb", "exec"), namespace)


def test_unzip_check_counts_what_is_still_to_unpack_against_the_free_disk(tmp_path, monkeypatch):
    import shutil
    import zipfile

    archive = tmp_path / "c.zip"
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("train_images/1/2/3.dcm", b"\0" * 5000)
        z.writestr("train.csv", b"study_id\n" * 100)
    dest = tmp_path / "data"
    assert "2 files, 0.0 GB still to unpack" in meta.unzip_check(archive, dest)
    usage = shutil.disk_usage(tmp_path)
    monkeypatch.setattr(shutil, "disk_usage", lambda p: usage._replace(free=4000))
    with pytest.raises(SystemExit, match="not enough room; free 0.0 GB more"):
        meta.unzip_check(archive, dest)
    with zipfile.ZipFile(archive) as z:
        z.extract("train_images/1/2/3.dcm", dest)  # half unpacked already: only the rest is needed
    assert "0.0 GB still to unpack" in meta.unzip_check(archive, dest)
    (tmp_path / "bad.zip").write_bytes(b"not a zip")
    with pytest.raises(SystemExit, match="not a readable zip archive"):
        meta.unzip_check(tmp_path / "bad.zip", dest)
