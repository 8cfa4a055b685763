from conftest import make_fake_runs

from src.core.run_folders import classifier_runs, fold_of, localizer_run, run_dir, run_names, trained_folds
from src.localizer.plan import PLAN


def test_classifier_runs_finds_every_trained_classifier(tmp_path):
    runs = make_fake_runs(tmp_path / "runs", experiments=("attn_resnext_wide",))
    (runs / "cnn_lstm" / "fold3").mkdir()  # a fold without weights is not a trained run
    (runs / "empty").mkdir()
    assert classifier_runs(runs) == ["attn_resnext", "attn_resnext_wide", "cnn_lstm"]  # localizers excluded
    assert classifier_runs(runs, "attn_resnext") == ["attn_resnext", "attn_resnext_wide"]
    assert run_names(runs, lambda cfg: cfg["task"] == "localizer") == sorted(localizer_run(p.series_type) for p in PLAN)
    assert [p.name for p in trained_folds(runs, "cnn_lstm")] == ["fold0"]
    assert classifier_runs(tmp_path / "nothing") == []


def test_folds_sorted_by_number_and_filtered(tmp_path):
    runs = make_fake_runs(tmp_path / "runs", classifiers=True)
    src = run_dir(runs, "cnn_lstm", 0)
    for fold in (10, 2):
        dst = run_dir(runs, "cnn_lstm", fold)
        dst.mkdir()
        for f in src.iterdir():
            (dst / f.name).write_bytes(f.read_bytes())
    assert [fold_of(p) for p in trained_folds(runs, "cnn_lstm")] == [0, 2, 10]
    assert [fold_of(p) for p in trained_folds(runs, "cnn_lstm", [10, 0])] == [0, 10]


def test_a_broken_config_costs_only_its_run_and_is_named(tmp_path):
    import pytest

    from src.core.faults import FaultLog
    from src.core.run_folders import RunFileError, read_config

    runs = make_fake_runs(tmp_path / "runs", folds=(0, 1))
    (run_dir(runs, "localizer_axial", 0) / "config.yaml").write_text("loc: [unclosed\n")
    (run_dir(runs, "localizer_axial", 1) / "config.yaml").write_text("loc: [unclosed\n")
    (run_dir(runs, "cnn_lstm", 0) / "config.yaml").write_text("- a list\n")  # its fold 1 still tells the run
    faults = FaultLog()
    assert classifier_runs(runs, faults=faults) == ["attn_resnext", "cnn_lstm"]
    assert [(f.unit, f.name) for f in faults.faults] == [("member", "localizer_axial")]
    assert "config.yaml: does not read (" in faults.faults[0].reason and "\n" not in faults.faults[0].reason
    with pytest.raises(RunFileError, match=r"cnn_lstm/fold0/config.yaml: not a mapping"):
        read_config(run_dir(runs, "cnn_lstm", 0))


def test_a_config_saved_before_a_key_existed_reads_with_the_keys_default(tmp_path):
    """read_config gives a run's config with every key added since at its default (what the run trained with),
    so inference rebuilds the same model."""
    import yaml

    from src.core.config import DEFAULTS
    from src.core.run_folders import read_config

    runs = make_fake_runs(tmp_path / "runs")
    saved_file = next(runs.glob("attn_resnext/fold*/config.yaml"))
    saved = yaml.safe_load(saved_file.read_text())
    saved.pop("stem_pool")
    saved["aug"].pop("vflip")  # a key added inside a section
    saved_file.write_text(yaml.safe_dump(saved))
    cfg = read_config(saved_file.parent)
    assert cfg["stem_pool"] is DEFAULTS["stem_pool"] is True
    assert cfg["aug"]["vflip"] == DEFAULTS["aug"]["vflip"] == 0.0 and cfg["aug"]["hflip"] == saved["aug"]["hflip"]
    cfg["aug"].pop("vflip")
    assert {k: v for k, v in cfg.items() if k != "stem_pool"} == saved
