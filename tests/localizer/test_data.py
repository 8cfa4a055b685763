import numpy as np
import pandas as pd
import torch

from src.localizer.data import SliceDataset, SliceStore, loc_transform
from src.localizer.decode import refine_peak
from src.localizer.frame import frame_of
from src.localizer.net import HeatmapNet


def test_tiny_heatmap_net_learns_planted_keypoints():
    """Bright blobs at random places: a small HeatmapNet finds them within about a pixel."""
    rng = np.random.default_rng(0)
    n, size = 96, 48
    yy, xx = np.mgrid[0:size, 0:size]
    images, points = [], []
    for i in range(n):
        x, y = rng.uniform(6, size - 6, 2)
        img = rng.normal(0.2, 0.03, (size, size)) + np.exp(-((xx - x) ** 2 + (yy - y) ** 2) / 4.0)
        images.append(img.astype(np.float16))
        points.append({"slice": i, "channel": 0, "x": x, "y": y, "amplitude": 1.0, "condition": "c", "level": "L1/L2"})
    index = pd.DataFrame({"study_id": 1, "series_id": np.arange(n), "k": 0, "n": 1, "instance_number": 1,
                          "h": size, "w": size, "first": -1})
    store = SliceStore(np.stack(images), index, pd.DataFrame(points))
    torch.manual_seed(0)
    net = HeatmapNet("resnet10t", 3, 1, model_kwargs={"channels": (8, 16, 32, 32), "stem_width": 8}, decoder_channels=16)
    ds = SliceDataset(store, np.arange(64), 1, 1.5, loc_transform(False))
    opt = torch.optim.AdamW(net.parameters(), lr=5e-3)
    loader = torch.utils.data.DataLoader(ds, batch_size=16, shuffle=True)
    for _ in range(25):
        for batch in loader:
            logits = net(batch["image"])
            loss = torch.nn.functional.binary_cross_entropy_with_logits(logits, batch["target"], weight=1 + 20 * batch["target"])
            opt.zero_grad()
            loss.backward()
            opt.step()
    net.eval()
    test = SliceDataset(store, np.arange(64, n), 1, 1.5, loc_transform(False))
    errors = []
    with torch.no_grad():
        for i in range(len(test)):
            heat = torch.sigmoid(net(test[i]["image"][None]))[0, 0].numpy()
            y, x = np.unravel_index(np.argmax(heat), heat.shape)
            px, py = frame_of((size, size), (1.0, 1.0), size).heat_to_image(refine_peak(heat, y, x))
            errors.append(np.hypot(px - points[64 + i]["x"], py - points[64 + i]["y"]))
    assert np.median(errors) < 1.5, np.median(errors)




def test_target_alone_is_the_items_target():
    """SliceDataset.target(i) (what validation scores every epoch, no slice read) is item i's target, the
    every-level channel included; slices without a point get empty heatmaps."""
    size, n = 32, 4
    index = pd.DataFrame({"study_id": 1, "series_id": 1, "k": np.arange(n), "n": n, "instance_number": np.arange(n) + 1,
                          "h": size, "w": size, "first": 0})
    points = pd.DataFrame([{"slice": 1, "channel": c, "x": 8.0 + 4 * c, "y": 10.0, "amplitude": 1.0, "condition": "c",
                            "level": "L1/L2"} for c in range(2)])
    store = SliceStore(np.zeros((n, size, size), np.uint8), index, points)
    ds = SliceDataset(store, np.arange(n), 2, 1.5, loc_transform(False), any_channel=True)
    for i in range(n):
        assert torch.equal(ds.target(i), ds[i]["target"])
    assert ds.target(1).shape == (3, size // 2, size // 2) and float(ds.target(1)[2].max()) > 0.9
    assert float(ds.target(0).abs().sum()) == 0.0
