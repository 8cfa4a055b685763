from conftest import make_fake_runs

from src.inference import classifier_runs, find_runs


def test_classifier_runs_finds_every_trained_classifier(tmp_path):
    runs = make_fake_runs(tmp_path / "runs", experiments=("attn_resnext_wide",))
    (runs / "cnn_lstm" / "fold3").mkdir()  # a fold without weights is not a trained run
    (runs / "empty").mkdir()
    assert classifier_runs(runs) == ["attn_resnext", "attn_resnext_wide", "cnn_lstm"]  # localizers excluded
    assert classifier_runs(runs, "attn_resnext") == ["attn_resnext", "attn_resnext_wide"]
    assert [p.name for p in find_runs(runs, "cnn_lstm")] == ["fold0"]
    assert classifier_runs(tmp_path / "nothing") == []
