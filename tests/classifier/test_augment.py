import numpy as np
import pytest
import torch

from src.classifier.augment import DeviceAugment, train_transform, use_device_path
from src.core.config import DEFAULTS
from src.core.constants import CONDITIONS

AUG = DEFAULTS["aug"]


INTENSITY = dict(AUG, gamma=[0.7, 1.4], contrast=0.2, brightness=0.1, intensity_p=0.5)


def _params(n=1, angle=0.0, scale=1.0, tx=0.0, ty=0.0, flip=False, sigma=0.0, vflip=False, gamma=1.0, alpha=1.0,
            beta=0.0):
    full = lambda v: torch.full((n,), float(v))  # noqa: E731
    return {"angle": full(angle), "scale": full(scale), "tx": full(tx), "ty": full(ty),
            "flip": torch.full((n,), bool(flip)), "vflip": torch.full((n,), bool(vflip)), "sigma": full(sigma),
            "gamma": full(gamma), "alpha": full(alpha), "beta": full(beta)}


def _crops(b=2, s=3, p=10):
    return torch.rand(b, s, p, p, generator=torch.Generator().manual_seed(0))


def test_known_parameters_give_the_expected_geometry():
    aug = DeviceAugment(AUG, 8)
    x = _crops(p=10)
    centre = x[..., 1:9, 1:9]
    assert torch.allclose(aug.apply(x, _params(2)), centre, atol=1e-5)  # identity: the centre crop, size kept
    assert torch.allclose(aug.apply(x, _params(2, flip=True)), centre.flip(-1), atol=1e-5)
    assert torch.allclose(aug.apply(x, _params(2, vflip=True)), centre.flip(-2), atol=1e-5)
    assert torch.allclose(aug.apply(x, _params(2, flip=True, vflip=True)), centre.flip(-1, -2), atol=1e-5)
    assert torch.allclose(aug.apply(x, _params(2, angle=90, vflip=True)), torch.rot90(centre, 1, (-2, -1)).flip(-2),
                          atol=1e-5)  # rotated, then flipped
    assert torch.allclose(aug.apply(x, _params(2, angle=90)), torch.rot90(centre, 1, (-2, -1)), atol=1e-5)
    # Translation by 0.1 of the 10 px crop moves the content one pixel right (down for ty).
    assert torch.allclose(aug.apply(x, _params(2, tx=0.1)), x[..., 1:9, 0:8], atol=1e-5)
    assert torch.allclose(aug.apply(x, _params(2, ty=0.1)), x[..., 0:8, 1:9], atol=1e-5)
    # The intensity where the settings ask for it: x ** gamma, then x * alpha + beta, clipped to [0, 1]; where
    # they do not, apply never looks at the draws (a test on them would wait for the device every batch).
    lit = DeviceAugment(INTENSITY, 8)
    assert torch.allclose(lit.apply(x, _params(2, gamma=2.0)), centre ** 2, atol=1e-5)
    assert torch.allclose(lit.apply(x, _params(2, alpha=1.5, beta=-0.1)), (centre * 1.5 - 0.1).clamp(0, 1), atol=1e-5)
    assert torch.allclose(lit.apply(x, _params(2)), centre, atol=1e-5)
    assert torch.equal(aug.apply(x, _params(2, gamma=2.0)), aug.apply(x, _params(2)))
    # Noise where asked; none where noise_p is 0, whatever sigma says.
    assert not torch.allclose(aug.apply(x, _params(2, sigma=0.05)), centre, atol=1e-3)
    assert torch.equal(DeviceAugment(dict(AUG, noise_p=0.0), 8).apply(x, _params(2, sigma=0.05)), aug.apply(x, _params(2)))
    # Scale 0.5 shrinks: a 4 px square in the middle of a 16 px crop becomes 2 px.
    sq = torch.zeros(1, 1, 16, 16)
    sq[..., 6:10, 6:10] = 1
    out = DeviceAugment(AUG, 16).apply(sq, _params(1, scale=0.5))
    assert int((out > 0.5).sum()) == 4


def test_draw_is_per_crop_shared_by_its_slices_and_in_the_paper_ranges():
    torch.manual_seed(1)
    aug = DeviceAugment(AUG, 8)
    p = aug.draw(4000, torch.device("cpu"))
    assert p["angle"].abs().max() <= AUG["rotate"] and 0.8 <= float(p["scale"].min()) <= float(p["scale"].max()) <= 1.0
    assert p["tx"].abs().max() <= AUG["translate"] and abs(float(p["flip"].float().mean()) - AUG["hflip"]) < 0.03
    assert not p["vflip"].any()  # off unless asked, and then at its rate
    assert abs(float(DeviceAugment(dict(AUG, vflip=0.3), 8).draw(4000, torch.device("cpu"))["vflip"].float().mean())
               - 0.3) < 0.03
    noisy = p["sigma"] > 0
    assert abs(float(noisy.float().mean()) - AUG["noise_p"]) < 0.03 and 0.01 <= float(p["sigma"][noisy].min())
    assert abs(float((p["angle"] != 0).float().mean()) - AUG["affine_p"]) < 0.03
    # One geometric draw per crop: slices that enter identical leave identical (the noise itself, like
    # albumentations' per-channel GaussNoise, is drawn per pixel; its sigma per crop).
    x = _crops(b=8, s=1, p=10).repeat(1, 3, 1, 1)
    out, _ = DeviceAugment(dict(AUG, noise_p=0.0), 8)(x, torch.zeros(8, dtype=torch.long))
    assert out.shape == (8, 3, 8, 8) and torch.allclose(out[:, 0], out[:, 1])
    assert not torch.allclose(out[0, 0], out[1, 0])  # and another draw for another crop


def test_intensity_is_drawn_only_where_asked_after_the_geometry():
    cpu = torch.device("cpu")
    torch.manual_seed(3)
    off = DeviceAugment(AUG, 8).draw(4000, cpu)
    torch.manual_seed(3)
    on = DeviceAugment(INTENSITY, 8).draw(4000, cpu)
    assert (off["gamma"] == 1).all() and (off["alpha"] == 1).all() and (off["beta"] == 0).all()
    for key in ("angle", "scale", "tx", "ty", "flip", "vflip", "sigma"):  # the paper's draws are not moved
        assert torch.equal(off[key], on[key]), key
    changed = on["gamma"] != 1
    assert abs(float(changed.float().mean()) - 0.5) < 0.03
    assert 0.7 <= float(on["gamma"].min()) and float(on["gamma"].max()) <= 1.4
    assert abs(float((on["alpha"] != 1).float().mean()) - 0.5) < 0.03 and float((on["alpha"] - 1).abs().max()) <= 0.2
    assert float(on["beta"].abs().max()) <= 0.1


def test_flipped_left_subarticular_becomes_right_and_sagittal_keeps_its_side():
    aug = DeviceAugment(dict(AUG, hflip=1.0), 8)
    left_sub = CONDITIONS.index("Left Subarticular Stenosis")
    left_nfn = CONDITIONS.index("Left Neural Foraminal Narrowing")
    _, cond = aug(_crops(b=2), torch.tensor([left_sub, left_nfn]))
    assert cond.tolist() == [CONDITIONS.index("Right Subarticular Stenosis"), left_nfn]


@pytest.mark.parametrize("aug", [AUG, INTENSITY], ids=["paper", "intensity"])
def test_device_and_cpu_paths_agree_on_average(aug):
    """Same distribution: mean intensity and its spread over many draws agree between the two paths."""
    crop = np.full((3, 40, 40), 0.2, np.float32)
    crop[:, 12:28, 18:30] = 0.8
    cpu = train_transform(aug, 32)
    cpu.set_random_seed(0)
    cpu_means = [cpu(image=crop.transpose(1, 2, 0))["image"].mean() for _ in range(1000)]
    torch.manual_seed(0)
    dev = DeviceAugment(aug, 32)
    dev_means = dev(torch.from_numpy(crop)[None].repeat(1000, 1, 1, 1), torch.zeros(1000, dtype=torch.long))[0].mean((1, 2, 3))
    assert abs(np.mean(cpu_means) - float(dev_means.mean())) < 0.01
    assert abs(np.std(cpu_means) - float(dev_means.std())) < 0.01


def test_where_the_augmentation_runs():
    cuda, cpu = torch.device("cuda:0"), torch.device("cpu")
    assert use_device_path({"where": "auto"}, cuda) and use_device_path({"where": "auto"}, cpu)  # the same path on both
    assert use_device_path({"where": "device"}, cpu) and not use_device_path({"where": "cpu"}, cuda)
    with pytest.raises(ValueError, match="aug.where"):
        use_device_path({"where": "gpu"}, torch.device("cpu"))
