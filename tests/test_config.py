import pytest

from src.config import DEFAULTS, parse_overrides, resolve


def test_override_order_and_parsing(tmp_path):
    cfg_file = tmp_path / "exp.yaml"
    cfg_file.write_text("lr: 0.0005\ncrop:\n  size_px: 96\n")
    cfg = resolve("cnn_lstm", "tiny", cfg_file, parse_overrides(["--crop.size_px", "80", "--amp", "none"]))
    assert cfg["backbone"] == "resnet10t"  # preset beats the model default
    assert cfg["lr"] == 0.0005  # file beats preset
    assert cfg["crop"]["size_px"] == 80 and cfg["crop"]["n_slices"] == 3  # flag beats file, siblings kept
    assert cfg["amp"] == "none" and cfg["name"] == "cnn_lstm"
    assert DEFAULTS["crop"]["size_px"] == 128  # defaults untouched


def test_unknown_keys_and_names_fail():
    with pytest.raises(KeyError, match="unknown config key 'learning_rate'"):
        resolve("attn_resnext", overrides={"learning_rate": 1})
    with pytest.raises(KeyError, match="unknown model"):
        resolve("vit")
    with pytest.raises(KeyError, match="unknown preset"):
        resolve("attn_resnext", "huge")
    with pytest.raises(ValueError, match="--key value"):
        parse_overrides(["--lr"])


def test_workers_auto_follows_the_machine(monkeypatch):
    monkeypatch.setattr("os.sched_getaffinity", lambda pid: set(range(32)))
    assert resolve("attn_resnext")["workers"] == 31  # one CPU left to the process feeding the GPU; no cap
    monkeypatch.setattr("os.sched_getaffinity", lambda pid: {0})
    assert resolve("attn_resnext")["workers"] == 1
    assert resolve("attn_resnext", overrides={"workers": 0})["workers"] == 0  # an explicit count is kept
