import numpy as np
import pandas as pd
import torch

from src.classifier.augment import eval_transform, train_transform
from src.classifier.datasets import CropDataset, flip_condition
from src.core.config import DEFAULTS
from src.core.constants import CONDITIONS


def test_flip_condition_mapping():
    names = [CONDITIONS[flip_condition(i)] for i in range(5)]
    assert names == [
        "Spinal Canal Stenosis",
        "Left Neural Foraminal Narrowing",  # sagittal crop: a flip swaps front and back, not sides
        "Right Neural Foraminal Narrowing",
        "Right Subarticular Stenosis",  # axial crop: a flip swaps the patient's left and right
        "Left Subarticular Stenosis",
    ]


def _dataset(transform, n=5):
    rng = np.random.default_rng(0)
    crops = rng.random((n, 3, 20, 20)).astype(np.float16)
    crops[:, :, :, :10] = 0  # left half dark so a flip is visible
    index = pd.DataFrame({"crop": np.arange(n), "condition_idx": np.arange(n) % 5, "level_idx": [0, 1, 2, 3, 4][:n],
                          "label": [0, 1, 2, np.nan, 1][:n]})
    return CropDataset(crops, index, transform)


def test_flip_swaps_side_with_the_image():
    aug = dict(DEFAULTS["aug"], hflip=1.0, affine_p=0.0, noise_p=0.0)
    ds = _dataset(train_transform(aug, 16))
    item = ds[3]  # Left Subarticular Stenosis
    assert CONDITIONS[int(item["condition"])] == "Right Subarticular Stenosis"
    assert item["image"][:, :, :6].abs().sum() > 0 and item["image"][:, :, -6:].abs().sum() == 0
    assert int(item["label"]) == -1 and int(ds[2]["label"]) == 2
    assert int(ds[0]["condition"]) == 0 and int(ds[1]["condition"]) == 1


def test_eval_transform_is_centre_crop_only():
    ds = _dataset(eval_transform(16))
    item = ds[3]
    assert item["image"].shape == (3, 16, 16) and item["image"].dtype == torch.float32
    assert int(item["condition"]) == 3
    expected = torch.from_numpy(np.asarray(ds.crops[3], np.float32)[:, 2:18, 2:18])
    assert torch.allclose(item["image"], expected)


def test_same_geometric_draw_for_every_slice():
    aug = dict(DEFAULTS["aug"], hflip=0.0, affine_p=1.0, noise_p=0.0)
    transform = train_transform(aug, 16)
    transform.set_random_seed(3)
    base = np.zeros((20, 20), np.float32)
    base[4:9, 5:12] = 1
    stack = np.stack([base, base * 0.5, base * 0.25], -1)
    out = transform(image=stack)["image"]
    assert np.allclose(out[..., 1], out[..., 0] * 0.5, atol=1e-5) and np.allclose(out[..., 2], out[..., 0] * 0.25, atol=1e-5)


def test_raw_crops_are_served_whole_in_batches_and_in_order():
    import numpy as np
    import pandas as pd
    import torch

    from src.classifier.datasets import CropDataset

    crops = np.arange(6 * 2 * 4 * 4, dtype=np.float16).reshape(6, 2, 4, 4)
    index = pd.DataFrame({"crop": [5, 0, 3], "condition_idx": [3, 1, 0], "level_idx": [4, 0, 2], "label": [2, np.nan, 0]})
    ds = CropDataset(crops, index, None)
    items = ds.__getitems__([2, 0, 1])
    assert [int(it["row"]) for it in items] == [2, 0, 1] and [int(it["label"]) for it in items] == [0, 2, -1]
    assert torch.equal(items[1]["image"], torch.from_numpy(crops[5])) and items[1]["image"].dtype == torch.float16
    assert torch.equal(ds[0]["image"], items[1]["image"])
    loader = torch.utils.data.DataLoader(ds, batch_size=3)
    assert next(iter(loader))["image"].shape == (3, 2, 4, 4)


def test_rows_with_variants_serve_one_of_their_own_variants():
    import numpy as np
    import pandas as pd

    from src.classifier.datasets import CropDataset

    crops = np.arange(5 * 1 * 2 * 2, dtype=np.uint8).reshape(5, 1, 2, 2)
    index = pd.DataFrame({"crop": [0, 2], "condition_idx": [0, 1], "level_idx": [0, 0], "label": [1, 2]})
    ds = CropDataset(crops, index, None, variants=np.array([[0, 1], [2, 4]]))
    np.random.seed(0)
    served = [[int(it["image"][0, 0, 0]) // 4 for it in ds.__getitems__([0, 1])] for _ in range(40)]
    assert {s[0] for s in served} == {0, 1} and {s[1] for s in served} == {2, 4}
    assert {int(CropDataset(crops, index, None)[1]["image"][0, 0, 0]) // 4} == {2}  # no variants: the row's crop
