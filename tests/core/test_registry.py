"""One registration names a model everywhere: the config's defaults, the runs listing, training and inference."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from src.classifier.models import CropClassifier
from src.core import config as config_lib
from src.core import registry
from src.core.atomic import save_torch
from src.core.run_folders import BEST, CONFIG, classifier_runs, run_dir
from src.training.checkpoint import load_model


class _Constant(CropClassifier):
    def __init__(self, bias: float):
        super().__init__()
        self.bias = nn.Parameter(torch.tensor([bias, 0.0, 0.0]))

    def forward(self, image, condition, level):
        return self.bias.expand(len(image), 3)


@pytest.fixture()
def toy_model():
    """A model registered in one place (and removed again after the test)."""
    @registry.register_model("toy", task="classifier", defaults={"epochs": 3, "hidden": 7})
    def toy(cfg: dict) -> nn.Module:
        return _Constant(float(cfg["hidden"]))

    yield "toy"
    registry._MODELS.pop("toy")


def test_every_shipped_model_is_registered_with_its_task():
    assert registry.model_names() == ["attn_resnext", "cnn_lstm", "localizer", "plain_cnn", "study"]
    assert {n: registry.model_entry(n).task for n in registry.model_names()} == {
        "attn_resnext": "classifier", "cnn_lstm": "classifier", "localizer": "localizer", "plain_cnn": "classifier",
        "study": "study"}
    assert [n for n in registry.model_names() if registry.model_entry(n).member] == [
        "attn_resnext", "cnn_lstm", "plain_cnn", "study"]
    from src.tasks import task_class

    assert task_class("study").__name__ == "StudyTask"


def test_one_registration_reaches_config_runs_and_loading(toy_model, tmp_path):
    cfg = config_lib.resolve("toy", None, None, {"runs": str(tmp_path), "hidden": 5, "crop": {"n_slices": 3}})
    assert (cfg["task"], cfg["epochs"], cfg["hidden"]) == ("classifier", 3, 5)  # its defaults, then the overrides
    assert config_lib.resolve("toy")["epochs"] == 3
    run = run_dir(tmp_path, "toy", 0)
    run.mkdir(parents=True)
    config_lib.save(cfg, run / CONFIG)
    save_torch({"model": registry.build_model(cfg).state_dict()}, run / BEST)
    assert classifier_runs(tmp_path) == ["toy"]  # a member's run, listed by its registration
    model, _ = load_model(run, torch.device("cpu"))
    logits = model.row_logits(torch.zeros(2, 3, 8, 8), torch.zeros(2, dtype=torch.long), torch.zeros(2, dtype=torch.long),
                              torch.zeros(2, dtype=torch.long))
    assert logits[:, 0].tolist() == [5.0, 5.0]


def test_unknown_and_twice_registered_models_are_named():
    with pytest.raises(config_lib.ConfigError, match="unknown model 'nope'; known: .*attn_resnext"):
        config_lib.resolve("nope")
    with pytest.raises(ValueError, match="'cnn_lstm' is registered twice"):
        registry.register_model("cnn_lstm", task="classifier")(lambda cfg: None)


def test_a_localizer_run_is_no_ensemble_member():
    assert not registry.is_member({"model": "localizer"})
    assert registry.is_member({"model": "study"})
    assert not registry.is_member({"model": "gone"})  # a run of a model no longer registered is skipped


def test_reading_the_registry_before_src_registry_is_loud(tmp_path):
    """A library user who skips `import src.registry` gets an error naming it, never an empty runs listing."""
    import subprocess
    import sys
    from pathlib import Path

    code = "from src.core import config; config.resolve('attn_resnext')"
    done = subprocess.run([sys.executable, "-c", code], cwd=Path(__file__).resolve().parents[2], capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 1
    assert "NotRegistered: the model registry was read before every model was registered: import src.registry" in done.stderr
