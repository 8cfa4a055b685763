import numpy as np
import pandas as pd
import pytest
import torch

from src.core.constants import TARGETS


def test_study_any_severe_loss_is_the_metrics_term():
    """On a batch of studies the study model's extra loss equals the metric's any-severe-spinal part."""
    from src.classifier.study import any_severe_loss
    from src.core.constants import SAMPLE_WEIGHTS
    from src.core.metric import score_parts

    rng = np.random.default_rng(0)
    logits = torch.tensor(rng.normal(size=(6, 25, 3)))
    label = torch.tensor(rng.integers(0, 3, size=(6, 25)))
    label[2, :5] = -1  # a study without a labelled spinal level does not count
    label[3, 1] = -1
    probs = torch.softmax(logits, -1).numpy()
    rows, sol = [], []
    from src.core.constants import LABEL_COLUMNS
    for s in range(6):
        for k, column in enumerate(LABEL_COLUMNS):
            if label[s, k] < 0:
                continue
            rid = f"{100 + s}_{column}"
            rows.append([rid, *probs[s, k]])
            onehot = np.eye(3)[int(label[s, k])]
            sol.append([rid, *onehot, SAMPLE_WEIGHTS[int(label[s, k])]])
    sub = pd.DataFrame(rows, columns=["row_id", *TARGETS])
    solution = pd.DataFrame(sol, columns=["row_id", *TARGETS, "sample_weight"])
    expected = score_parts(solution, sub)["any_severe_spinal"]
    got = float(any_severe_loss(logits, label, torch.tensor(SAMPLE_WEIGHTS, dtype=torch.float64)))
    assert got == pytest.approx(expected, rel=1e-6)


def test_study_items_draw_each_crop_from_its_jittered_variants():
    import numpy as np
    import pandas as pd

    from src.classifier.study import StudyDataset

    crops = np.arange(6, dtype=np.uint8).reshape(6, 1, 1, 1)  # crop k is filled with k
    index = pd.DataFrame({"study_id": [1, 1], "condition_idx": [0, 3], "level_idx": [2, 4], "crop": [0, 1],
                          "label": [1, np.nan]})
    variants = np.array([[0, 2, 4], [1, 3, 5]])
    np.random.seed(0)
    seen = [StudyDataset(crops, index, variants)[0]["image"][[2, 19], 0, 0, 0].tolist() for _ in range(40)]
    assert {a for a, _ in seen} == {0, 2, 4} and {b for _, b in seen} == {1, 3, 5}
    plain = StudyDataset(crops, index)[0]
    assert plain["image"][[2, 19], 0, 0, 0].tolist() == [0, 1] and plain["mask"].sum() == 2
    assert plain["label"][2] == 1 and plain["label"][19] == -1
