"""The one generic train loop: AMP on CUDA, DDP under torchrun, atomic resumable checkpoints.

Per run it writes {runs}/{name}/fold{N}/: config.yaml (resolved), best.pt and last.pt, oof.csv (best
epoch's out-of-fold predictions) and log.csv (one row per epoch).
"""
from __future__ import annotations

import math
import os
import random
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.distributed as dist
from timm.scheduler import CosineLRScheduler
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler
from tqdm import tqdm

from . import config as config_lib
from .datasets import seed_worker
from .models import autocast, build_model
from .tasks import TASKS


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def run_dir(cfg: dict) -> Path:
    return Path(cfg["runs"]) / cfg["name"] / f"fold{cfg['fold']}"


def atomic_save(obj, path: Path) -> None:
    """torch.save to a temporary file, then rename: a kill never leaves a half-written checkpoint."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def _atomic_csv(frame: pd.DataFrame, path: Path) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    frame.to_csv(tmp, index=False)
    os.replace(tmp, path)


def _distributed() -> tuple[int, int, int]:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    return (int(os.environ.get("RANK", "0")), world, int(os.environ.get("LOCAL_RANK", "0")))


def pick_device(name: str, local_rank: int = 0) -> torch.device:
    if name == "auto":
        name = f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu"
    device = torch.device(name)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    return device


def amp_settings(cfg: dict, device: torch.device) -> tuple[torch.dtype | None, bool]:
    """(autocast dtype or None, whether a GradScaler is needed): bf16 by default on CUDA, fp32 on CPU."""
    if device.type != "cuda" or cfg["amp"] == "none":
        return None, False
    if cfg["amp"] not in ("bf16", "fp16"):
        raise ValueError(f"amp must be bf16, fp16 or none, not {cfg['amp']!r}")
    return (torch.bfloat16, False) if cfg["amp"] == "bf16" else (torch.float16, True)


@torch.no_grad()
def predict(model: torch.nn.Module, loader: DataLoader, input_keys, device, amp_dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """Model outputs over a loader (float32 on CPU) and the dataset rows they belong to."""
    model.eval()
    outs, rows = [], []
    for batch in loader:
        inputs = {k: batch[k].to(device, non_blocking=True) for k in input_keys}
        with autocast(device, amp_dtype):
            outs.append(model(**inputs).float().cpu())
        rows.append(batch["row"])
    return torch.cat(outs), torch.cat(rows)


def fit(cfg: dict) -> dict:
    """Train one fold of one model as the config says; returns the best epoch's metrics."""
    rank, world, local_rank = _distributed()
    main = rank == 0
    device = pick_device(cfg["device"], local_rank)
    seed_everything(cfg["seed"] + rank)
    out_dir = run_dir(cfg)
    if main:
        out_dir.mkdir(parents=True, exist_ok=True)
        config_lib.save(cfg, out_dir / "config.yaml")

    if world > 1 and not main:
        dist.barrier()  # rank 0 builds the caches first
    task = TASKS[cfg["task"]](cfg, is_main=main)
    if world > 1 and main:
        dist.barrier()
    train_ds, val_ds = task.train_dataset(), task.val_dataset()
    sampler = DistributedSampler(train_ds, num_replicas=world, rank=rank, shuffle=True, seed=cfg["seed"]) if world > 1 else None
    batch_size = min(cfg["batch_size"], len(train_ds))
    loader_args = dict(num_workers=cfg["workers"], worker_init_fn=seed_worker, pin_memory=device.type == "cuda",
                       persistent_workers=False)
    train_loader = DataLoader(train_ds, batch_size=batch_size, shuffle=sampler is None, sampler=sampler,
                              drop_last=True, **loader_args)
    val_loader = DataLoader(val_ds, batch_size=batch_size * 2, shuffle=False, **loader_args)

    model = build_model(cfg).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg["lr"], weight_decay=cfg["weight_decay"])
    steps = len(train_loader)
    total = cfg["epochs"] * steps
    scheduler = CosineLRScheduler(optimizer, t_initial=total, lr_min=cfg["min_lr"],
                                  warmup_t=int(cfg["warmup_epochs"] * steps), warmup_lr_init=cfg["lr"] * 0.01,
                                  warmup_prefix=True, t_in_epochs=False)
    amp_dtype, use_scaler = amp_settings(cfg, device)
    scaler = torch.amp.GradScaler("cuda", enabled=use_scaler)

    state = {"epoch": 0, "best_score": math.inf, "best_epoch": -1, "bad_epochs": 0}
    log: list[dict] = []
    last = out_dir / "last.pt"
    if cfg["resume"] and last.is_file():
        ckpt = torch.load(last, map_location="cpu", weights_only=True)
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        scaler.load_state_dict(ckpt["scaler"])
        state = ckpt["state"]
        if (out_dir / "log.csv").is_file():
            log = pd.read_csv(out_dir / "log.csv").to_dict("records")[: state["epoch"]]
        if main:
            print(f"resumed {last} at epoch {state['epoch']}")
    scheduler.step_update(state["epoch"] * steps)
    net = DistributedDataParallel(model, device_ids=[local_rank] if device.type == "cuda" else None) if world > 1 else model

    best_metrics: dict = {}
    for epoch in range(state["epoch"], cfg["epochs"]):
        if state["bad_epochs"] >= cfg["patience"]:
            break
        started = time.time()
        seed_everything(cfg["seed"] + 1000 * epoch + rank)  # worker seeds and dropout follow the epoch
        if sampler is not None:
            sampler.set_epoch(epoch)
        if train_loader.num_workers == 0 and getattr(train_ds, "transform", None) is not None:
            train_ds.transform.set_random_seed(cfg["seed"] + epoch)
        net.train()
        losses = []
        bar = tqdm(train_loader, desc=f"{cfg['name']} fold {cfg['fold']} epoch {epoch + 1}/{cfg['epochs']}",
                   disable=not main, leave=False)
        for step, batch in enumerate(bar):
            inputs = {k: batch[k].to(device, non_blocking=True) for k in task.input_keys}
            with autocast(device, amp_dtype):
                out = net(**inputs)
            loss = task.loss(out, batch)
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg["grad_clip"])
            scaler.step(optimizer)
            scaler.update()
            scheduler.step_update(epoch * steps + step + 1)
            losses.append(loss.item())
            bar.set_postfix(loss=f"{np.mean(losses[-20:]):.4f}")

        outputs, rows = predict(model, val_loader, task.input_keys, device, amp_dtype)
        metrics, oof = task.evaluate(outputs, rows)
        row = {"epoch": epoch + 1, "train_loss": float(np.mean(losses)), **metrics,
               "lr": optimizer.param_groups[0]["lr"], "seconds": time.time() - started}
        log.append(row)
        improved = metrics["score"] < state["best_score"]
        if improved:
            state.update(best_score=metrics["score"], best_epoch=epoch + 1, bad_epochs=0)
            best_metrics = row
        else:
            state["bad_epochs"] += 1
        state["epoch"] = epoch + 1
        if main:
            if improved:
                atomic_save({"model": model.state_dict()}, out_dir / "best.pt")
                _atomic_csv(oof, out_dir / "oof.csv")
            _atomic_csv(pd.DataFrame(log), out_dir / "log.csv")
            atomic_save({"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                         "scaler": scaler.state_dict(), "state": state}, last)
            print(f"epoch {epoch + 1}: train_loss {row['train_loss']:.4f} val_loss {metrics['val_loss']:.4f} "
                  f"score {metrics['score']:.4f} acc {metrics['acc']:.3f} ({row['seconds']:.0f}s)"
                  + (" *" if improved else ""))
    if not best_metrics and log:
        best_metrics = min(log, key=lambda r: r["score"])
    if world > 1:
        dist.barrier()
        dist.destroy_process_group()
    refs = task.references() if hasattr(task, "references") else {}
    return {**best_metrics, "best_epoch": state["best_epoch"], "run_dir": str(out_dir), "references": refs}
