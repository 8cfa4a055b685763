import os
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml

import train as train_script
from src.core import config as config_lib
from src.core.constants import TARGETS, group_of
from src.core.metric import score
from src.core.registry import build_model
from src.data.folds import fold_solution, load_folds
from src.data.tables import load_submission, load_train
from src.tasks import task_class
from src.training.engine import fit


@pytest.fixture(scope="module")
def base_args(synth_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("engine")
    return [
        "--preset", "tiny", "--data-dir", str(synth_dir), "--folds", str(root / "folds.csv"),
        "--cache_dir", str(root / "cache"), "--workers", "0", "--batch_size", "16",
        "--crop.size_px", "32", "--crop.n_slices", "3",
    ], root


def test_train_cli_writes_the_run_folder(base_args, synth_dir):
    args, root = base_args
    result = train_script.main(["--fold", "0", "--model", "attn_resnext", "--runs", str(root / "runs"), "--epochs", "2", *args])
    run = root / "runs" / "attn_resnext" / "fold0"
    for name in ("config.yaml", "best.pt", "last.pt", "oof.csv", "log.csv"):
        assert (run / name).is_file(), name
    # The saved config holds no absolute path of this machine, and names its dataset.
    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert not [v for v in saved.values() if isinstance(v, str) and os.path.isabs(v)]
    assert saved["dataset"] == synth_dir.name and Path(saved["data_dir"]).name == synth_dir.name
    log = pd.read_csv(run / "log.csv")
    assert log["epoch"].tolist() == [1, 2]
    assert {"train_loss", "val_loss", "score", "acc", "lr", "seconds"} <= set(log.columns)
    # oof.csv covers every scored row of the fold and reproduces the kept (last) epoch's logged score.
    train = load_train(synth_dir / "train.csv")
    solution = fold_solution(train, load_folds(root / "folds.csv"), 0)
    oof = load_submission(run / "oof.csv")
    assert set(solution["row_id"]) <= set(oof["row_id"])
    assert (oof[list(TARGETS)].sum(1) - 1).abs().max() < 1e-5
    kept = log["score"].iloc[-1]
    assert score(solution, oof) == pytest.approx(kept, abs=1e-6) == pytest.approx(result["score"], abs=1e-6)
    # Inference rebuilds the model from the saved config alone.
    cfg = config_lib.load(run / "config.yaml")
    model = build_model(cfg)
    model.load_state_dict(torch.load(run / "best.pt", map_location="cpu", weights_only=True)["model"])
    assert cfg["crop"]["size_px"] == 32 and cfg["fold"] == 0


def test_resume_continues_exactly(base_args):
    args, root = base_args
    overrides = config_lib.parse_overrides(args[2:])
    common = dict(overrides, model="cnn_lstm", epochs=2)

    def cfg_for(runs, **extra):
        return config_lib.resolve("cnn_lstm", "tiny", None, dict(common, runs=str(root / runs), **extra))

    straight = fit(cfg_for("straight"), task_class("classifier"))
    fit(cfg_for("killed", epochs=2) | {"epochs": 1}, task_class("classifier"))  # as if killed after the first epoch
    run = root / "killed" / "cnn_lstm" / "fold0"
    assert torch.load(run / "last.pt", weights_only=True)["state"]["epoch"] == 1
    resumed = fit(cfg_for("killed", resume=True), task_class("classifier"))
    assert pd.read_csv(run / "log.csv")["epoch"].tolist() == [1, 2]
    a = torch.load(root / "straight" / "cnn_lstm" / "fold0" / "last.pt", weights_only=True)["model"]
    b = torch.load(run / "last.pt", weights_only=True)["model"]
    assert all(torch.allclose(a[k].float(), b[k].float(), atol=1e-5) for k in a)
    assert resumed["score"] == pytest.approx(straight["score"], abs=1e-5)


def test_no_temporary_files_left(base_args):
    _, root = base_args
    assert not list(root.rglob("*.tmp")) and not list(root.rglob(".*.tmp*"))


@pytest.mark.parametrize("model, port", [("attn_resnext", 29533), ("cnn_lstm", 29534), ("localizer", 29535)])
def test_torchrun_ddp_two_processes(base_args, synth_dir, model, port):
    """torchrun with 2 CPU processes (gloo): sharded training and validation, one writer, every validation row
    once in oof.csv; the localizer's fits share one process group."""
    import subprocess
    import sys

    args, root = base_args
    runs = root / f"ddp_{model}"
    extra = ["--loc.size_px", "32", "--epochs", "1"] if model == "localizer" else ["--epochs", "1"]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={port}", "train.py",
           "--fold", "1", "--model", model, "--runs", str(runs), *extra, *args]
    done = subprocess.run(cmd, cwd=str(Path(train_script.__file__).parent), capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    names = ["localizer_sagittal_t2", "localizer_sagittal_t1", "localizer_axial"] if model == "localizer" else [model]
    for name in names:
        run = runs / name / "fold1"
        assert pd.read_csv(run / "log.csv")["epoch"].tolist() == [1], name
        assert not (run / ".caches_ready").exists()
    assert done.stdout.count("epoch 1:") == len(names)  # only rank 0 reports
    if model != "localizer":
        oof = pd.read_csv(runs / model / "fold1" / "oof.csv")
        solution = fold_solution(load_train(synth_dir / "train.csv"), load_folds(root / "folds.csv"), 1)
        assert oof["row_id"].is_unique and set(solution["row_id"]) <= set(oof["row_id"])
        # The gathered predictions cover both shards: few rows keep the constant prior (rows without a crop).
        modal = oof.round(6).groupby(oof["row_id"].map(group_of))[list(TARGETS)].transform(lambda c: c.mode()[0])
        assert (oof[list(TARGETS)].round(6) == modal).all(1).mean() < 0.25


def test_rerun_continues_refuses_another_config_and_survives_a_corrupt_last(base_args, capsys):
    args, root = base_args
    runs = str(root / "again")
    cmd = ["--fold", "0", "--model", "cnn_lstm", "--runs", runs, "--epochs", "1", *args]
    train_script.main(cmd)
    run = root / "again" / "cnn_lstm" / "fold0"
    (run / ".last.pt.12345.tmp").write_bytes(b"half")  # as if killed during a write
    train_script.main([*cmd[:-len(args) - 2], "--epochs", "2", *args])  # the same command, trained longer
    out = capsys.readouterr().out
    assert "resumed" in out and pd.read_csv(run / "log.csv")["epoch"].tolist() == [1, 2]
    assert not list(run.glob(".*.tmp*"))
    # Another config in the same folder is refused with one line, unless --restart.
    from src.core.cli import guard

    assert guard(train_script.main, [*cmd, "--lr", "0.5"]) == 2
    assert "another config (lr differ)" in capsys.readouterr().err
    # The same data named by a relative path is the same run; other data is not.
    relative = [os.path.relpath(a) if a == args[args.index("--data-dir") + 1] else a for a in args]
    assert guard(train_script.main, [*cmd[:-len(args) - 2], "--epochs", "2", *relative]) == 0
    elsewhere = root / "elsewhere" / "synth"
    elsewhere.mkdir(parents=True)
    (elsewhere / "train.csv").write_bytes((Path(args[args.index("--data-dir") + 1]) / "train.csv").read_bytes())
    other = [str(elsewhere) if a == args[args.index("--data-dir") + 1] else a for a in args]
    assert guard(train_script.main, [*cmd[:-len(args)], *other]) == 2
    assert "another config (data_dir" in capsys.readouterr().err
    # A runs folder moved elsewhere (another disk) continues where it stopped.
    import shutil

    shutil.copytree(root / "again", root / "moved")
    moved = [str(root / "moved") if a == runs else a for a in cmd]
    assert guard(train_script.main, [*moved[:-len(args) - 2], "--epochs", "3", *args]) == 0
    assert "resumed" in capsys.readouterr().out
    # A finished run is never trained over: the same command says so and changes nothing.
    before = (root / "moved" / "cnn_lstm" / "fold0" / "best.pt").stat().st_mtime_ns
    assert guard(train_script.main, [*moved[:-len(args) - 2], "--epochs", "3", *args]) == 0
    assert "finished at epoch 3" in capsys.readouterr().out
    assert (root / "moved" / "cnn_lstm" / "fold0" / "best.pt").stat().st_mtime_ns == before
    # A run saved before a config key existed (here stem_pool) is the same run while the key is at its default;
    # set otherwise, the key is named.
    saved_file = root / "moved" / "cnn_lstm" / "fold0" / "config.yaml"
    saved = yaml.safe_load(saved_file.read_text())
    saved.pop("stem_pool")
    saved_file.write_text(yaml.safe_dump(saved))
    assert guard(train_script.main, [*moved[:-len(args) - 2], "--epochs", "3", *args]) == 0
    assert "finished at epoch 3" in capsys.readouterr().out
    assert guard(train_script.main, [*moved[:-len(args) - 2], "--epochs", "3", "--stem_pool", "false", *args]) == 2
    assert "another config (stem_pool differ)" in capsys.readouterr().err
    # A corrupt last.pt is set aside; training continues from best.pt at its epoch.
    (run / "last.pt").write_bytes(b"garbage")
    train_script.main([*cmd[:-len(args) - 2], "--epochs", "3", *args])
    out = capsys.readouterr().out
    assert "set aside as last.pt.corrupt" in out and "continuing from best.pt" in out
    assert (run / "last.pt.corrupt").is_file() and torch.load(run / "last.pt", weights_only=True)["state"]["epoch"] == 3
    # With last.pt gone too, the run continues from best.pt rather than from scratch, and writes a new last.pt.
    (run / "last.pt").unlink()
    (run / "done.json").unlink()
    train_script.main([*cmd[:-len(args) - 2], "--epochs", "3", *args])
    out = capsys.readouterr().out
    assert "no last.pt; continuing from best.pt" in out and (run / "last.pt").is_file()
    train_script.main([*cmd[:-len(args) - 2], "--epochs", "3", *args])
    assert "finished at epoch 3" in capsys.readouterr().out
    # --restart alone trains again, and the earlier run is moved aside whole, not overwritten.
    train_script.main([*cmd, "--restart"])
    assert "training from scratch" in capsys.readouterr().out
    assert pd.read_csv(run / "log.csv")["epoch"].tolist() == [1]
    aside = [p for p in run.parent.glob("fold0.before-*")]
    assert len(aside) == 1 and pd.read_csv(aside[0] / "log.csv")["epoch"].max() == 3


def test_bad_fold_or_folds_file_is_one_line_and_leaves_no_folder(base_args, capsys):
    from src.core.cli import guard

    args, root = base_args
    runs = root / "badfold"
    assert guard(train_script.main, ["--fold", "7", "--model", "cnn_lstm", "--runs", str(runs), *args]) == 2
    err = capsys.readouterr().err
    assert "--fold 7:" in err and "holds folds 0, 1, 2, 3, 4" in err and len(err.strip().splitlines()) == 1
    folds_at = args[args.index("--folds") + 1]
    short = root / "short_folds.csv"
    pd.read_csv(folds_at).iloc[1:].to_csv(short, index=False)  # one study without a fold
    other = [str(short) if a == folds_at else a for a in args]
    assert guard(train_script.main, ["--fold", "0", "--model", "cnn_lstm", "--runs", str(runs), *other]) == 2
    err = capsys.readouterr().err
    assert f"{short}: 1 studies of" in err and "have no fold" in err
    assert not runs.exists()


def test_device_augmentation_path_trains_on_cpu_tensors(base_args, monkeypatch):
    """aug.where=device: the loader serves raw crops (with margin) and the batch is augmented on the device."""
    from src.classifier import augment

    args, root = base_args
    seen = []
    real = augment.DeviceAugment.__call__
    monkeypatch.setattr(augment.DeviceAugment, "__call__",
                        lambda self, images, condition: seen.append(images.shape) or real(self, images, condition))
    result = train_script.main(["--fold", "0", "--model", "attn_resnext", "--runs", str(root / "devaug"),
                                "--epochs", "1", "--aug.where", "device", *args])
    assert seen and all(s[1:] == (3, 40, 40) for s in seen)  # 32 px crops stored with a 1.25 margin
    assert pd.read_csv(root / "devaug" / "attn_resnext" / "fold0" / "log.csv")["epoch"].tolist() == [1]
    assert result["score"] == result["score"]  # a number, not NaN


def test_ema_weights_are_validated_saved_and_resumed(base_args):
    """ema_decay > 0: best.pt holds the EMA weights, last.pt carries them, and a continued run picks them up."""
    args, root = base_args
    cmd = ["--fold", "0", "--model", "cnn_lstm", "--runs", str(root / "ema"), "--ema_decay", "0.9",
           "--label_smoothing", "0.1", *args]
    train_script.main([*cmd, "--epochs", "1"])
    run = root / "ema" / "cnn_lstm" / "fold0"
    last = torch.load(run / "last.pt", weights_only=True)
    best = torch.load(run / "best.pt", weights_only=True)["model"]
    assert all(torch.equal(best[k], last["ema"][k]) for k in best)  # validated and saved: the EMA
    assert any(not torch.equal(last["ema"][k], last["model"][k]) for k in best if best[k].is_floating_point())
    train_script.main([*cmd, "--epochs", "2"])
    again = torch.load(run / "last.pt", weights_only=True)
    assert again["state"]["epoch"] == 2 and set(again["ema"]) == set(last["ema"])
    assert config_lib.load(run / "config.yaml")["label_smoothing"] == 0.1


def test_keep_last_keeps_the_end_of_the_schedule(base_args, synth_dir):
    """keep: last: best.pt and oof.csv are the last epoch's whatever the validation scores, patience is unused,
    and a run whose last.pt is lost continues from that epoch."""
    args, root = base_args
    cmd = ["--fold", "0", "--model", "cnn_lstm", "--runs", str(root / "keep"), "--keep", "last", "--patience", "1",
           *args]
    result = train_script.main([*cmd, "--epochs", "3"])
    run = root / "keep" / "cnn_lstm" / "fold0"
    log = pd.read_csv(run / "log.csv")
    assert log["epoch"].tolist() == [1, 2, 3] and result["best_epoch"] == 3
    assert result["score"] == pytest.approx(log["score"].iloc[-1], abs=1e-9)
    last = torch.load(run / "last.pt", weights_only=True)["model"]
    best = torch.load(run / "best.pt", weights_only=True)["model"]
    assert all(torch.equal(best[k], last[k]) for k in best)
    solution = fold_solution(load_train(synth_dir / "train.csv"), load_folds(root / "folds.csv"), 0)
    assert score(solution, load_submission(run / "oof.csv")) == pytest.approx(log["score"].iloc[-1], abs=1e-6)
    (run / "last.pt").unlink()
    train_script.main([*cmd, "--epochs", "4"])
    assert pd.read_csv(run / "log.csv")["epoch"].tolist() == [1, 2, 3, 4]


@pytest.mark.filterwarnings("ignore")
def test_study_model_trains_and_infer_uses_it(base_args, synth_dir, tmp_path):
    """task 'study': one item per study, every crop of it; its oof.csv covers the fold like a classifier's,
    the run is an ensemble member, and infer.py runs it over each study's crops together."""
    from conftest import make_fake_runs

    import infer as infer_script
    from src.core.run_folders import classifier_runs

    args, root = base_args
    runs = make_fake_runs(tmp_path / "runs", classifiers=False)
    result = train_script.main(["--fold", "0", "--model", "study", "--runs", str(runs), "--epochs", "1",
                                "--study.layers", "1", *args])
    assert result["score"] == result["score"]
    run = runs / "study" / "fold0"
    oof = load_submission(run / "oof.csv")
    solution = fold_solution(load_train(synth_dir / "train.csv"), load_folds(root / "folds.csv"), 0)
    assert set(solution["row_id"]) <= set(oof["row_id"])
    assert classifier_runs(runs) == ["study"]
    out = tmp_path / "sub" / "submission.csv"
    code = infer_script.main(["--data-dir", str(synth_dir), "--runs", str(runs), "--out", str(out), "--strict",
                              "--cache-dir", str(root / "cache_infer"), "--workers", "1"])
    assert code == 0
    sub = load_submission(out)
    assert sub["row_id"].tolist() == load_submission(synth_dir / "sample_submission.csv")["row_id"].tolist()
    assert sub[list(TARGETS)].round(6).drop_duplicates().shape[0] > 3  # the study model predicted


@pytest.mark.parametrize("failure", ["enospc", "torch_mid_write"])
def test_a_full_disk_ends_training_in_one_line_and_keeps_the_last_checkpoint(base_args, capsys, monkeypatch, failure):
    """An injected OSError(ENOSPC), or torch.save dying mid-write as on a full disk (half a file, then torch's
    RuntimeError): one line naming the file, exit 2, no traceback; last.pt stays the previous epoch's."""
    import errno

    from src.core.cli import guard

    args, root = base_args
    cmd = ["--fold", "0", "--model", "cnn_lstm", "--runs", str(root / f"full_{failure}"), *args]
    assert guard(train_script.main, [*cmd, "--epochs", "1"]) == 0
    run = root / f"full_{failure}" / "cnn_lstm" / "fold0"
    real_save = torch.save

    def full_disk(obj, path, *a, **k):
        if failure == "enospc":
            raise OSError(errno.ENOSPC, "No space left on device")
        Path(path).write_bytes(b"PK\x03\x04 half a checkpoint")
        raise RuntimeError("[enforce fail at inline_container.cc:603] . unexpected pos 4736 vs 4624")

    monkeypatch.setattr(torch, "save", full_disk)
    capsys.readouterr()
    assert guard(train_script.main, [*cmd, "--epochs", "2"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "Traceback" not in err, err
    assert (str(run / "best.pt") in err or str(run / "last.pt") in err), err
    assert ("No space left on device" if failure == "enospc" else "unexpected pos") in err
    monkeypatch.setattr(torch, "save", real_save)
    assert torch.load(run / "last.pt", weights_only=True)["state"]["epoch"] == 1
    assert not list(run.glob(".*.tmp*"))
    assert guard(train_script.main, [*cmd, "--epochs", "2"]) == 0  # room again: it continues from epoch 1
    assert pd.read_csv(run / "log.csv")["epoch"].tolist() == [1, 2]


def test_a_recipe_warm_starts_its_study_model_from_a_run_it_trains_first(base_args, tmp_path, monkeypatch):
    """`study.init_from: cnn_lstm` in a recipe: the same fold's cnn_lstm best.pt of the same runs folder, checked
    only once it exists; with --jobs 2 the study waits for that training."""
    args, root = base_args
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("preset: tiny\npipeline: [cnn_lstm, study]\nepochs: 1\n"
                      "per_model:\n  study: {study: {crop_model: cnn_lstm, init_from: cnn_lstm}}\n")
    runs = tmp_path / "runs"
    done = train_script.main(["--pipeline", "--jobs", "1", "--fold", "0", "--config", str(recipe), "--runs", str(runs),
                              *args])
    assert set(done) == {"cnn_lstm", "study"}
    saved = config_lib.load(runs / "study" / "fold0" / "config.yaml")
    assert Path(saved["study"]["init_from"]) == runs / "cnn_lstm" / "fold0" / "best.pt"
    started = {}
    monkeypatch.setattr(train_script, "run_jobs", lambda jobs, n: started.update({j.name: j.needs for j in jobs}) or {})
    assert train_script.main(["--pipeline", "--jobs", "2", "--fold", "0", "--config", str(recipe),
                              "--runs", str(tmp_path / "fresh"), *args]) == 0
    assert started == {"cnn_lstm": (), "study": ("cnn_lstm",)}


def test_pipeline_trains_every_model_of_a_recipe_two_at_once_or_in_this_process(base_args, tmp_path, capsys):
    """train.py --pipeline: --jobs 2 runs each model as a train.py process of its own (output lines tagged with
    the run's name after their time stamp, exit code 0); --jobs 1 trains them one after the other in this
    process; --model and a bad --jobs are refused."""
    args, root = base_args
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("preset: tiny\npipeline: [attn_resnext, cnn_lstm]\nepochs: 1\n")
    runs = tmp_path / "runs"
    code = train_script.main(["--pipeline", "--jobs", "2", "--fold", "0", "--config", str(recipe), "--runs", str(runs), *args])
    out = capsys.readouterr().out
    assert code == 0 and "2 trainings, 2 at once" in out and "2 trainings done" in out
    assert any(line[:4].isdigit() and " [cnn_lstm] cnn_lstm fold 0 epoch 1: train_loss" in line for line in out.splitlines())
    for model in ("attn_resnext", "cnn_lstm"):
        saved = yaml.safe_load((runs / model / "fold0" / "config.yaml").read_text())
        assert (runs / model / "fold0" / "best.pt").is_file() and saved["workers"] == 0  # the command's own --workers
    here = train_script.main(["--pipeline", "--jobs", "1", "--fold", "0", "--config", str(recipe),
                              "--runs", str(tmp_path / "runs1"), *args])
    assert set(here) == {"attn_resnext", "cnn_lstm"} and all(r["best_epoch"] == 1 for r in here.values())
    with pytest.raises(config_lib.ConfigError, match="--pipeline trains each model"):
        train_script.main(["--pipeline", "--model", "cnn_lstm", "--config", str(recipe), *args])
    with pytest.raises(config_lib.ConfigError, match="--jobs none: expected auto or a count"):
        train_script.main(["--pipeline", "--jobs", "none", "--config", str(recipe), *args])
