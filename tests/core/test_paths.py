from src.core.paths import CACHE_ROOT, cache_dir_for


def test_datasets_in_folders_of_the_same_name_never_share_a_cache(tmp_path):
    first, second = tmp_path / "a" / "data", tmp_path / "b" / "data"
    first.mkdir(parents=True)
    second.mkdir(parents=True)
    assert cache_dir_for(first) != cache_dir_for(second)
    assert cache_dir_for(first).parent == CACHE_ROOT and cache_dir_for(first).name.startswith("data-")
    assert cache_dir_for(first) == cache_dir_for(tmp_path / "a" / ".." / "a" / "data")  # same folder, same cache
    assert cache_dir_for(first, tmp_path / "mine") == tmp_path / "mine"


def test_each_dataset_gets_its_own_folders_and_saved_paths_are_portable(tmp_path):
    import argparse
    import os

    from src.core.cli import dataset_defaults
    from src.core.paths import REPO, RUNS_ROOT, folds_file_for, portable, reports_dir_for, runs_dir_for, submission_dir_for

    synth, real = tmp_path / "synth", tmp_path / "rsna-2024"
    assert runs_dir_for(synth) == RUNS_ROOT / "synth" and runs_dir_for(real) == RUNS_ROOT / "rsna-2024"
    assert folds_file_for(synth).parts[-2:] == ("synth", "folds.csv")
    assert submission_dir_for(real).name == reports_dir_for(real).name == "rsna-2024"
    assert runs_dir_for(synth, tmp_path / "mine") == tmp_path / "mine"  # a flag always wins
    a = dataset_defaults(argparse.Namespace(data_dir=real, runs=None, folds=tmp_path / "f.csv"))
    assert a.runs == RUNS_ROOT / "rsna-2024" and a.folds == tmp_path / "f.csv"
    assert portable(REPO / "runs" / "synth") == "runs/synth"
    assert portable(os.path.relpath(REPO / "runs" / "synth")) == "runs/synth"  # relative to wherever we run
    assert not portable(tmp_path / "data").startswith("/")
