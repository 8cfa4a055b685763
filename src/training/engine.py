"""The one generic train loop: AMP on CUDA, DDP under torchrun, atomic resumable checkpoints.

Per run it writes {runs}/{name}/fold{N}/: config.yaml (resolved), best.pt (the kept epoch's weights: the best
validated one, or the last with `keep: last`) and last.pt (the resumable state), oof.csv (the kept epoch's
out-of-fold predictions) and log.csv (one row per epoch). It knows only the Task protocol
(training.task): the caller gives the task class (src.tasks.task_class of the config's `task`), and the task
gives the model, the data, the loss and the validation numbers.
"""
from __future__ import annotations

import json
import math
import os
import random
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.distributed as dist
import yaml
from timm.scheduler import CosineLRScheduler
from timm.utils import ModelEmaV3
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from ..core import config as config_lib
from ..core.atomic import remove_orphans, save_torch, write_csv, write_json, write_text
from ..core.device import autocast, pick_device, place_model, training_amp
from ..core.memory import keep_freed_cpu_memory
from ..core.progress import first_line, interactive, log, progress
from ..core.run_folders import BEST, CONFIG, DONE, LAST, LOG, OOF, run_dir
from .task import Task


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def seed_worker(worker_id: int) -> None:
    """DataLoader worker_init_fn: seed numpy and the worker's albumentations pipeline from torch's seed."""
    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)
    info = torch.utils.data.get_worker_info()
    if info is not None and getattr(info.dataset, "transform", None) is not None:
        info.dataset.transform.set_random_seed(seed)


def _distributed() -> tuple[int, int, int]:
    """(rank, world size, local rank); under torchrun the process group is set up once per process and shared
    by every fit of it (shutdown() ends it)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    return (int(os.environ.get("RANK", "0")), world, int(os.environ.get("LOCAL_RANK", "0")))


def shutdown() -> None:
    """End the process group, once every fit of this process is done (train.py calls it)."""
    if dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def _wait_for_main(marker: Path, token: str, timeout_s: float, rank: int) -> None:
    """Other ranks wait for rank 0 to build the caches (decoding, crops) by polling a marker file, so the
    wait never hits a collective's timeout and a long one says what it waits for."""
    started = time.time()
    while not (marker.is_file() and marker.read_text() == token):
        if time.time() - started > timeout_s:
            raise TimeoutError(f"rank {rank}: rank 0 has not finished decoding the series and cutting the crops "
                               f"after {timeout_s:.0f} s; run prepare.py before torchrun, or raise ddp_wait_s")
        time.sleep(0.5)


def _gather_rows(outputs: torch.Tensor, rows: torch.Tensor, world: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Every rank's validation outputs together, each dataset row once (a sampler pads with repeats)."""
    if world == 1:
        return outputs, rows
    parts: list = [None] * world
    dist.all_gather_object(parts, (outputs, rows))
    outputs, rows = torch.cat([o for o, _ in parts]), torch.cat([r for _, r in parts])
    _, first = np.unique(rows.numpy(), return_index=True)
    first = torch.from_numpy(np.sort(first))
    return outputs[first], rows[first]


def _prepare_task(task: Task, cfg: dict, out_dir: Path, rank: int, world: int) -> None:
    """The task's caches written and read. Under DDP rank 0 prepares (decoding, folds, crops) while the
    others wait for it on a marker file (_wait_for_main), never on a collective; then every rank loads."""
    if world == 1:
        task.prepare()
        task.load()
        return
    box = [f"{time.time()}-{os.getpid()}"]
    dist.broadcast_object_list(box, src=0)
    marker = out_dir / ".caches_ready"
    if rank == 0:
        task.prepare()
        write_text(box[0], marker)
    else:
        _wait_for_main(marker, box[0], cfg["ddp_wait_s"], rank)
    task.load()
    dist.barrier()
    if rank == 0:
        marker.unlink(missing_ok=True)


def _validate(model, loader, task, device, amp_dtype, world: int, main: bool):
    """Validation over every rank's shard, scored once on rank 0; every rank gets the same metrics."""
    outputs, rows = _gather_rows(*forward_all(model, loader, task, device, amp_dtype), world)
    metrics, oof = task.evaluate(outputs, rows) if main else (None, None)
    if world > 1:
        box = [metrics]
        dist.broadcast_object_list(box, src=0)  # the early-stop decision follows rank 0's numbers
        metrics = box[0]
    return metrics, oof


@torch.no_grad()
def forward_all(model: torch.nn.Module, loader: DataLoader, task, device, amp_dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """Model outputs over a loader (float32 on CPU) and the dataset rows they belong to."""
    model.eval()
    outs, rows = [], []
    for batch in loader:
        inputs = task.to_device(batch, device, train=False)
        with autocast(device, amp_dtype):
            outs.append(model(**inputs).float().cpu())
        rows.append(batch["row"])
    return torch.cat(outs), torch.cat(rows)


@dataclass
class _RunState:
    """Where training stands (what last.pt carries besides the weights)."""

    epoch: int = 0
    best_score: float = math.inf
    best_epoch: int = -1
    bad_epochs: int = 0
    log: list[dict] = field(default_factory=list)

    def as_dict(self) -> dict:
        return {"epoch": self.epoch, "best_score": self.best_score, "best_epoch": self.best_epoch,
                "bad_epochs": self.bad_epochs}


def loader_processes(cfg: dict, device: torch.device, loader_work: bool = True) -> int:
    """The config's loader_workers as a count: auto is `workers`, and none on the CPU device where the task's
    loader only gathers prepared arrays (Task.loader_work false): a process would only add copying."""
    if cfg["loader_workers"] != "auto":
        return cfg["loader_workers"]
    return cfg["workers"] if loader_work or device.type != "cpu" else 0


def _loaders(cfg: dict, train_ds: Dataset, val_ds: Dataset, world: int, rank: int, device: torch.device,
             loader_work: bool = True):
    """Training and validation loaders; under DDP both are sharded across the ranks."""
    sampler = DistributedSampler(train_ds, num_replicas=world, rank=rank, shuffle=True, seed=cfg["seed"]) if world > 1 else None
    val_sampler = DistributedSampler(val_ds, num_replicas=world, rank=rank, shuffle=False) if world > 1 else None
    batch_size = min(cfg["batch_size"], len(train_ds))
    workers = loader_processes(cfg, device, loader_work)
    args = dict(num_workers=workers, worker_init_fn=seed_worker, pin_memory=device.type == "cuda",
                persistent_workers=workers > 0, prefetch_factor=cfg["prefetch"] if workers > 0 else None)
    train = DataLoader(train_ds, batch_size=batch_size, shuffle=sampler is None, sampler=sampler, drop_last=True, **args)
    val = DataLoader(val_ds, batch_size=batch_size * 2, shuffle=False, sampler=val_sampler, **args)
    return train, val, sampler


# Keys that may change between a run and its continuation (training longer, on another machine).
RUNTIME_KEYS = ("workers", "loader_workers", "device", "resume", "epochs", "patience", "runs")  # runs: the folder may move


def _check_same_run(out_dir: Path, cfg: dict) -> None:
    """Refuse to continue a run folder trained with another config (ConfigError naming the keys)."""
    raw = config_lib.load(out_dir / CONFIG) or {}
    saved = config_lib.portable(config_lib.with_new_keys(raw))  # older runs saved absolute paths
    now = yaml.safe_load(yaml.safe_dump(config_lib.portable(cfg)))
    if "dataset" not in raw:  # derived from data_dir, which is compared; runs saved before it lack it
        now.pop("dataset", None)
    differ = sorted(k for k in set(saved) | set(now) if k not in RUNTIME_KEYS and saved.get(k) != now.get(k))
    if differ:
        raise config_lib.ConfigError(f"{out_dir}: holds a run with another config ({', '.join(differ)} differ); "
                                     "pass --restart to train it again from scratch, or --name for a new run folder")


def _finished(out_dir: Path, cfg: dict) -> dict | None:
    """The kept epoch's row of a run that ended (its done marker) and that this config would not continue
    (no more epochs, or patience run out), else None."""
    try:
        done = json.loads((out_dir / DONE).read_text())
    except (OSError, ValueError):
        return None
    if done.get("epoch", 0) < cfg["epochs"] and done.get("bad_epochs", 0) < cfg["patience"]:
        return None
    return {**(_kept_row(_log_until(out_dir), cfg["keep"]) or {}), "best_epoch": done.get("best_epoch"),
            "score": float(done.get("best_score", math.nan)), "epoch": done.get("epoch")}


def _log_until(out_dir: Path, epoch: int | None = None) -> list[dict]:
    """log.csv's rows up to `epoch` (all by default); [] without a log."""
    return pd.read_csv(out_dir / LOG).to_dict("records")[:epoch] if (out_dir / LOG).is_file() else []


def _kept_row(rows: list[dict], keep: str) -> dict | None:
    """The row of the epoch whose weights the run keeps (config `keep`): the lowest validation score, or the
    last epoch; None without rows."""
    if not rows:
        return None
    return rows[-1] if keep == "last" else min(rows, key=lambda r: r["score"])


@dataclass
class _Trainer:
    """What a training step needs: the model (and its DDP or compiled wrapper `net`), optimizer, schedule,
    scaler, device and AMP dtype, and the EMA of the weights when the config asks for one (ema_decay > 0)."""

    model: torch.nn.Module
    net: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: CosineLRScheduler
    scaler: torch.amp.GradScaler
    device: torch.device
    amp_dtype: torch.dtype | None
    ema: ModelEmaV3 | None = None
    rank: int = 0  # this process under torchrun (0 alone), of `world`
    world: int = 1

    @property
    def eval_model(self) -> torch.nn.Module:
        """What is validated and saved as best.pt: the EMA weights when there are some."""
        return self.ema.module if self.ema is not None else self.model

    def checkpoint(self, state: _RunState) -> dict:
        """last.pt: everything needed to continue exactly."""
        out = {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
               "scaler": self.scaler.state_dict(), "state": state.as_dict()}
        if self.ema is not None:
            out["ema"] = self.ema.module.state_dict()
        return out

    def load(self, ckpt: dict) -> None:
        self.model.load_state_dict(ckpt["model"])
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.scaler.load_state_dict(ckpt["scaler"])
        if self.ema is not None:
            self.ema.module.load_state_dict(ckpt.get("ema", ckpt["model"]))


def _resume(out_dir: Path, trainer: _Trainer, main: bool, keep: str) -> _RunState:
    """Weights, optimizer, scaler, EMA and the run state from last.pt. A last.pt that does not load is named and set
    aside (last.pt.corrupt); training then continues from best.pt's weights at its epoch, or from scratch."""
    try:
        ckpt = torch.load(out_dir / LAST, map_location="cpu", weights_only=True)
        trainer.load(ckpt)
        state = _RunState(**ckpt["state"])
    except Exception as err:  # noqa: BLE001 - a broken checkpoint is set aside, never fatal
        if main:
            os.replace(out_dir / LAST, out_dir / f"{LAST}.corrupt")
        what = f"{out_dir / LAST} does not load ({first_line(err)}); set aside as {LAST}.corrupt"
        return _from_best(out_dir, trainer, what, main, keep)
    state.log = _log_until(out_dir, state.epoch)
    if main:
        log(f"resumed {out_dir / LAST} at epoch {state.epoch}")
    return state


def _from_best(out_dir: Path, trainer: _Trainer, what: str, main: bool, keep: str) -> _RunState:
    """The run state after a lost last.pt: best.pt's weights (the EMA's too) and the log up to its epoch, else a
    fresh start."""
    history = _log_until(out_dir)
    best = _kept_row(history, keep)
    try:
        weights = torch.load(out_dir / BEST, map_location="cpu", weights_only=True)["model"]
        trainer.model.load_state_dict(weights)
        if trainer.ema is not None:
            trainer.ema.module.load_state_dict(weights)
    except Exception:  # noqa: BLE001 - no usable best.pt either
        best = None
    if best is None:
        if main:
            log(f"{what}; no usable {BEST}: training from scratch")
        return _RunState()
    epoch = int(best["epoch"])
    if main:
        log(f"{what}; continuing from {BEST} (epoch {epoch}) with a fresh optimizer")
    return _RunState(epoch=epoch, best_score=float(best["score"]), best_epoch=epoch, log=history[:epoch])



def _train_epoch(t: _Trainer, task, loader, cfg: dict, first_step: int, desc: str, main: bool) -> float:
    """One pass over the training loader; returns the mean loss. The loss stays on the device: the host waits
    for it only every log_every steps (progress bar or log line) and once at the end."""
    t.net.train()
    total = torch.zeros((), device=t.device)
    # A bar on a terminal; in a log file a timestamped line every log_every steps (and fit's per-epoch line).
    bar = progress(loader, desc, disable=not main or not interactive(), leave=False)
    started, step = time.time(), -1
    for step, batch in enumerate(bar):
        inputs = task.to_device(batch, t.device, train=True)
        with autocast(t.device, t.amp_dtype):
            out = t.net(**inputs)
        loss = task.loss(out, {**batch, **inputs})
        t.optimizer.zero_grad(set_to_none=True)
        t.scaler.scale(loss).backward()
        t.scaler.unscale_(t.optimizer)
        torch.nn.utils.clip_grad_norm_(t.model.parameters(), cfg["grad_clip"])
        t.scaler.step(t.optimizer)
        t.scaler.update()
        t.scheduler.step_update(first_step + step + 1)
        if t.ema is not None:
            t.ema.update(t.model, step=first_step + step + 1)
        total += loss.detach()
        if (step + 1) % cfg["log_every"] == 0 and main:
            mean = float(total) / (step + 1)  # the host waits for the device here, once per log_every steps
            if bar.disable:
                log(f"{desc} step {step + 1}/{len(loader)}: loss {mean:.4f}, "
                    f"{(step + 1) / (time.time() - started):.2f} steps/s")
            else:
                bar.set_postfix(loss=f"{mean:.4f}")
    return float(total) / max(step + 1, 1)


def _open_run(cfg: dict, task: Task, out_dir: Path, main: bool) -> dict | None:
    """Before anything is built: the saved config must match (ConfigError), a finished run returns its result
    (nothing to do), the folds file and fold id must be valid (DataError), and --restart moves the earlier run
    aside. None when training goes ahead."""
    if cfg["resume"] and (out_dir / CONFIG).is_file():
        _check_same_run(out_dir, cfg)
        finished = _finished(out_dir, cfg)
        if finished is not None:
            if main:
                log(f"{out_dir}: finished at epoch {finished['epoch']} ({cfg['keep']} epoch {finished['best_epoch']}, score "
                    f"{finished['score']:.4f}); nothing to do: more --epochs (or --patience, if it stopped early) "
                    "continue it, --restart trains it again")
            return {**finished, "run_dir": str(out_dir), "references": {}}
    task.check()  # before any folder is made: every file the run reads, the folds and the fold id
    if main and not cfg["resume"] and out_dir.is_dir():
        aside = out_dir.with_name(f"{out_dir.name}.before-{time.strftime('%Y%m%d-%H%M%S')}")
        os.replace(out_dir, aside)  # never trained over: the earlier run stays whole beside the new one
        log(f"{out_dir}: --restart: the earlier run moved aside to {aside.name}; training from scratch")
    return None


def fit(cfg: dict, task_class: type[Task]) -> dict:
    """Train one fold of one model as the config says, with a task of `task_class` (the class registered for
    cfg['task']); returns the kept epoch's metrics."""
    rank, world, local_rank = _distributed()
    main = rank == 0
    device = pick_device(cfg["device"], local_rank)
    if device.type == "cpu":
        keep_freed_cpu_memory()  # each step's activations would otherwise fault in fresh zeroed pages
    seed_everything(cfg["seed"] + rank)
    out_dir = run_dir(cfg["runs"], cfg["name"], cfg["fold"])
    task = task_class(cfg, device)
    finished = _open_run(cfg, task, out_dir, main)
    if finished is not None:
        return finished
    model = task.build_model()  # before any folder: pretrained weights that do not load leave nothing behind
    resuming = cfg["resume"] and (out_dir / LAST).is_file()
    made = not out_dir.is_dir()
    if main:
        out_dir.mkdir(parents=True, exist_ok=True)
        remove_orphans(out_dir)  # left by a kill during a write
    try:
        _prepare_task(task, cfg, out_dir, rank, world)
    except BaseException:
        if main and made and not any(out_dir.iterdir()):
            out_dir.rmdir()  # an input error leaves no empty run folder behind
        raise
    if main:
        config_lib.save(cfg, out_dir / CONFIG)
    loaders = _loaders(cfg, task.train_dataset(), task.val_dataset(), world, rank, device, task.loader_work)
    trainer = _make_trainer(cfg, model, len(loaders[0]), device, (rank, world, local_rank))
    if resuming:
        state = _resume(out_dir, trainer, main, cfg["keep"])
    elif cfg["resume"] and ((out_dir / BEST).is_file() or (out_dir / LOG).is_file()):  # a run without its last.pt
        state = _from_best(out_dir, trainer, f"{out_dir}: no {LAST}", main, cfg["keep"])
    else:
        state = _RunState()
    trainer.scheduler.step_update(state.epoch * len(loaders[0]))
    best_metrics = _epochs(cfg, task, trainer, loaders, state, out_dir)
    if main:  # the final state, even when no epoch ran here (a run continued from best.pt), and the done marker
        if not (out_dir / LAST).is_file():
            save_torch(trainer.checkpoint(state), out_dir / LAST)
        write_json({**state.as_dict(), "epochs": cfg["epochs"], "patience": cfg["patience"]}, out_dir / DONE)
    return {**best_metrics, "best_epoch": state.best_epoch, "run_dir": str(out_dir), "references": task.references()}


def _make_trainer(cfg: dict, model: torch.nn.Module, steps: int, device: torch.device,
                  dist_ranks: tuple[int, int, int]) -> _Trainer:
    """The config's model on the device (DDP-wrapped under torchrun, compiled on request), AdamW, the cosine
    schedule with warm-up over every step, the AMP scaler and the EMA of the weights (ema_decay > 0).
    dist_ranks: (rank, world size, local rank), as _distributed gives them."""
    rank, world, local_rank = dist_ranks
    model = place_model(model, device, cfg["channels_last"])
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg["lr"], weight_decay=cfg["weight_decay"],
                                  fused=device.type == "cuda")
    scheduler = CosineLRScheduler(optimizer, t_initial=cfg["epochs"] * steps, lr_min=cfg["min_lr"],
                                  warmup_t=int(cfg["warmup_epochs"] * steps), warmup_lr_init=cfg["lr"] * 0.01,
                                  warmup_prefix=True, t_in_epochs=False)
    amp_dtype, use_scaler = training_amp(cfg["amp"], device)
    scaler = torch.amp.GradScaler("cuda", enabled=use_scaler)
    # EMA with timm's warm-up (decay 1 - (1 + step)^-2/3, capped at ema_decay), so short runs average their end.
    ema = ModelEmaV3(model, decay=cfg["ema_decay"], use_warmup=True) if cfg["ema_decay"] else None
    net = DistributedDataParallel(model, device_ids=[local_rank] if device.type == "cuda" else None) if world > 1 else model
    if cfg["compile"] and device.type == "cuda":
        net = torch.compile(net)
    return _Trainer(model, net, optimizer, scheduler, scaler, device, amp_dtype, ema, rank, world)


def _epochs(cfg: dict, task: Task, t: _Trainer, loaders: tuple, state: _RunState, out_dir: Path) -> dict:
    """The epochs left (until patience runs out): train, validate, keep the best or the last epoch (best.pt,
    oof.csv), log, and checkpoint every epoch (last.pt); returns the kept epoch's row."""
    train_loader, val_loader, sampler = loaders
    rank, main, best_metrics = t.rank, t.rank == 0, {}
    for epoch in range(state.epoch, cfg["epochs"]):
        if state.bad_epochs >= cfg["patience"]:
            break
        started = time.time()
        seed_everything(cfg["seed"] + 1000 * epoch + rank)  # worker seeds and dropout follow the epoch
        if sampler is not None:
            sampler.set_epoch(epoch)
        if train_loader.num_workers == 0 and getattr(train_loader.dataset, "transform", None) is not None:
            train_loader.dataset.transform.set_random_seed(cfg["seed"] + epoch)
        train_loss = _train_epoch(t, task, train_loader, cfg, epoch * len(train_loader),
                                  f"{cfg['name']} fold {cfg['fold']} epoch {epoch + 1}/{cfg['epochs']}", main)
        metrics, oof = _validate(t.eval_model, val_loader, task, t.device, t.amp_dtype, t.world, main)
        row = {"epoch": epoch + 1, "train_loss": train_loss, **metrics,
               "lr": t.optimizer.param_groups[0]["lr"], "seconds": time.time() - started}
        state.log.append(row)
        improved = cfg["keep"] == "last" or metrics["score"] < state.best_score
        if improved:
            state.best_score, state.best_epoch, state.bad_epochs = metrics["score"], epoch + 1, 0
            best_metrics = row
        else:
            state.bad_epochs += 1
        state.epoch = epoch + 1
        if main:
            if improved:
                save_torch({"model": t.eval_model.state_dict()}, out_dir / BEST)
                write_csv(oof, out_dir / OOF)
            write_csv(pd.DataFrame(state.log), out_dir / LOG)
            save_torch(t.checkpoint(state), out_dir / LAST)
            shown = " ".join(f"{k} {metrics[k]:.4f}" for k in task.shown)
            log(f"{cfg['name']} fold {cfg['fold']} epoch {epoch + 1}: train_loss {train_loss:.4f} {shown} "
                f"({row['seconds']:.0f}s)" + (" *" if improved else ""))
    if not best_metrics and state.log:
        best_metrics = _kept_row(state.log, cfg["keep"])
    return best_metrics
