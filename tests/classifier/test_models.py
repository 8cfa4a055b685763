import pytest
import timm
import torch

from src.classifier.models import CNNLSTM, AttnResNeXt
from src.core.config import resolve
from src.core.registry import build_model


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


def test_the_ordinal_head_gives_ordered_grades_and_its_weighted_loss_fits_calibrated_ones():
    from src.classifier.models import OrdinalLogits

    for name in ("attn_resnext", "cnn_lstm", "plain_cnn"):  # every per-crop model takes it
        cfg = resolve(name, "tiny", overrides={"head": "ordinal"})
        logits = build_model(cfg).eval()(*_batch(cfg))
        assert logits.shape == (4, 3) and torch.isfinite(logits).all()
    head = OrdinalLogits((1.0, 2.0, 4.0))
    z = torch.tensor([[-3.0, 0.5], [0.0, 0.5], [3.0, 0.5], [3.0, 5.0]])
    p = torch.softmax(head(z) - head.log_weights, 1)
    assert torch.allclose(p.sum(1), torch.ones(4))
    assert (p[:, 1:].sum(1) > p[:, 2]).all() and p[0, 0] > 0.9 and p[2, 2] > 0.5  # a higher score: worse grades
    assert p[3].max() < p[2].max()  # a wider spread: less sure
    # The expected weighted cross-entropy of grades drawn from `truth`, minimised over one crop's score and
    # spread and the threshold: the head's grades come out as `truth`, its softmax as the metric's optimum.
    truth, w = torch.tensor([0.6, 0.3, 0.1]), torch.tensor([1.0, 2.0, 4.0])
    z = torch.zeros(1, 2, requires_grad=True)
    opt = torch.optim.Adam([z, *head.parameters()], lr=0.05)
    for _ in range(600):
        opt.zero_grad()
        loss = -(w * truth * torch.log_softmax(head(z), 1)).sum()
        loss.backward()
        opt.step()
    with torch.no_grad():
        assert torch.allclose(torch.softmax(head(z) - head.log_weights, 1)[0], truth, atol=0.01)
        assert torch.allclose(torch.softmax(head(z), 1)[0], w * truth / (w * truth).sum(), atol=0.01)
    with pytest.raises(ValueError, match="head must be mlp or ordinal"):
        build_model(dict(resolve("cnn_lstm", "tiny"), head="linear"))


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


def test_attention_maps_on_request_and_in_unit_range():
    cfg = resolve("attn_resnext", "tiny")
    model = build_model(cfg).eval()
    batch = _batch(cfg)
    with torch.no_grad():
        shown, plain = model(*batch, return_attention=True), model(*batch)
    stem_map = shown["attention"]
    assert stem_map.shape[:2] == (4, 1) and stem_map.shape[-1] == cfg["crop"]["size_px"] // 2
    assert 0 <= float(stem_map.min()) and float(stem_map.max()) <= 1
    assert torch.equal(shown["logits"], plain) and not any(isinstance(v, torch.Tensor) for v in vars(model).values())
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


def test_stem_pool_off_keeps_every_stage_at_twice_the_resolution():
    """stem_pool: false drops the ResNet stem's max-pool in both papers' models: the same weights, logits of
    the same shape, the last stage's map twice as wide (a 64 px crop: 2 -> 4 px); a backbone without one is
    refused by name."""
    from src.core.config import ConfigError
    from src.training.backbone import create_backbone

    for name in ("attn_resnext", "cnn_lstm"):
        pooled, unpooled = resolve(name, "tiny"), resolve(name, "tiny", None, {"stem_pool": False})
        a, b = build_model(pooled).eval(), build_model(unpooled).eval()
        assert a.state_dict().keys() == b.state_dict().keys()
        logits = b(*_batch(unpooled))
        assert logits.shape == (4, 3) and torch.isfinite(logits).all()
    net = create_backbone("resnet10t", None, 3, stem_pool=False, num_classes=0, global_pool="",
                          channels=[8, 8, 8, 8], stem_width=8)
    pooled = create_backbone("resnet10t", None, 3, num_classes=0, global_pool="", channels=[8, 8, 8, 8], stem_width=8)
    x = torch.rand(1, 3, 64, 64)
    assert net(x).shape[-1] == 4 and pooled(x).shape[-1] == 2
    with pytest.raises(ConfigError, match="stem_pool.*no stem max-pool"):
        create_backbone("efficientnet_b0", None, 3, stem_pool=False)


def test_plain_cnn_baseline_is_four_conv_blocks():
    cfg = resolve("plain_cnn", "tiny")
    model = build_model(cfg)
    convs = [m for m in model.features if isinstance(m, torch.nn.Conv2d)]
    pools = [m for m in model.features if isinstance(m, torch.nn.MaxPool2d)]
    assert len(convs) == 8 and len(pools) == 4 and [c.out_channels for c in convs[1::2]] == [16, 32, 64, 128]
    assert convs[0].in_channels == cfg["crop"]["n_slices"] and cfg["task"] == "classifier"


def test_study_model_sees_a_study_at_once_and_masks_missing_crops():
    from src.classifier.models import StudyModel, positions

    cfg = resolve("study", "tiny", overrides={"crop": {"size_px": 32}})
    model = build_model(cfg).eval()
    assert isinstance(model, StudyModel) and cfg["batch_size"] == 8  # studies per batch under tiny
    torch.manual_seed(0)
    for p in model.out.parameters():  # trained corrections, not the zero start
        torch.nn.init.normal_(p, std=0.5)
    c, lv = (t.repeat(2).view(2, -1) for t in positions())
    x = torch.rand(2, 25, 3, 32, 32)
    mask = torch.ones(2, 25, dtype=torch.bool)
    mask[1, 20:] = False
    with torch.no_grad():
        out = model(x, c, lv, mask)
        y = x.clone()
        y[1, 20:] = torch.rand(5, 3, 32, 32)  # what lies at masked positions changes nothing else
        again = model(y, c, lv, mask)
        assert out.shape == (2, 25, 3) and torch.allclose(out[1, :20], again[1, :20], atol=1e-5)
        y[1, 3] = 0.0  # a present crop changes the others of its study (attention across crops), not other studies
        third = model(y, c, lv, mask)
        assert not torch.allclose(third[1, 5], again[1, 5]) and torch.allclose(third[0], again[0], atol=1e-5)
        # Inference's flat rows of two studies give the same logits as the study batch.
        keep = torch.tensor([0, 7, 24])
        flat = torch.cat([x[0], x[1, keep]])
        study = torch.cat([torch.zeros(25, dtype=torch.long), torch.ones(3, dtype=torch.long)])
        rows = model.row_logits(flat, torch.cat([c[0], c[1, keep]]), torch.cat([lv[0], lv[1, keep]]), study)
        sub = torch.zeros(1, 25, dtype=torch.bool)
        sub[0, keep] = True
        alone = model(x[1:2], c[1:2], lv[1:2], sub)[0, keep]
        assert torch.allclose(rows[:25], model(x[:1], c[:1], lv[:1], torch.ones(1, 25, dtype=torch.bool))[0], atol=1e-5)
        assert torch.allclose(rows[25:], alone, atol=1e-5)


def test_study_model_starts_from_a_trained_per_crop_run(tmp_path):
    crop_cfg = resolve("attn_resnext", "tiny")
    crop = build_model(crop_cfg)
    torch.save({"model": crop.state_dict()}, tmp_path / "best.pt")
    study = build_model(resolve("study", "tiny", overrides={"study": {"init_from": str(tmp_path / "best.pt")}}))
    assert all(torch.equal(v, crop.state_dict()[k]) for k, v in study.crop.state_dict().items())
    x = torch.rand(1, 25, 3, 64, 64)
    from src.classifier.models import positions

    c, lv = (t.view(1, -1) for t in positions())
    with torch.no_grad():  # the correction starts at zero: the study model starts as the per-crop model
        same = crop.eval()(x[0], c[0], lv[0])
        assert torch.allclose(study.eval()(x, c, lv, torch.ones(1, 25, dtype=torch.bool))[0], same, atol=1e-5)


def test_study_model_with_a_frozen_crop_model_trains_only_the_transformer():
    from src.classifier.models import positions

    study = build_model(resolve("study", "tiny", overrides={"study": {"freeze_crop": True}, "crop": {"size_px": 32}}))
    crop_before = {k: v.clone() for k, v in study.crop.state_dict().items()}
    rest_before = {k: v.clone() for k, v in study.state_dict().items() if not k.startswith("crop.")}
    study.train()
    assert not study.crop.training and study.context.training  # batch norm of the crop model keeps its statistics
    optimizer = torch.optim.AdamW([p for p in study.parameters() if p.requires_grad], lr=1e-2)
    c, lv = (t.repeat(2).view(2, -1) for t in positions())
    for _ in range(2):  # the zero-initialised output layer moves first, then what feeds it
        loss = study(torch.rand(2, 25, 3, 32, 32), c, lv, torch.ones(2, 25, dtype=torch.bool)).square().mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert all(torch.equal(v, crop_before[k]) for k, v in study.crop.state_dict().items())
    moved = [k for k, v in study.state_dict().items() if k in rest_before and not torch.equal(v, rest_before[k])]
    assert any(k.startswith("context.") for k in moved) and any(k.startswith("out.") for k in moved)
    # Without the key the crop model learns too.
    free = build_model(resolve("study", "tiny", overrides={"crop": {"size_px": 32}}))
    assert all(p.requires_grad for p in free.crop.parameters()) and free.train().crop.training


TINY_BACKBONE = {"channels": (16, 32, 64, 128), "stem_width": 16}


def fake_hub_cache(root, name: str = "resnet10t", kwargs: dict = TINY_BACKBONE) -> dict:
    """A Hugging Face cache holding timm's pretrained weights of `name` as `hf_hub_download` lays them out
    (refs/main -> snapshots/<commit>/model.safetensors), filled with random tensors; returns them."""
    from safetensors.torch import save_file

    reference = timm.create_model(name, pretrained=False, **kwargs)
    state = {k: v.contiguous() for k, v in reference.state_dict().items()}
    repo = root / f"models--timm--{reference.pretrained_cfg['hf_hub_id'].split('/')[1]}"
    snapshot = repo / "snapshots" / ("0" * 40)
    snapshot.mkdir(parents=True)
    save_file(state, str(snapshot / "model.safetensors"))
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("0" * 40)
    return state


def offline_hub(monkeypatch, root):
    """timm's downloads answered from `root` alone, as with HF_HUB_OFFLINE=1 and a filled cache."""
    import huggingface_hub.constants as hub

    monkeypatch.setattr(hub, "HF_HUB_CACHE", str(root))
    monkeypatch.setattr(hub, "HF_HUB_OFFLINE", True)


def test_pretrained_true_loads_timms_weights_from_the_hub_cache_offline(tmp_path, monkeypatch, capsys):
    from timm.models import adapt_input_conv

    state = fake_hub_cache(tmp_path)
    offline_hub(monkeypatch, tmp_path)
    model = AttnResNeXt("resnet10t", in_chans=5, pretrained=True, model_kwargs=TINY_BACKBONE)
    assert torch.equal(model.net.layer3[0].conv2.weight, state["layer3.0.conv2.weight"])
    assert torch.equal(model.net.conv1[0].weight, adapt_input_conv(5, state["conv1.0.weight"]))
    message = capsys.readouterr().out
    assert "timm/resnet10t.c3_in1k" in message and "adapted from 3 to 5 input channels" in message
    lstm = CNNLSTM("resnet10t", pretrained=True, model_kwargs=TINY_BACKBONE)  # one channel: RGB summed
    assert torch.allclose(lstm.encoder.conv1[0].weight, state["conv1.0.weight"].sum(1, keepdim=True))


def test_pretrained_without_network_or_cache_is_one_line(tmp_path, monkeypatch):
    from src.core.config import ConfigError

    offline_hub(monkeypatch, tmp_path)  # an empty cache
    with pytest.raises(ConfigError, match="pretrained: backbone 'resnet10t': timm's pretrained weights do not load"):
        AttnResNeXt("resnet10t", in_chans=3, pretrained=True, model_kwargs=TINY_BACKBONE)
    with pytest.raises(ConfigError, match="no such weights file"):
        AttnResNeXt("resnet10t", in_chans=3, pretrained=str(tmp_path / "missing.pth"), model_kwargs=TINY_BACKBONE)


def test_fetch_weights_writes_each_backbone_of_a_recipe_and_a_folder_serves_them(tmp_path, monkeypatch):
    import fetch_weights

    state = fake_hub_cache(tmp_path / "hub")
    offline_hub(monkeypatch, tmp_path / "hub")
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("preset: tiny\npipeline: [attn_resnext, cnn_lstm]\nper_model:\n  cnn_lstm: {backbone: resnet10t}\n")
    assert fetch_weights.main(["--config", str(recipe), "--out", str(tmp_path / "weights")]) == 0
    assert sorted(p.name for p in (tmp_path / "weights").iterdir()) == ["resnet10t.pth"]
    monkeypatch.setattr(__import__("huggingface_hub.constants").constants, "HF_HUB_CACHE", str(tmp_path / "empty"))
    cfg = resolve("cnn_lstm", None, recipe, {"pretrained": str(tmp_path / "weights")})
    model = build_model(cfg)
    assert torch.equal(model.encoder.layer4[0].conv1.weight, state["layer4.0.conv1.weight"])
