import subprocess
import sys
import time

import pytest
import torch
from conftest import REPO


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is here: make gpu-check measures it")
def test_gpu_check_exits_at_once_without_a_gpu(tmp_path):
    started = time.time()
    done = subprocess.run([sys.executable, "gpu_check.py", "--out", str(tmp_path / "g.json"),
                           "--data-dir", str(tmp_path / "data")], cwd=REPO, capture_output=True, text=True)
    assert done.returncode == 0 and "no CUDA GPU on this machine: nothing measured" in done.stdout
    assert not (tmp_path / "g.json").exists() and not (tmp_path / "data").exists()
    assert time.time() - started < 60


def test_bench_train_covers_every_model_of_the_recipe():
    """The GPU check's samples/s rows: the same training step as bench.py, here on CPU tensors, tiny models."""
    sys.path.insert(0, str(REPO))
    import bench

    metrics: dict = {}
    for cfg in bench.train_configs("tiny"):
        cfg.update(batch_size=2, crop=dict(cfg["crop"], size_px=32), loc=dict(cfg["loc"], size_px=32))
        bench.bench_train(cfg, 1, metrics)
    assert set(metrics["train"]) == {"attn_resnext", "cnn_lstm", "localizer_sagittal_t2", "localizer_sagittal_t1",
                                     "localizer_axial"}
    assert all(m["samples_per_s"] > 0 and m["peak_gib"] is None for m in metrics["train"].values())
