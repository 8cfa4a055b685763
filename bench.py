"""Benchmarks (not tests): python bench.py [--data-dir DIR] [--preset tiny] [--what decode crops train infer]

decode: DICOM series/s through read_series (decode, order, normalise).
storage: cache bytes per pixel at the real size, projected to the real training set (GB).
loader: one loader process's crops/s, raw (for augmentation on the device) and with albumentations (CPU path).
augment: crops/s of the batched device augmentation on the fastest device here.
crops: crops/s served from the crop cache with augmentation, against decoding the DICOM series each time.
train: training samples/s of each model, the localizers too (AMP and peak GPU memory on CUDA).
infer: seconds and model forward calls per study of the whole offline pipeline (infer.py), cache warm, over
    --runs, else over a random-weight 5-fold x (2 classifiers + 3 localizers) ensemble of the preset.
profile: where the CPU time goes (cProfile, one process): the generator on --studies studies of --variety, and
    one training epoch (caches warm, loader in the main process) of each model of --config on --data-dir;
    the functions with the most time of their own, each with its share.
Prints a Markdown table to paste into docs/BENCHMARKS.md, with the machine it ran on.
"""
from __future__ import annotations

import os
import platform
import shutil
import sys
import tempfile
import time
import warnings
from pathlib import Path

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

import torch  # noqa: E402
from torch.utils.data import DataLoader  # noqa: E402

from src.classifier.augment import DeviceAugment, train_transform  # noqa: E402
from src.classifier.crops import CropSpec, build_crops, cut_crop  # noqa: E402
from src.classifier.datasets import CropDataset  # noqa: E402
from src.core import cli  # noqa: E402
from src.core import config as config_lib  # noqa: E402
from src.core.atomic import copy_file, write_json  # noqa: E402
from src.core.constants import row_study_ids  # noqa: E402
from src.core.device import autocast, pick_device, training_amp  # noqa: E402
from src.core.paths import cache_dir_for  # noqa: E402
from src.data.cache import prepare  # noqa: E402
from src.data.dicom import read_series  # noqa: E402
from src.data.tables import load_coordinates, load_series_descriptions  # noqa: E402
from src.registry import build_model  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent / "tests"))  # random (untrained) runs: tests/fixtures.py
from fixtures import random_runs  # noqa: E402


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return f"{os.cpu_count()} CPU cores ({cpu}), {gpu}, torch {torch.__version__}"


def _crop_cache(data_dir: Path, cfg: dict, workers: int):
    """The training crops of a dataset (cut once into the cache), their index with a dummy label, the spec."""
    cache_dir = cache_dir_for(data_dir)
    prepare(data_dir, cache_dir, "train", workers=workers)
    coords = load_coordinates(data_dir / "train_label_coordinates.csv")
    spec = CropSpec(**cfg["crop"])
    crops, index = build_crops(coords, cache_dir, "train", spec, cache_dir / "crops", workers)
    return crops, index.assign(label=0), spec, coords


def _loader_rate(ds: CropDataset, n: int, workers: int) -> float:
    """Crops per second a DataLoader with `workers` processes serves (0: the calling process alone)."""
    loader = DataLoader(ds, batch_size=32, shuffle=True, num_workers=workers)
    start, seen = time.perf_counter(), 0
    for batch in loader:
        seen += len(batch["image"])
        if seen >= n:
            break
    return seen / (time.perf_counter() - start)


def bench_loader(data_dir: Path, cfg: dict, n: int, workers: int, metrics: dict) -> list[tuple[str, str]]:
    """One loader process's crops/s without augmentation (the device path) and with albumentations (the CPU
    path), measured in the same run on the same crops."""
    crops, index, spec, _ = _crop_cache(data_dir, cfg, workers)
    raw = _loader_rate(CropDataset(crops, index, None), n, 0)
    cpu = _loader_rate(CropDataset(crops, index, train_transform(cfg["aug"], spec.size_px)), n, 0)
    metrics.update(loader_crops_per_s=raw, loader_crops_per_s_cpu_aug=cpu, crop=f"{spec.n_slices}x{spec.stored_px}px")
    return [(f"one loader process, raw crops {spec.n_slices}x{spec.stored_px}px (augmented on the device)", f"{raw:.0f} crops/s"),
            ("one loader process, crops + albumentations (CPU path)", f"{cpu:.0f} crops/s ({raw / cpu:.1f}x fewer)")]


def bench_augment(cfg: dict, n: int, metrics: dict) -> list[tuple[str, str]]:
    """The batched device augmentation (DeviceAugment) on the fastest device here, batches of 256."""
    device = pick_device("auto")
    spec = CropSpec(**cfg["crop"])
    augment = DeviceAugment(cfg["aug"], spec.size_px)
    x = torch.rand(256, spec.n_slices, spec.stored_px, spec.stored_px, device=device)
    c = torch.zeros(256, dtype=torch.long, device=device)
    augment(x, c)  # warm-up
    if device.type == "cuda":
        torch.cuda.synchronize()
    start, done = time.perf_counter(), 0
    while done < n:
        augment(x, c)
        done += len(x)
    if device.type == "cuda":
        torch.cuda.synchronize()
    rate = done / (time.perf_counter() - start)
    metrics.update(augment_crops_per_s=rate, augment_device=str(device))
    what = f"batched device augmentation on {device} ({spec.n_slices}x{spec.stored_px} -> {spec.size_px}px)"
    return [(what, f"{rate:.0f} crops/s")]


REAL_IMAGES, REAL_PX = 147_000, 512 * 512  # the real training set: about 147,000 images of about 512 x 512 px


def bench_storage(workers: int, metrics: dict, studies: int = 2) -> list[tuple[str, str]]:
    """Cache bytes per pixel on synthetic series generated at the real data's size (512 px base, matrices of
    384-640 px), projected to the real training set; the lossless codec beside the default."""
    from src.data.cache import encode_volume, series_cache_path
    from src.synth import SynthConfig, generate

    root = Path(tempfile.mkdtemp(prefix="bench_storage_"))
    generate(SynthConfig(out=root / "data", studies=studies, test_studies=0, image_size=512, seed=5, workers=workers))
    start = time.perf_counter()
    prepare(root / "data", root / "cache", "train", workers=workers)
    seconds = time.perf_counter() - start
    table = load_series_descriptions(root / "data" / "train_series_descriptions.csv")
    stored = pixels = images = png = 0
    for r in table.itertuples():
        path = series_cache_path(root / "cache", "train", r.study_id, r.series_id)
        stored += path.stat().st_size
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            volume = read_series(root / "data" / "train_images" / str(r.study_id) / str(r.series_id)).volume
        pixels, images = pixels + volume.size, images + len(volume)
        png += len(encode_volume(volume, "png")[0])
    per_px, png_px = stored / pixels, png / pixels
    metrics.update(cache_bytes_per_px=per_px, cache_bytes_per_px_lossless=png_px, storage_images=images,
                   storage_mean_px=pixels / images, real_cache_gb=per_px * REAL_PX * REAL_IMAGES / 1e9,
                   real_cache_gb_lossless=png_px * REAL_PX * REAL_IMAGES / 1e9, prepare_images_per_s=images / seconds)
    shutil.rmtree(root, ignore_errors=True)
    return [(f"cache, JPEG q95 (default), {images} synthetic images of {pixels / images:.0f} px on average",
             f"{per_px:.3f} bytes/px; real set ({REAL_IMAGES:,} x 512 x 512): {metrics['real_cache_gb']:.1f} GB"),
            ("cache, lossless PNG codec", f"{png_px:.3f} bytes/px; real set: {metrics['real_cache_gb_lossless']:.1f} GB"),
            ("prepare (decode + write) at real size", f"{images / seconds:.0f} images/s with {workers} workers")]


def bench_crops(data_dir: Path, cfg: dict, n: int, workers: int) -> list[tuple[str, str]]:
    crops, index, spec, coords = _crop_cache(data_dir, cfg, workers)
    ds = CropDataset(crops, index, train_transform(cfg["aug"], spec.size_px))
    rows = [(f"crops from the cache + augmentation, {w} workers", f"{_loader_rate(ds, n, w):.0f} crops/s")
            for w in sorted({0, workers})]
    sample = coords.sample(min(n // 10, len(coords)), random_state=0)
    start = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for r in sample.itertuples():
            s = read_series(data_dir / "train_images" / str(r.study_id) / str(r.series_id))
            cut_crop(s, s.index_of_instance(r.instance_number), r.x, r.y, spec.mm(r.condition), spec.size_px, spec.n_slices)
    rows.append(("crops decoding the DICOM series each time", f"{len(sample) / (time.perf_counter() - start):.1f} crops/s"))
    return rows


def bench_decode(data_dir: Path, n: int) -> list[tuple[str, str]]:
    series = load_series_descriptions(data_dir / "train_series_descriptions.csv").head(n)
    start, slices = time.perf_counter(), 0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for r in series.itertuples():
            slices += len(read_series(data_dir / "train_images" / str(r.study_id) / str(r.series_id)))
    dt = time.perf_counter() - start
    return [(f"DICOM decode ({len(series)} series)", f"{len(series) / dt:.1f} series/s, {slices / dt:.0f} slices/s")]


def count_forward_calls() -> tuple[dict, callable]:
    """Counts every outermost module call (a model's forward, not its layers') from now on, and the seconds
    spent in them: (counter with 'calls' and 'seconds', remove)."""
    counter, depth = {"calls": 0, "seconds": 0.0}, [0, 0.0]

    def enter(module, args):
        if depth[0] == 0:
            counter["calls"] += 1
            depth[1] = time.perf_counter()
        depth[0] += 1

    def leave(module, args, output):
        depth[0] -= 1
        if depth[0] == 0:
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            counter["seconds"] += time.perf_counter() - depth[1]

    handles = [torch.nn.modules.module.register_module_forward_pre_hook(enter),
               torch.nn.modules.module.register_module_forward_hook(leave)]
    return counter, lambda: [h.remove() for h in handles]


def bench_infer(data_dir: Path, runs: Path | None, preset: str | None, workers: int, metrics: dict,
                keep: Path | None = None) -> list[tuple[str, str]]:
    """Seconds per study and model forward calls per study of the whole offline pipeline on the data's test
    split, cache warm: over `runs` when given, else over a random-weight ensemble of 5 folds x (2 classifiers
    + 3 localizers) of the preset. keep: where to copy the submission."""
    from src.inference.context import InferenceContext
    from src.inference.pipeline import make_submission

    if runs is not None and not list(Path(runs).glob("*/fold*/best.pt")):
        return [("inference", f"skipped: no trained runs under {runs}")]
    label = str(runs) if runs is not None else f"random {preset} x5 folds"
    tmp = Path(tempfile.mkdtemp(prefix="bench_infer_"))
    counter, remove = {"calls": 0, "seconds": 0.0}, lambda: None
    try:
        runs = runs if runs is not None else random_runs(tmp / "runs", preset, folds=(0, 1, 2, 3, 4))
        out, cache_dir = tmp / "submission.csv", cache_dir_for(data_dir)
        make_submission(InferenceContext(data_dir, runs, cache_dir, "test", out, workers=workers))  # warms the caches
        counter, remove = count_forward_calls()
        start = time.perf_counter()
        result = make_submission(InferenceContext(data_dir, runs, cache_dir, "test", out, workers=workers))
        seconds = time.perf_counter() - start
        if keep is not None:
            copy_file(out, keep)
    finally:
        remove()
        shutil.rmtree(tmp, ignore_errors=True)
    studies = len(set(row_study_ids(result["row_id"]).tolist()))
    metrics.update(s_per_study=seconds / studies, forward_calls_per_study=counter["calls"] / studies,
                   forward_s_per_study=counter["seconds"] / studies, infer_studies=studies, infer_runs=label)
    return [(f"inference, whole pipeline, warm cache ({studies} studies, {label})",
             f"{seconds / studies:.2f} s/study ({counter['seconds'] / studies:.2f} s in forward calls), "
             f"{counter['calls'] / studies:.1f} forward calls/study")]


def _train_step_fn(cfg: dict, model, device):
    """A training step's loss on random inputs of the run's shapes (crops and labels, or localizer slices and
    heatmap targets); its input description for the table."""
    b = cfg["batch_size"]
    if cfg["task"] == "localizer":
        p = cfg["loc"]["size_px"]
        x = torch.rand(b, 3, p, p, device=device)
        with torch.no_grad():
            target = torch.rand_like(model(x).float())
        return (lambda: torch.nn.functional.binary_cross_entropy_with_logits(model(x).float(), target)), f"3x{p}px"
    s, p = cfg["crop"]["n_slices"], cfg["crop"]["size_px"]
    x = torch.rand(b, s, p, p, device=device)
    c, lv = torch.randint(0, 5, (b,), device=device), torch.randint(0, 5, (b,), device=device)
    y = torch.randint(0, 3, (b,), device=device)
    return (lambda: torch.nn.functional.cross_entropy(model(x, c, lv).float(), y)), f"{s}x{p}px"


def bench_train(cfg: dict, steps: int, metrics: dict | None = None) -> list[tuple[str, str]]:
    """Training samples/s of one model on random inputs (AMP and peak GPU memory on CUDA)."""
    device = pick_device("auto")
    amp_dtype, _ = training_amp(cfg["amp"], device)
    model = build_model(cfg).to(device).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    b = cfg["batch_size"]
    step_loss, shape = _train_step_fn(cfg, model, device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    for i in range(steps + 2):
        if i == 2:  # warm-up steps excluded
            if device.type == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
        with autocast(device, amp_dtype):
            loss = step_loss()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    rate = steps * b / (time.perf_counter() - start)
    what = f"train {cfg['name']} ({cfg['backbone']}, {shape}, batch {b}, {amp_dtype or 'fp32'})"
    result = f"{rate:.0f} samples/s"
    peak = torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else None
    if peak is not None:
        result += f", peak {peak:.2f} GiB"
    if metrics is not None:
        metrics.setdefault("train", {})[cfg["name"]] = {"samples_per_s": rate, "peak_gib": peak, "batch": b,
                                                        "input": shape, "amp": str(amp_dtype or "fp32")}
    return [(what, result)]


def train_configs(preset: str | None) -> list[dict]:
    """The config of each model the default recipe trains: both classifiers and the localizer of each series
    type."""
    from src.core.run_folders import localizer_run
    from src.localizer.plan import PLAN

    return [config_lib.resolve(m, preset) for m in ("attn_resnext", "cnn_lstm")] + [
        config_lib.resolve("localizer", preset, None, {"series_type": p.series_type, "name": localizer_run(p.series_type)})
        for p in PLAN]


def _top_functions(profile, n: int) -> list[tuple[str, float]]:
    """The n functions with the most time of their own in a cProfile.Profile: (file:function, seconds)."""
    import pstats

    stats = pstats.Stats(profile).stats
    rows = sorted(((f"{Path(file).name}:{name}", tt) for (file, _, name), (_, _, tt, _, _) in stats.items()),
                  key=lambda r: -r[1])
    return rows[:n]


def _profiled(fn, n: int) -> tuple[float, list[tuple[str, float]]]:
    """(seconds, top functions) of fn() under cProfile."""
    import cProfile

    profile = cProfile.Profile()
    start = time.perf_counter()
    profile.runcall(fn)
    return time.perf_counter() - start, _top_functions(profile, n)


def bench_profile(data_dir: Path, config_file: str | None, studies: int, variety: str, metrics: dict,
                  top: int = 8) -> list[tuple[str, str]]:
    """cProfile of the generator (per study) and of one warm training epoch of every model of the recipe."""
    from src.core.run_folders import localizer_run
    from src.registry import recipe_parts
    from src.synth import SynthConfig, generate
    from src.tasks import task_class
    from src.training.engine import fit

    rows: list[tuple[str, str]] = []
    tmp = Path(tempfile.mkdtemp(prefix="bench_profile_"))

    def table(what: str, seconds: float, top_rows: list[tuple[str, float]], per: str = "") -> None:
        metrics.setdefault("profile", {})[what] = {"seconds": seconds, "top": top_rows}
        rows.append((f"profile: {what}", f"{seconds:.1f} s{per}"))
        rows.extend((f"&nbsp;&nbsp;{name}", f"{sec:.2f} s ({100 * sec / seconds:.0f}%)") for name, sec in top_rows)

    try:
        cfg = SynthConfig(out=tmp / "synth", studies=studies, test_studies=0, seed=0, workers=1, variety=variety)
        seconds, top_rows = _profiled(lambda: generate(cfg), top)
        table(f"generator, {studies} studies ({variety})", seconds, top_rows, f", {seconds / studies:.2f} s per study")
        from make_folds import main as make_folds

        folds = tmp / "folds.csv"
        make_folds(["--data-dir", str(data_dir), "--out", str(folds)])
        for model, series_type in recipe_parts(config_file):
            over = {"data_dir": str(data_dir), "folds": str(folds), "runs": str(tmp / "runs"), "workers": 0,
                    "cache_dir": str(cache_dir_for(data_dir)), "epochs": 1}
            if series_type:
                over.update(series_type=series_type, name=localizer_run(series_type))
            cfg_run = config_lib.resolve(model, None, config_file, over)
            cfg_run["jitter"] = {**cfg_run["jitter"], "copies": 0}  # no localizer runs of this fold here
            fit(cfg_run, task_class(cfg_run["task"]))  # caches and the first epoch
            seconds, top_rows = _profiled(lambda c=cfg_run: fit({**c, "epochs": 2}, task_class(c["task"])), top)
            table(f"one epoch of {cfg_run['name']}", seconds, top_rows)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return rows


def main(argv: list[str] | None = None) -> None:
    ap = cli.parser(__doc__)
    cli.add_data_dir(ap)
    ap.add_argument("--preset", default="tiny", help="tiny, or full for the default (full-size) models")
    ap.add_argument("--what", nargs="+", default=["decode", "crops", "train", "infer"],
                    choices=["decode", "crops", "storage", "loader", "augment", "train", "infer", "profile"],
                    help="what to measure")
    ap.add_argument("--json", type=Path, default=None, help="also write the measured numbers to this JSON file")
    cli.add_runs(ap, default=None)
    ap.add_argument("--infer-out", type=Path, default=None, help="infer: also keep the timed submission here")
    ap.add_argument("--crops", type=int, default=2000, help="crops to time from the cache")
    ap.add_argument("--steps", type=int, default=10, help="training steps to time per model")
    ap.add_argument("--config", default="configs/demo.yaml", help="profile: the recipe whose models' epochs to profile")
    ap.add_argument("--studies", type=int, default=4, help="profile: studies to generate")
    ap.add_argument("--variety", default="default", help="profile: the generator's variety (default or real)")
    cli.add_workers(ap)
    a = ap.parse_args(argv)
    preset = None if a.preset in ("none", "full") else a.preset
    rows, metrics = [], {"machine": machine(), "preset": a.preset}
    if "storage" in a.what:
        rows += bench_storage(a.workers, metrics)
    if "loader" in a.what:
        rows += bench_loader(a.data_dir, config_lib.resolve("attn_resnext", preset), a.crops, a.workers, metrics)
    if "augment" in a.what:
        rows += bench_augment(config_lib.resolve("attn_resnext", preset), a.crops * 4, metrics)
    if "decode" in a.what:
        rows += bench_decode(a.data_dir, 60)
    if "crops" in a.what:
        rows += bench_crops(a.data_dir, config_lib.resolve("attn_resnext", preset), a.crops, a.workers)
    if "train" in a.what:
        for cfg in train_configs(preset):
            rows += bench_train(cfg, a.steps, metrics)
    if "infer" in a.what:
        rows += bench_infer(a.data_dir, a.runs, preset, a.workers, metrics, a.infer_out)
    if "profile" in a.what:
        rows += bench_profile(a.data_dir, a.config, a.studies, a.variety, metrics)
    print(f"machine: {machine()}\n\n| what | result |\n| --- | --- |")
    for what, result in rows:
        print(f"| {what} | {result} |")
    if a.json is not None:
        write_json(metrics, a.json)


if __name__ == "__main__":
    sys.exit(cli.guard(main))
