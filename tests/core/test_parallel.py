import os
import sys

import torch

from src.core import config as config_lib
from src.core import parallel
from src.training.engine import _loaders, loader_processes

PARENT = os.getpid()


def test_no_loader_process_where_it_would_take_a_core_from_the_models(monkeypatch):
    monkeypatch.setattr(parallel, "default_workers", lambda reserve=0: 2)
    assert parallel.loader_workers(2, "cpu") == 0 and parallel.loader_workers(2, "cuda") == 1
    monkeypatch.setattr(parallel, "default_workers", lambda reserve=0: 16)
    assert parallel.loader_workers(16, "cpu") == 15 and not parallel.loader_competes("cpu")


def test_training_loaders_take_the_configs_count():
    data = torch.utils.data.TensorDataset(torch.zeros(8, 1))
    cfg = config_lib.resolve("attn_resnext", "tiny", None, {"workers": 3})
    train, _, _ = _loaders(cfg, data, data, 1, 0, torch.device("cpu"))
    assert train.num_workers == 3
    train, _, _ = _loaders({**cfg, "loader_workers": 0}, data, data, 1, 0, torch.device("cpu"))
    assert train.num_workers == 0
    # auto on the CPU: none where the task's loader only gathers arrays (augmented on the device), else `workers`
    assert loader_processes(cfg, torch.device("cpu"), loader_work=False) == 0
    assert loader_processes(cfg, torch.device("cuda"), loader_work=False) == 3
    assert loader_processes({**cfg, "loader_workers": 1}, torch.device("cpu"), loader_work=False) == 1


def _py(code: str) -> list[str]:
    import sys

    return [sys.executable, "-c", code]


def test_run_jobs_relays_each_line_runs_what_is_ready_and_skips_what_needs_a_failure(tmp_path, capsys):
    trail = tmp_path / "trail.txt"
    step = ("import os, pathlib, time; p = pathlib.Path({t!r}); p.write_text(p.read_text() + 'start {n};' "
            "if p.exists() else 'start {n};'); time.sleep(0.2); print('hello from', os.environ['WHO']); "
            "p.write_text(p.read_text() + 'end {n};')")
    jobs = [parallel.Job("a", _py(step.format(t=str(trail), n="a")), env={"WHO": "a"}),
            parallel.Job("bad", _py("import sys; print('failing'); sys.exit(3)")),
            parallel.Job("after_bad", _py("print('never')"), needs=("bad",)),
            parallel.Job("after_after", _py("print('never')"), needs=("after_bad",)),
            parallel.Job("b", _py(step.format(t=str(trail), n="b")), needs=("a",), env={"WHO": "b"})]
    codes = parallel.run_jobs(jobs, at_once=1)
    assert codes == {"a": 0, "bad": 3, "after_bad": parallel.SKIPPED, "after_after": parallel.SKIPPED, "b": 0}
    out = capsys.readouterr().out.splitlines()
    assert "[a] hello from a" in out and "[b] hello from b" in out and "[bad] failing" in out
    assert not any("never" in line for line in out)
    assert trail.read_text() == "start a;end a;start b;end b;"  # one at a time, b after the a it needs


def test_run_jobs_refuses_needs_it_cannot_meet():
    import pytest

    with pytest.raises(ValueError, match="unknown jobs"):
        parallel.run_jobs([parallel.Job("a", _py(""), needs=("nowhere",))], 2)
    with pytest.raises(ValueError, match="need each other"):
        parallel.run_jobs([parallel.Job("a", _py(""), needs=("b",)), parallel.Job("b", _py(""), needs=("a",))], 2)


def _exit_with(code):
    def call():
        print("child", os.getpid() != PARENT, os.environ.get("WHO"))
        if code == "raise":
            raise RuntimeError("boom")
        if code == "exit":
            sys.exit(4)
        return code
    return call


def test_run_jobs_calls_a_jobs_function_in_a_fork_of_this_process(capsys):
    """On Linux a job's `call` runs in a fork (not its argv): its lines relayed, its return value (an int; a
    dict counts 0), SystemExit's code or 1 for an exception as the exit code, its environment its own."""
    import pytest

    if not parallel.forks_jobs():
        pytest.skip("forks only on Linux")
    never = _py("print('argv ran')")
    jobs = [parallel.Job("ok", never, env={"WHO": "ok"}, call=_exit_with(0)),
            parallel.Job("dict", never, call=_exit_with({"score": 1.0})),
            parallel.Job("three", never, call=_exit_with(3)),
            parallel.Job("exit", never, call=_exit_with("exit")),
            parallel.Job("raise", never, call=_exit_with("raise")),
            parallel.Job("after", never, needs=("raise",), call=_exit_with(0))]
    codes = parallel.run_jobs(jobs, at_once=2)
    assert codes == {"ok": 0, "dict": 0, "three": 3, "exit": 4, "raise": 1, "after": parallel.SKIPPED}
    out = capsys.readouterr().out.splitlines()
    assert "[ok] child True ok" in out and "[three] child True None" in out and "WHO" not in os.environ
    assert any("[raise] RuntimeError: boom" in line for line in out) and not any("argv ran" in line for line in out)
