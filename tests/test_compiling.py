"""Where compiled kernels are cached: the run directory's compile_cache/, unless the user
named another directory (torch's own default, which it writes into the environment itself,
does not count)."""

import os

from torch._inductor.runtime.cache_dir_utils import cache_dir

from hpcdiff.compiling import CACHE_ENV, use_run_cache


def test_the_cache_goes_to_the_run_unless_the_user_named_one(tmp_path, monkeypatch):
    monkeypatch.delenv(CACHE_ENV, raising=False)
    cache_dir()  # torch puts its default into the environment (as DeepSpeed's set-up may)
    assert os.environ[CACHE_ENV]
    run = tmp_path / "run"
    assert use_run_cache(run) == run / "compile_cache"
    assert (run / "compile_cache").is_dir() and cache_dir() == str(run / "compile_cache")
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "mine"))
    assert use_run_cache(run) == tmp_path / "mine"
    assert cache_dir() == str(tmp_path / "mine")
