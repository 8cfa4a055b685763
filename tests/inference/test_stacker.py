import numpy as np
import pandas as pd
import pytest
import torch

from src.core.constants import GROUPS, TARGETS, group_of, row_study_ids
from src.core.metric import metric_loss, score, solution_frame
from src.data.tables import load_train
from src.inference.final_stage import nested_scores
from src.inference.stacker import apply_stacker, fit_stacker, valid_stacker


def _frames(solution: pd.DataFrame, seed: int = 0) -> dict[str, pd.DataFrame]:
    """Two members: one informative but overconfident, one weak; the stacker can weigh and soften them."""
    rng = np.random.default_rng(seed)
    truth = solution[list(TARGETS)].to_numpy()
    out = {}
    for name, mix, power in (("a", 0.6, 3.0), ("b", 0.3, 1.0)):
        p = (mix * truth + (1 - mix) * rng.dirichlet([1, 1, 1], len(truth))) ** power
        frame = pd.DataFrame(p / p.sum(1, keepdims=True), columns=list(TARGETS))
        frame.insert(0, "row_id", solution["row_id"].to_numpy())
        out[name] = frame
    return out


def test_metric_loss_is_the_competition_score(synth_dir):
    solution = solution_frame(load_train(synth_dir / "train.csv"))
    frame = _frames(solution)["b"]
    probs = torch.tensor(frame[list(TARGETS)].to_numpy())
    _, study = np.unique(row_study_ids(solution["row_id"]), return_inverse=True)
    loss = metric_loss(probs, torch.tensor(solution[list(TARGETS)].to_numpy().argmax(1)),
                       torch.tensor(solution["sample_weight"].to_numpy(float)),
                       torch.tensor([GROUPS.index(group_of(r)) for r in solution["row_id"]]), torch.tensor(study))
    assert float(loss) == pytest.approx(score(solution, frame), rel=1e-9)


def test_stacker_beats_its_members_and_is_scored_honestly(synth_dir):
    solution = solution_frame(load_train(synth_dir / "train.csv"))
    frames = _frames(solution)
    fitted = fit_stacker(frames, solution, l2=0.01)  # a weak pull: 196 rows, the fit itself is under test
    assert valid_stacker(fitted, ["a", "b"]) is None and fitted["members"] == ["a", "b"]
    stacked = apply_stacker(fitted, frames)
    assert np.allclose(stacked[list(TARGETS)].sum(1), 1) and stacked["row_id"].tolist() == solution["row_id"].tolist()
    assert score(solution, stacked) < min(score(solution, f) for f in frames.values())
    honest = nested_scores(frames, solution, ("stacker",), k=3)
    assert honest["scores"]["stacker"] > score(solution, stacked) - 1e-9  # fitted on other studies: never better
    assert honest["rows"] == len(solution)
    assert valid_stacker(fitted, ["a"]) == "the stacker needs b, which did not predict"
    assert "wrong shape" in valid_stacker({**fitted, "W": [[1.0]]}, ["a", "b"])


def test_inference_applies_a_fitting_stacker_and_names_one_that_does_not(synth_dir):
    from src.core.faults import FaultLog
    from src.inference.pipeline import _combine

    solution = solution_frame(load_train(synth_dir / "train.csv"))
    frames = _frames(solution)
    fitted = {"weights": {"a": 0.5, "b": 0.5}, "temperature": {}, "stacker": fit_stacker(frames, solution)}
    faults = FaultLog()
    pd.testing.assert_frame_equal(_combine(frames, fitted, faults), apply_stacker(fitted["stacker"], frames))
    assert not faults.faults
    out = _combine({"a": frames["a"]}, fitted, faults)
    assert "the stacker needs b, which did not predict; the weighted blend" in faults.faults[0].reason
    assert np.allclose(out[list(TARGETS)].to_numpy(), frames["a"][list(TARGETS)].to_numpy())
    assert [f.unit for f in faults.faults] == ["ensemble"] and faults.model_dropped


def test_context_stacker_sees_the_rest_of_the_study(synth_dir):
    from src.inference.stacker import _context

    solution = solution_frame(load_train(synth_dir / "train.csv"))
    frames = _frames(solution)
    ids = solution["row_id"].tolist()
    logp = np.log(frames["b"].set_index("row_id").loc[ids, list(TARGETS)].to_numpy())
    ctx = _context(logp, ids)
    # Row 0's first three context values: the mean of its study's same condition at the other four levels.
    study, column = ids[0].split("_", 1)
    condition = column.rsplit("_", 2)[0]
    others = [i for i, r in enumerate(ids) if r.startswith(f"{study}_{condition}_") and i != 0]
    assert len(others) == 4 and np.allclose(ctx[0, :3], logp[others].mean(0))
    spinal = [i for i, r in enumerate(ids) if r.startswith(f"{study}_spinal")]
    assert ctx[0, 3] == pytest.approx(logp[spinal, 2].max())
    fitted = fit_stacker(frames, solution, context=True)
    assert fitted["context"] and valid_stacker(fitted, ["a", "b"]) is None
    assert np.asarray(fitted["W"]).shape == (3, 3, 10)
    assert score(solution, apply_stacker(fitted, frames)) < score(solution, frames["b"])

