"""Trained models rebuilt from their run folders (training.checkpoint)."""
import pytest
import torch
from conftest import make_fake_runs

from src.core.run_folders import RunFileError, run_dir
from src.training.checkpoint import load_model


def test_load_model_rebuilds_from_the_run_alone(tmp_path):
    runs = make_fake_runs(tmp_path / "runs")
    model, cfg = load_model(run_dir(runs, "attn_resnext", 0), torch.device("cpu"))
    assert not model.training and cfg["model"] == "attn_resnext"
    saved = torch.load(run_dir(runs, "attn_resnext", 0) / "best.pt", weights_only=True)["model"]
    assert all(torch.equal(v, saved[k]) for k, v in model.state_dict().items())


def test_a_run_that_does_not_load_is_named_with_its_file(tmp_path):
    runs = make_fake_runs(tmp_path / "runs", folds=(0, 1))
    path = run_dir(runs, "attn_resnext", 1) / "config.yaml"
    path.write_text(path.read_text() + "lrr: 3\n")
    with pytest.raises(RunFileError, match=r"unknown config key 'lrr' \(did you mean 'lr'\?\)"):
        load_model(run_dir(runs, "attn_resnext", 1), torch.device("cpu"))
    (run_dir(runs, "attn_resnext", 0) / "best.pt").write_bytes(b"x" * 10)
    with pytest.raises(RunFileError, match=r"attn_resnext/fold0/best.pt: does not load \(\w+"):
        load_model(run_dir(runs, "attn_resnext", 0), torch.device("cpu"))
