"""One prepared GPU check (make gpu-check), meant to finish in under 8 minutes on one GPU:
python gpu_check.py [--data-dir input/synth_gpu] [--out reports/gpu_check.json]

1. AMP training samples/s and peak memory of each full-size model (bench.py's train, the localizers too);
2. inference seconds per study of the whole offline pipeline over a random-weight 5-fold ensemble of the
   full-size models (bench.py's infer);
3. a 2-epoch training of each model of configs/real.yaml (full size) on a small synthetic set (generated
   into --data-dir when missing), with its wall time and validation score.
Writes one JSON and prints a table. Without a CUDA GPU it exits at once (status 0), saying so. Each step
that fails is recorded with its error and the others still run.
"""
from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

import pandas as pd  # noqa: E402
import torch  # noqa: E402

import src.registry  # noqa: E402,F401 - every model registered (the runs listing reads it)
from src.core import cli  # noqa: E402
from src.core import config as config_lib  # noqa: E402
from src.core.atomic import write_json  # noqa: E402
from src.core.paths import INPUT_DIR, REPO, REPORTS_ROOT  # noqa: E402
from src.core.progress import first_line  # noqa: E402

RECIPE = REPO / "configs" / "real.yaml"


def _step(name: str, results: dict, fn) -> None:
    """Run one measurement; a failure is recorded, never fatal."""
    started = time.time()
    try:
        fn()
    except Exception as err:  # noqa: BLE001 - the other measurements still run
        results.setdefault("errors", {})[name] = first_line(err)
    results.setdefault("seconds", {})[name] = round(time.time() - started, 1)


def _ensure_data(data_dir: Path, studies: int, workers: int) -> None:
    if not (data_dir / "synth_config.json").is_file():
        subprocess.run([sys.executable, "-m", "src.synth", "--out", str(data_dir), "--studies", str(studies),
                        "--test-studies", "10", "--image-size", "256", "--seed", "0", "--workers", str(workers)],
                       cwd=REPO, check=True)


def _train_two_epochs(data_dir: Path, runs: Path, results: dict) -> None:
    out = results.setdefault("two_epochs", {})
    # The recipe's order: its classifiers jitter by the localizer's errors, so the localizer trains first.
    for model in config_lib.pipeline_models(RECIPE):
        started = time.time()
        done = subprocess.run([sys.executable, "train.py", "--fold", "0", "--model", model, "--config", str(RECIPE),
                               # random initialisation: the GPU box may have no internet and no weights folder
                               "--epochs", "2", "--patience", "2", "--pretrained", "false",
                               "--data-dir", str(data_dir), "--runs", str(runs),
                               "--folds", str(runs / "folds.csv")], cwd=REPO, capture_output=True, text=True)
        wall = time.time() - started
        if done.returncode != 0:
            out[model] = {"error": (done.stderr.strip().splitlines() or ["?"])[-1], "wall_s": wall}
            continue
        for log in sorted(runs.glob(f"{model}*/fold0/log.csv")):
            rows = pd.read_csv(log)
            out[log.parent.parent.name] = {"wall_s": round(wall, 1), "epoch_s": rows["seconds"].round(1).tolist(),
                                           "score": float(rows["score"].min())}


def main(argv: list[str] | None = None) -> int:
    ap = cli.parser(__doc__)
    cli.add_data_dir(ap, default=INPUT_DIR / "synth_gpu")
    ap.add_argument("--out", type=Path, default=REPORTS_ROOT / "gpu_check.json", help="the JSON to write")
    ap.add_argument("--studies", type=int, default=60, help="training studies of the generated set")
    ap.add_argument("--steps", type=int, default=20, help="training steps timed per model")
    cli.add_workers(ap)
    a = ap.parse_args(argv)
    if not torch.cuda.is_available():
        print("gpu_check.py: no CUDA GPU on this machine: nothing measured (run it where `nvidia-smi` lists one)")
        return 0
    import bench

    results: dict = {"machine": bench.machine(), "gpu": torch.cuda.get_device_name(0)}
    rows: list[tuple[str, str]] = []
    _step("data", results, lambda: _ensure_data(a.data_dir, a.studies, a.workers))
    for cfg in bench.train_configs(None):
        _step(f"train_{cfg['name']}", results, lambda cfg=cfg: rows.extend(bench.bench_train(cfg, a.steps, results)))
    _step("infer", results, lambda: rows.extend(bench.bench_infer(a.data_dir, None, None, a.workers, results)))
    with tempfile.TemporaryDirectory(prefix="gpu_check_") as tmp:
        _step("two_epochs", results, lambda: _train_two_epochs(a.data_dir, Path(tmp), results))
    for name, r in results.get("two_epochs", {}).items():
        rows.append((f"2 epochs of {name} (configs/real.yaml)", f"{r.get('wall_s')} s wall, epochs {r.get('epoch_s')} s, "
                     f"score {r.get('score')}" if "error" not in r else f"failed: {r['error']}"))
    for name, err in results.get("errors", {}).items():
        rows.append((f"{name}", f"failed: {err}"))
    write_json(results, a.out)
    print(f"machine: {results['machine']}\n\n| what | result |\n| --- | --- |")
    for what, result in rows:
        print(f"| {what} | {result} |")
    print(f"\nwrote {a.out}; total {sum(results['seconds'].values()):.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(cli.guard(main))
