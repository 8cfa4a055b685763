import torch

from src.core import config as config_lib
from src.core import parallel
from src.training.engine import _loaders


def test_no_loader_process_where_it_would_take_a_core_from_the_models(monkeypatch):
    monkeypatch.setattr(parallel, "default_workers", lambda reserve=0: 2)
    assert parallel.loader_workers(2, "cpu") == 0 and parallel.loader_workers(2, "cuda") == 1
    monkeypatch.setattr(parallel, "default_workers", lambda reserve=0: 16)
    assert parallel.loader_workers(16, "cpu") == 15 and not parallel.loader_competes("cpu")


def test_training_loaders_take_the_configs_count():
    data = torch.utils.data.TensorDataset(torch.zeros(8, 1))
    cfg = config_lib.resolve("attn_resnext", "tiny", None, {"workers": 3})
    train, _, _ = _loaders(cfg, data, data, 1, 0, torch.device("cpu"))
    assert train.num_workers == 3
    train, _, _ = _loaders({**cfg, "loader_workers": 0}, data, data, 1, 0, torch.device("cpu"))
    assert train.num_workers == 0
