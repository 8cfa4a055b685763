"""Kaggle packaging for the Makefile (never shipped to Kaggle itself):

python kaggle/meta.py check                      exit 1 with what to do when no Kaggle credentials are set
python kaggle/meta.py fill TEMPLATE OUT          metadata JSON with KAGGLE_USERNAME filled in from the
                                                 environment or kaggle.json (in $KAGGLE_CONFIG_DIR, else
                                                 ~/.kaggle, else ~/.config/kaggle, as the kaggle CLI looks)
python kaggle/meta.py username                   the Kaggle user name, found the same way
python kaggle/meta.py upload DIR -m NOTES [--kaggle EXE]
                                                 DIR (with its dataset-metadata.json) as a new dataset, or as a
                                                 new version when Kaggle has it already; stops with one line on
                                                 any upload error
python kaggle/meta.py unzip-check ZIP DEST       exit 1 with one line when DEST's disk has less room than the
                                                 archive unpacks to (read from its table of contents)
python kaggle/meta.py package --runs RUNS [--dataset NAME] OUT
                                                 the code-and-weights dataset: the inference scripts, only the
                                                 src/ modules they import, and each run's config.yaml and
                                                 best.pt plus ensemble.json; refused when a run's config
                                                 names another dataset than NAME (default: the runs folder's
                                                 name, as in runs/<dataset>)
"""
from __future__ import annotations

import argparse
import ast
import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import yaml  # noqa: E402

from src.core.atomic import copy_file, write_text  # noqa: E402
from src.core.run_folders import CONFIG, ENSEMBLE, INFERENCE_FILES  # noqa: E402

SCRIPTS = ("infer.py", "localize.py")  # what the notebook runs


def config_dir() -> Path:
    """Where the kaggle CLI reads kaggle.json: $KAGGLE_CONFIG_DIR, else ~/.kaggle, else (Linux, when ~/.kaggle does
    not exist) $XDG_CONFIG_HOME/kaggle or ~/.config/kaggle."""
    if os.environ.get("KAGGLE_CONFIG_DIR"):
        return Path(os.environ["KAGGLE_CONFIG_DIR"])
    home = Path.home() / ".kaggle"
    if home.exists() or not sys.platform.startswith("linux"):
        return home
    return Path(os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config") / "kaggle"


NO_CREDENTIALS = ("no Kaggle credentials: put kaggle.json in {dir} (Kaggle > Settings > API > Create New Token; "
                  "KAGGLE_CONFIG_DIR picks another folder) or export KAGGLE_USERNAME and KAGGLE_KEY")


def kaggle_username() -> str:
    """The Kaggle user name: KAGGLE_USERNAME, else kaggle.json in config_dir()."""
    if os.environ.get("KAGGLE_USERNAME"):
        return os.environ["KAGGLE_USERNAME"]
    creds = config_dir() / "kaggle.json"
    if creds.is_file():
        try:
            return json.loads(creds.read_text())["username"]
        except (ValueError, KeyError) as err:
            raise SystemExit(f"kaggle/meta.py: {creds}: no user name in it ({type(err).__name__}: {err})") from None
    raise SystemExit("kaggle/meta.py: " + NO_CREDENTIALS.format(dir=config_dir()))


def check_credentials() -> None:
    """SystemExit naming what to do when neither KAGGLE_USERNAME + KAGGLE_KEY nor a kaggle.json is set."""
    if not (os.environ.get("KAGGLE_USERNAME") and os.environ.get("KAGGLE_KEY")) and not (config_dir() / "kaggle.json").is_file():
        raise SystemExit(NO_CREDENTIALS.format(dir=config_dir()))


def _kaggle(exe: str, *args: str) -> tuple[int, str]:
    """Run the kaggle CLI; its exit code and its output (stdout and stderr), printed as it was."""
    done = subprocess.run([exe, *args], capture_output=True, text=True)
    output = (done.stdout or "") + (done.stderr or "")
    if output.strip():
        print(output.rstrip())
    return done.returncode, output


def _error_line(output: str) -> str | None:
    """The first line of the kaggle CLI's output that reports an error (it often exits 0 after one)."""
    for line in output.splitlines():
        low = line.lower()
        if "error" in low or "403" in low or "404" in low or "401" in low or "traceback" in low:
            return line.strip()
    return None


def upload(folder: Path, notes: str, exe: str = "kaggle") -> str:
    """Upload a dataset folder: a new version when Kaggle already has the dataset (asked first with `datasets
    status`, so the payload is sent once), else a new dataset; a creation refused because the name is taken
    falls back to a new version. Returns 'created' or 'versioned'; SystemExit with one line on any error,
    whatever the CLI's exit code (kaggle 1.7 exits 0 after 'Dataset creation error')."""
    meta_file = Path(folder) / "dataset-metadata.json"
    if not meta_file.is_file():
        raise SystemExit(f"kaggle/meta.py: {meta_file}: missing; build the folder first (make kaggle-wheels / kaggle-dataset)")
    dataset = json.loads(meta_file.read_text())["id"]
    if dataset.startswith("KAGGLE_USERNAME/"):
        raise SystemExit(f"kaggle/meta.py: {meta_file}: the user name is still a placeholder; run `kaggle/meta.py fill` first")
    code, output = _kaggle(exe, "datasets", "status", dataset)
    exists = code == 0 and _error_line(output) is None and bool(output.strip())
    done = "versioned"
    if not exists:
        code, output = _kaggle(exe, "datasets", "create", "-p", str(folder), "--dir-mode", "zip", "-q")
        done = "created"
        if "already in use" in output.lower() or "already exists" in output.lower():
            exists = True
    if exists:
        code, output = _kaggle(exe, "datasets", "version", "-p", str(folder), "-m", notes, "--dir-mode", "zip", "-q")
        done = "versioned"
    error = _error_line(output)
    if code != 0 or error:
        raise SystemExit(f"kaggle/meta.py: uploading {folder} as {dataset} failed: {error or f'kaggle exited {code}'}")
    print(f"{dataset}: {done}")
    return done


def fill(template: Path, out: Path, username: str) -> dict:
    meta = json.loads(template.read_text().replace("KAGGLE_USERNAME", username))
    write_text(json.dumps(meta, indent=2) + "\n", out)
    return meta


def _module_file(name: str, repo: Path) -> Path | None:
    base = repo.joinpath(*name.split("."))
    for path in (base.with_suffix(".py"), base / "__init__.py"):
        if path.is_file():
            return path
    return None


def _imported_names(path: Path, repo: Path) -> set[str]:
    """Dotted names a file imports (relative imports resolved; `from a import b` also counts a.b)."""
    package = ".".join(path.relative_to(repo).with_suffix("").parts)
    if path.name != "__init__.py":
        package = package.rpartition(".")[0]
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(parent + ([base] if base else []))
            names.add(base)
            names.update(f"{base}.{a.name}" for a in node.names)
    return names


def code_closure(scripts: list[Path], repo: Path = REPO, package: str = "src") -> list[Path]:
    """The package's files that the scripts import, directly or through each other, with the __init__.py of
    every package on the way (a static reading of every import statement)."""
    seen: set[Path] = set()
    todo = [Path(s) for s in scripts]
    while todo:
        for name in _imported_names(todo.pop(), repo):
            if name != package and not name.startswith(package + "."):
                continue
            parts = name.split(".")
            for k in range(1, len(parts) + 1):  # the module and every package above it
                path = _module_file(".".join(parts[:k]), repo)
                if path is not None and path not in seen:
                    seen.add(path)
                    todo.append(path)
    return sorted(seen)


def copy_runs(runs: Path, dest: Path) -> list[Path]:
    """What inference needs from runs/: each fold's config.yaml and best.pt, and ensemble.json."""
    copied = []
    for path in sorted(runs.rglob("*")):
        if path.name in (*INFERENCE_FILES, ENSEMBLE) and path.is_file():
            target = dest / path.relative_to(runs)
            copy_file(path, target)
            copied.append(target)
    return copied


def run_datasets(runs: Path) -> dict[str, str | None]:
    """The dataset each run fold under runs/ was trained on (its config's `dataset`, else its data_dir's name)."""
    out = {}
    for path in sorted(runs.glob(f"*/fold*/{CONFIG}")):
        cfg = yaml.safe_load(path.read_text()) or {}
        name = cfg.get("dataset") or (Path(str(cfg["data_dir"])).name if cfg.get("data_dir") else None)
        out[path.parent.relative_to(runs).as_posix()] = name
    return out


def check_dataset(runs: Path, dataset: str) -> None:
    """SystemExit with one line when runs/ has no trained run or holds runs of another dataset than `dataset`."""
    found = run_datasets(runs)
    if not found:
        raise SystemExit(f"kaggle/meta.py: {runs}: no run folder with a {CONFIG}: nothing to package")
    other = [f"{run} ({name})" for run, name in found.items() if name != dataset]
    if other:
        raise SystemExit(f"kaggle/meta.py: {runs}: {len(other)} of {len(found)} runs were trained on another dataset "
                         f"than {dataset!r}: {', '.join(other[:4])}{' ...' if len(other) > 4 else ''}; "
                         "package the runs folder of that dataset (runs/<dataset>) or pass --dataset")


def package(runs: Path, out: Path, repo: Path = REPO, dataset: str | None = None) -> list[Path]:
    """The code-and-weights dataset folder: scripts, their src/ closure, requirements.txt and the runs (all
    trained on `dataset` when given, else refused)."""
    if dataset is not None:
        check_dataset(runs, dataset)
    scripts = [repo / s for s in SCRIPTS]
    written = []
    for path in [*scripts, *code_closure(scripts, repo), repo / "requirements.txt"]:
        target = out / path.relative_to(repo)
        copy_file(path, target)
        written.append(target)
    return written + copy_runs(runs, out / "runs")


def unzip_check(archive: Path, dest: Path) -> str:
    """Whether `archive` unpacks onto dest's disk: SystemExit with one line when the uncompressed size (from the
    zip's table of contents, files already unpacked at their size not counted twice) exceeds the free space."""
    import shutil
    import zipfile

    try:
        with zipfile.ZipFile(archive) as z:
            entries = [(i.filename, i.file_size) for i in z.infolist() if not i.is_dir()]
    except (OSError, zipfile.BadZipFile) as err:
        raise SystemExit(f"{archive}: not a readable zip archive ({err})") from None
    needed = sum(size for name, size in entries
                 if not ((dest / name).is_file() and (dest / name).stat().st_size == size))
    probe = dest if dest.exists() else dest.parent
    free = shutil.disk_usage(probe).free
    line = (f"{archive.name}: {len(entries):,} files, {needed / 1e9:.1f} GB still to unpack into {dest}, "
            f"{free / 1e9:.1f} GB free there")
    if needed > free:
        raise SystemExit(f"{line}: not enough room; free {(needed - free) / 1e9:.1f} GB more (or unzip onto "
                         "another disk and pass DATA= there)")
    return line


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="command", required=True)
    f = sub.add_parser("fill", help="fill a metadata template with the Kaggle user name")
    f.add_argument("template", type=Path)
    f.add_argument("out", type=Path)
    sub.add_parser("username", help="print the Kaggle user name (KAGGLE_USERNAME, else kaggle.json)")
    sub.add_parser("check", help="exit 1 with what to do when no Kaggle credentials are set")
    u = sub.add_parser("upload", help="upload a dataset folder: create it, or a new version when it exists")
    u.add_argument("folder", type=Path)
    u.add_argument("-m", "--message", default="new version", help="the version notes")
    u.add_argument("--kaggle", default="kaggle", help="the kaggle CLI to run")
    z = sub.add_parser("unzip-check", help="exit 1 with one line when an archive does not fit where it unpacks")
    z.add_argument("archive", type=Path)
    z.add_argument("dest", type=Path)
    p = sub.add_parser("package", help="build the code-and-weights dataset folder")
    p.add_argument("--runs", type=Path, required=True, help="the runs folder to ship (runs/<dataset>)")
    p.add_argument("--dataset", default=None, help="the dataset every run must be trained on; default: the runs "
                   "folder's name")
    p.add_argument("out", type=Path)
    a = ap.parse_args(argv)
    if a.command == "fill":
        fill(a.template, a.out, kaggle_username())
    elif a.command == "username":
        print(kaggle_username())
    elif a.command == "check":
        check_credentials()
    elif a.command == "upload":
        upload(a.folder, a.message, a.kaggle)
    elif a.command == "unzip-check":
        print(unzip_check(a.archive, a.dest))
    else:
        written = package(a.runs, a.out, dataset=a.dataset or a.runs.resolve().name)
        print(f"{a.out}: {len(written)} files ({sum(p.suffix == '.py' for p in written)} Python files)")


if __name__ == "__main__":
    main()
