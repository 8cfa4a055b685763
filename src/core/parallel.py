"""Mapping a function over items with a progress bar, in worker processes when there is more than one."""
from __future__ import annotations

import multiprocessing as mp
import os
import signal
import subprocess
import sys
import threading
import time
import traceback
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable, Iterator, Sequence, TypeVar

from .progress import progress, tagged

if TYPE_CHECKING:
    from torch.utils.data import Dataset

T = TypeVar("T")
R = TypeVar("R")


def default_workers(reserve: int = 0) -> int:
    """Worker processes: the CPUs this process may use, less `reserve` (a training loader leaves one to the
    process that feeds the GPU); at least 1."""
    return max(1, len(os.sched_getaffinity(0)) - reserve)


def progress_map(fn: Callable[[T], R], items: Sequence[T], workers: int, desc: str, chunksize: int = 1) -> Iterator[R]:
    """fn over items, results in order, with progress (progress.py); spawned worker processes when workers > 1."""
    if workers > 1 and len(items) > 1:
        with mp.get_context("spawn").Pool(workers) as pool:
            yield from progress(pool.imap(fn, items, chunksize=chunksize), desc, total=len(items))
    else:
        yield from (fn(item) for item in progress(items, desc))


def loader_competes(device_type: str) -> bool:
    """Whether a loader process would take a core from the models: on the CPU device of a machine with 2 or
    fewer usable CPUs, torch's threads use every core (inference measured 1.5x faster there with the loader in
    the main process, docs/BENCHMARKS.md)."""
    return device_type == "cpu" and default_workers() <= 2


def loader_workers(workers: int, device_type: str = "cuda") -> int:
    """Loader processes that read and crop studies ahead of the models: the workers less one, which runs them
    (none where a loader competes with the models for the cores)."""
    return 0 if loader_competes(device_type) else max(0, int(workers) - 1)


def batches_ahead(dataset: Dataset, per_batch: int, workers: int, desc: str) -> Iterator[list]:
    """A per-study dataset's items in lists of per_batch, made by `workers` loader processes ahead of the caller
    (0: in this process), with progress over the items (progress.py). The items must not raise (return the error instead)."""
    from torch.utils.data import DataLoader  # here: worker processes that only map functions never load torch

    loader = DataLoader(dataset, batch_size=max(1, per_batch), shuffle=False, collate_fn=list, num_workers=workers,
                        prefetch_factor=2 if workers else None)
    with progress(desc=desc, total=len(dataset)) as bar:
        for batch in loader:
            yield batch
            bar.update(len(batch))


@dataclass
class Job:
    """A command run by run_jobs: its name (the prefix of its output lines), argv, the names of the jobs that
    must have succeeded first, and environment variables set for it. `call`, where given, is the same job as a
    function of this process (its return value: the exit code, as cli.guard gives it): on Linux run_jobs runs
    it in a fork of this process instead of starting argv, so the job keeps what this process has imported
    (torch and timm: 5-7 s of CPU a process on 2 cores)."""

    name: str
    argv: list[str]
    needs: tuple[str, ...] = ()
    env: dict[str, str] = field(default_factory=dict)
    call: Callable[[], int] | None = None


class _Fork:
    """A job's `call` in a forked child, its output lines in a pipe: what run_jobs uses of subprocess.Popen
    (stdout, poll, terminate, wait, returncode)."""

    def __init__(self, call: Callable[[], int], env: dict[str, str]):
        read, write = os.pipe()
        sys.stdout.flush()
        sys.stderr.flush()
        self.pid, self.returncode = os.fork(), None
        if self.pid == 0:  # the child: never returns
            code = 1
            try:
                os.close(read)
                os.dup2(write, 1)
                os.dup2(write, 2)
                os.close(write)
                # fresh stream objects: a relay thread of the parent may have held the old ones' locks at the fork
                sys.stdout = open(1, "w", buffering=1, closefd=False)  # noqa: SIM115 - lives until _exit
                sys.stderr = open(2, "w", buffering=1, closefd=False)  # noqa: SIM115
                os.environ.update(env)
                result = call()
                code = result if isinstance(result, int) and not isinstance(result, bool) else 0
            except SystemExit as err:
                code = err.code if isinstance(err.code, int) else (0 if err.code is None else 1)
            except BaseException:  # noqa: BLE001 - the child reports and exits; the parent reads the code
                traceback.print_exc()
            finally:
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(code)
        os.close(write)
        self.stdout = open(read, encoding="utf-8", errors="replace")  # noqa: SIM115 - closed by the relay's end

    def poll(self) -> int | None:
        if self.returncode is None:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                self.returncode = os.waitstatus_to_exitcode(status)
        return self.returncode

    def terminate(self) -> None:
        if self.returncode is None:
            os.kill(self.pid, signal.SIGTERM)

    def wait(self) -> int:
        if self.returncode is None:
            self.returncode = os.waitstatus_to_exitcode(os.waitpid(self.pid, 0)[1])
        return self.returncode


def forks_jobs() -> bool:
    """Whether run_jobs runs a job's `call` in a fork: on Linux (macOS's system libraries are not safe to use
    after a fork; Windows has none)."""
    return sys.platform.startswith("linux") and hasattr(os, "fork")


SKIPPED = -1000  # run_jobs' code of a job not run because a job it needs failed


def run_jobs(jobs: Sequence[Job], at_once: int, poll_s: float = 0.2) -> dict[str, int]:
    """Run the jobs as subprocesses (a job's `call` in a fork, where forks_jobs), at most `at_once` at a time,
    each once every job it needs has exited 0, in the given order otherwise; every output line is relayed whole,
    tagged with the job's name (progress.tagged). Returns each job's exit code (SKIPPED where a needed job failed
    or was skipped). On an interrupt the running jobs are terminated."""
    names = {j.name for j in jobs}
    unknown = {n for j in jobs for n in j.needs} - names
    if unknown:
        raise ValueError(f"jobs need unknown jobs {sorted(unknown)}")
    codes: dict[str, int] = {}
    waiting, running = list(jobs), {}
    lock = threading.Lock()

    def relay(job: Job, proc: subprocess.Popen | _Fork) -> None:
        with proc.stdout:
            for line in proc.stdout:
                with lock:
                    sys.stdout.write(tagged(line, job.name))
                    sys.stdout.flush()

    try:
        while waiting or running:
            if waiting and not running and not any(all(n in codes for n in j.needs) for j in waiting):
                raise ValueError(f"jobs that need each other: {[j.name for j in waiting]}")
            for job in list(waiting):
                if any(codes.get(n, 0) != 0 for n in job.needs if n in codes):
                    codes[job.name] = SKIPPED
                    waiting.remove(job)
                elif len(running) < at_once and all(n in codes for n in job.needs):
                    if job.call is not None and forks_jobs():
                        with lock:  # no relay thread is inside sys.stdout while the child is forked
                            proc = _Fork(job.call, job.env)
                    else:
                        proc = subprocess.Popen(job.argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                                env={**os.environ, **job.env}, bufsize=1)
                    reader = threading.Thread(target=relay, args=(job, proc), daemon=True)
                    reader.start()
                    running[job.name] = (proc, reader)
                    waiting.remove(job)
            for name, (proc, reader) in list(running.items()):
                if proc.poll() is not None:
                    reader.join()
                    codes[name] = proc.returncode
                    del running[name]
            if running:
                time.sleep(poll_s)
    finally:
        for proc, _ in running.values():
            proc.terminate()
        for proc, _ in running.values():
            proc.wait()
    return {j.name: codes[j.name] for j in jobs}
