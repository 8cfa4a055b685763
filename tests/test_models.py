import timm
import torch

from src.config import resolve
from src.models import AttnResNeXt, build_model


def _batch(cfg, n=4):
    s, p = cfg["crop"]["n_slices"], cfg["crop"]["size_px"]
    g = torch.Generator().manual_seed(0)
    return torch.rand(n, s, p, p, generator=g), torch.tensor([0, 1, 3, 4])[:n], torch.tensor([4, 0, 2, 1])[:n]


def test_shapes_and_finite_outputs():
    for name in ("attn_resnext", "cnn_lstm", "plain_cnn"):
        cfg = resolve(name, "tiny")
        model = build_model(cfg).eval()
        logits = model(*_batch(cfg))
        assert logits.shape == (4, 3) and torch.isfinite(logits).all()
        probs = torch.softmax(logits, 1)
        assert torch.allclose(probs.sum(1), torch.ones(4))


def test_full_size_configs_build_and_run():
    """The default (full-size) configs that `make demo FULL=1` trains: resnext50_32x4d, resnet18, 256 px heatmaps."""
    for name in ("attn_resnext", "cnn_lstm"):
        cfg = resolve(name)
        assert cfg["crop"]["n_slices"] == 5 and cfg["crop"]["size_px"] == 128
        model = build_model(cfg).eval()
        with torch.no_grad():
            logits = model(*_batch(cfg, 2))
        assert logits.shape == (2, 3) and torch.isfinite(logits).all()
    assert resolve("attn_resnext")["backbone"] == "resnext50_32x4d"
    cfg = resolve("localizer", overrides={"series_type": "sagittal_t2"})
    size = cfg["loc"]["size_px"]
    with torch.no_grad():
        heat = build_model(cfg).eval()(torch.rand(1, 3, size, size))
    assert heat.shape == (1, 6, size // 2, size // 2)  # five levels and every level together


def test_attention_maps_kept_and_in_unit_range():
    cfg = resolve("attn_resnext", "tiny")
    model = build_model(cfg).eval()
    model(*_batch(cfg))
    stem_map = model.att_stem.spatial.last_map
    assert stem_map.shape[:2] == (4, 1) and stem_map.shape[-1] == cfg["crop"]["size_px"] // 2
    assert 0 <= float(stem_map.min()) and float(stem_map.max()) <= 1
    # The condition/level embedding changes the output for the same image.
    img, _, _ = _batch(cfg, 1)
    a = model(img, torch.tensor([0]), torch.tensor([0]))
    b = model(img, torch.tensor([3]), torch.tensor([4]))
    assert not torch.allclose(a, b)


def test_tiny_batch_overfits():
    torch.manual_seed(0)
    for name in ("attn_resnext", "cnn_lstm"):
        cfg = resolve(name, "tiny", overrides={"drop": 0.0})
        model = build_model(cfg)
        x, c, lv = _batch(cfg)
        y = torch.tensor([0, 1, 2, 1])
        opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
        losses = []
        for _ in range(40):
            loss = torch.nn.functional.cross_entropy(model(x, c, lv), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(loss.item())
        assert losses[-1] < 0.25 * losses[0], (name, losses[0], losses[-1])


def test_pretrained_weights_from_local_file(tmp_path):
    reference = timm.create_model("resnet10t", pretrained=False, num_classes=0, channels=(16, 32, 64, 128))
    path = tmp_path / "backbone.pth"
    torch.save(reference.state_dict(), path)
    model = AttnResNeXt("resnet10t", in_chans=3, pretrained=str(path), model_kwargs={"channels": (16, 32, 64, 128)})
    assert torch.equal(model.net.layer1[0].conv1.weight, reference.layer1[0].conv1.weight)


def test_non_resnet_backbone_rejected():
    try:
        AttnResNeXt("mobilenetv3_small_050", in_chans=3)
    except ValueError as err:
        assert "not a timm ResNet" in str(err)
    else:
        raise AssertionError("expected a ValueError")


def test_plain_cnn_baseline_is_four_conv_blocks():
    cfg = resolve("plain_cnn", "tiny")
    model = build_model(cfg)
    convs = [m for m in model.features if isinstance(m, torch.nn.Conv2d)]
    pools = [m for m in model.features if isinstance(m, torch.nn.MaxPool2d)]
    assert len(convs) == 8 and len(pools) == 4 and [c.out_channels for c in convs[1::2]] == [16, 32, 64, 128]
    assert convs[0].in_channels == cfg["crop"]["n_slices"] and cfg["task"] == "classifier"
