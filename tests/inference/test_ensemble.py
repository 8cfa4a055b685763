import json

import numpy as np
import pandas as pd
import pytest

import ensemble as ensemble_script
from src.core import config as config_lib
from src.core.constants import TARGETS
from src.core.metric import prior_table
from src.inference.ensemble import blend, fit_ensemble, load, member_weights, sharpen


def _frames(seed=0, n_studies=60):
    rng = np.random.default_rng(seed)
    cols = ["spinal_canal_stenosis_l1_l2", "left_neural_foraminal_narrowing_l4_l5", "right_subarticular_stenosis_l5_s1"]
    ids = [f"{s}_{c}" for s in range(1, n_studies + 1) for c in cols]
    truth = rng.choice(3, len(ids), p=[0.7, 0.2, 0.1])
    onehot = np.eye(3)[truth]
    solution = pd.DataFrame(onehot, columns=list(TARGETS))
    solution.insert(0, "row_id", ids)
    solution["sample_weight"] = np.array([1.0, 2.0, 4.0])[truth]
    good = 0.6 * onehot + 0.4 * rng.dirichlet([1, 1, 1], len(ids))
    bad = rng.dirichlet([1, 1, 1], len(ids))
    frames = {}
    for name, p in (("good", good), ("bad", bad)):
        f = pd.DataFrame(p, columns=list(TARGETS))
        f.insert(0, "row_id", ids)
        frames[name] = f
    return frames, solution


def test_sharpen_and_blend():
    p = np.array([[0.7, 0.2, 0.1]])
    assert np.allclose(sharpen(p, 1.0), p)
    assert sharpen(p, 0.5)[0, 0] > 0.7 and sharpen(p, 2.0)[0, 0] < 0.7
    frames, _ = _frames()
    half = blend(frames, {"good": 1.0, "bad": 1.0}, {})
    expected = (frames["good"][list(TARGETS)].to_numpy() + frames["bad"][list(TARGETS)].to_numpy()) / 2
    assert np.allclose(half[list(TARGETS)].to_numpy(), expected)
    only_good = blend(frames, {"good": 1.0, "bad": 0.0}, {})
    assert np.allclose(only_good[list(TARGETS)].to_numpy(), frames["good"][list(TARGETS)].to_numpy())


def test_fit_prefers_the_better_model_and_never_loses():
    frames, solution = _frames()
    fitted = fit_ensemble(frames, solution)
    assert fitted["weights"]["good"] > 0.7
    assert fitted["oof_score"] <= min(fitted["oof_single"].values()) + 1e-9
    assert set(fitted["temperature"]) == {"spinal", "foraminal", "subarticular"}


def test_prior_table_and_missing_file(tmp_path):
    table = prior_table(None)
    assert all(abs(sum(v) - 1) < 1e-9 for v in table.values())
    with pytest.warns(UserWarning, match="equal weights"):
        assert load(tmp_path / "none.json") == {"weights": {}, "temperature": {}}
    # Members take their fitted weight; one the ensemble does not name gets 1; no fit means equal weights.
    assert member_weights({"weights": {"a": 0.25, "b": 0.75}}, ["a", "b", "c"]) == {"a": 0.25, "b": 0.75, "c": 1.0}
    assert member_weights({"weights": {}}, ["a", "b"]) == {"a": 1.0, "b": 1.0}


def test_cli_writes_ensemble_json(synth_dir, tmp_path):
    from src.core.metric import solution_frame
    from src.data.tables import load_train

    sol = solution_frame(load_train(synth_dir / "train.csv"))
    rng = np.random.default_rng(1)
    # Two models and an experiment under its own --name; a localizer run is never a member.
    for name, model in (("attn_resnext", "attn_resnext"), ("cnn_lstm", "cnn_lstm"), ("wide", "attn_resnext"),
                        ("localizer_axial", "localizer")):
        for fold, part in enumerate([sol.iloc[: len(sol) // 2], sol.iloc[len(sol) // 2 :]]):
            run = tmp_path / name / f"fold{fold}"
            run.mkdir(parents=True)
            (run / "best.pt").write_bytes(b"")
            config_lib.save(config_lib.resolve(model, overrides={"name": name, "series_type": "axial"}), run / "config.yaml")
            p = 0.5 * part[list(TARGETS)].to_numpy() + 0.5 * rng.dirichlet([1, 1, 1], len(part))
            frame = pd.DataFrame(p, columns=list(TARGETS))
            frame.insert(0, "row_id", part["row_id"].to_numpy())
            frame.to_csv(run / "oof.csv", index=False)
    ensemble_script.main(["--runs", str(tmp_path), "--data-dir", str(synth_dir)])
    saved = json.loads((tmp_path / "ensemble.json").read_text())
    assert set(saved["weights"]) == {"attn_resnext", "cnn_lstm", "wide"}
    assert abs(sum(saved["weights"].values()) - 1) < 1e-6
    ensemble_script.main(["--runs", str(tmp_path), "--data-dir", str(synth_dir), "--names", "attn_resnext", "cnn_lstm"])
    saved = json.loads((tmp_path / "ensemble.json").read_text())
    assert set(saved["weights"]) == {"attn_resnext", "cnn_lstm"} and abs(sum(saved["weights"].values()) - 1) < 1e-6
    assert saved["final_stage"]["rows"] == len(sol) and set(saved["prior"]) == {"spinal", "foraminal", "subarticular"}
    assert saved["final_stage"]["source"] == "oof.csv" and saved["final_stage"]["asked"] == "weights"
