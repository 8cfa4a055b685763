from src.paths import CACHE_ROOT, cache_dir_for


def test_datasets_in_folders_of_the_same_name_never_share_a_cache(tmp_path):
    first, second = tmp_path / "a" / "data", tmp_path / "b" / "data"
    first.mkdir(parents=True)
    second.mkdir(parents=True)
    assert cache_dir_for(first) != cache_dir_for(second)
    assert cache_dir_for(first).parent == CACHE_ROOT and cache_dir_for(first).name.startswith("data-")
    assert cache_dir_for(first) == cache_dir_for(tmp_path / "a" / ".." / "a" / "data")  # same folder, same cache
    assert cache_dir_for(first, tmp_path / "mine") == tmp_path / "mine"
