"""Parsing papers in worker processes that a time limit can kill.

:func:`parse_papers` hands papers to ``num_proc`` worker processes, one paper per worker at a time, and
yields each outcome as it completes. A worker that passes the per-paper time limit is killed and
replaced, so a pathological paper costs ``timeout`` seconds and never the task; a worker that dies
(a crash, the kernel's OOM killer) makes its paper a ``parse_error``, and a worker is replaced after
``max_tasks_per_worker`` papers to return the memory a parser leaks. At most one paper per worker is
in memory, however large the input.

Workers talk to the parent in JSON over pipes (no pickle of untrusted data), and die with the
process that started them, however it dies (:func:`exit_with_parent`).
"""

from __future__ import annotations

import ctypes
import json
import multiprocessing
import os
import signal
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from multiprocessing.connection import Connection, wait
from typing import Any, Generic, TypeVar

from structformer.dataset_scripts import records
from structformer.dataset_scripts.parsers import PaperParser

T = TypeVar("T")

# Seconds between two checks of a process whose OS cannot kill it when its parent dies.
_PARENT_POLL_SECONDS = 0.5
_PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def parse_one(paper_id: str, files: dict[str, bytes], parser: PaperParser) -> dict[str, Any]:
    """``{"record": row}`` (and ``"parse_warnings"``) or ``{"reason", "detail"}`` for one paper; never raises."""
    try:
        parsed = parser.parse(files)
        row = records.to_record(parsed, paper_id)
        warnings = parsed.warnings
    except records.PaperError as error:
        return {"reason": error.reason, "detail": error.detail}
    except UnicodeError as error:
        return {"reason": "decode_error", "detail": f"{type(error).__name__}: {error}"}
    except RecursionError:
        return {"reason": "parse_error", "detail": "RecursionError: the document nests too deeply"}
    except Exception as error:  # a broken paper must become a reject, whatever the parser raised
        return {"reason": "parse_error", "detail": f"{type(error).__name__}: {error}"[:500]}
    if not row.get("text", "").strip():
        return {"reason": "empty", "detail": "no text left after cleaning"}
    return {"record": row, "parse_warnings": warnings} if warnings else {"record": row}


@dataclass
class ParseJob(Generic[T]):
    """One paper to parse: ``tag`` is the caller's (it comes back with the outcome). A job that already
    has an ``outcome`` (a paper the reader rejected) passes through without a worker."""

    tag: T
    paper_id: str
    files: dict[str, bytes] = field(default_factory=dict)
    outcome: dict[str, Any] | None = None


def _encode_task(paper_id: str, files: dict[str, bytes]) -> bytes:
    names = sorted(files)
    header = json.dumps({"id": paper_id, "files": [[name, len(files[name])] for name in names]}).encode()
    return b"".join([header, b"\n", *(files[name] for name in names)])


def _decode_task(payload: bytes) -> tuple[str, dict[str, bytes]]:
    newline = payload.index(b"\n")
    header = json.loads(payload[:newline])
    files: dict[str, bytes] = {}
    offset = newline + 1
    for name, size in header["files"]:
        files[name] = payload[offset : offset + size]
        offset += size
    return header["id"], files


def _set_parent_death_signal() -> bool:
    """Ask Linux to SIGKILL this process when its parent dies; False where the OS has no such call."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(_PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


def _watch_parent(parent: int) -> None:
    while os.getppid() == parent:
        time.sleep(_PARENT_POLL_SECONDS)
    os._exit(1)


def exit_with_parent(parent: int) -> None:
    """Make this process end when ``parent`` dies, however it dies.

    A killed parent runs no cleanup, and a worker's pipe stays open in its forked siblings, so the
    worker would wait for its next paper forever (holding the output's lock, too). Linux kills it
    (PR_SET_PDEATHSIG); elsewhere a thread notices that the process was handed to another parent.
    """
    if not _set_parent_death_signal():
        threading.Thread(target=_watch_parent, args=(parent,), daemon=True).start()
    if os.getppid() != parent:  # the parent died before the signal was armed
        os._exit(1)


def _worker_main(conn: Connection, parser: PaperParser, parent: int) -> None:
    exit_with_parent(parent)
    # Ctrl-C goes to the whole process group: the parent decides, the worker just parses.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    while True:
        try:
            payload = conn.recv_bytes()
        except (EOFError, OSError):
            return
        if not payload:  # the parent's "stop": EOF alone is not enough, forked siblings hold the pipe open
            return
        paper_id, files = _decode_task(payload)
        conn.send_bytes(json.dumps(parse_one(paper_id, files, parser), ensure_ascii=False).encode())


class _Worker:
    def __init__(self, context: multiprocessing.context.BaseContext, parser: PaperParser) -> None:
        self.conn, child = context.Pipe()
        self.process = context.Process(target=_worker_main, args=(child, parser, os.getpid()), daemon=True)
        self.process.start()
        child.close()
        self.tasks = 0

    def stop(self, kill: bool = False) -> None:
        if kill:
            self.process.kill()
        else:
            try:
                self.conn.send_bytes(b"")
            except OSError:
                self.process.kill()
        self.conn.close()
        self.process.join(timeout=None if kill else 5)
        if self.process.is_alive():
            self.process.kill()
            self.process.join()


def _context() -> multiprocessing.context.BaseContext:
    # fork starts a worker in milliseconds, which matters when a timed-out worker is replaced.
    method = "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"
    return multiprocessing.get_context(method)


def parse_papers(
    jobs: Iterator[ParseJob[T]],
    parser: PaperParser,
    *,
    num_proc: int = 1,
    timeout: float = 60.0,
    max_tasks_per_worker: int = 200,
) -> Iterator[ParseJob[T]]:
    """Parse every job on ``num_proc`` workers; yield each job, its ``outcome`` set, as it completes."""
    context = _context()
    workers = [_Worker(context, parser) for _ in range(num_proc)]
    busy: dict[int, tuple[ParseJob[T], float]] = {}
    exhausted = False
    try:
        while True:
            while not exhausted and len(busy) < len(workers):
                job = next(jobs, None)
                if job is None:
                    exhausted = True
                elif job.outcome is not None:
                    yield job
                else:
                    slot = next(i for i in range(len(workers)) if i not in busy)
                    task = _encode_task(job.paper_id, job.files)
                    job.files = {}
                    try:
                        workers[slot].conn.send_bytes(task)
                    except OSError:  # the idle worker died (killed from outside): replace it and retry once
                        workers[slot].stop(kill=True)
                        workers[slot] = _Worker(context, parser)
                        workers[slot].conn.send_bytes(task)
                    del task
                    busy[slot] = (job, time.monotonic() + timeout)
            if not busy:
                return
            next_deadline = min(deadline for _, deadline in busy.values())
            ready = wait(
                [workers[slot].conn for slot in busy], timeout=max(0.0, next_deadline - time.monotonic())
            )
            for slot in sorted(busy):
                job, deadline = busy[slot]
                worker = workers[slot]
                # poll(): the paper may have finished while the caller handled an earlier outcome
                if worker.conn in ready or worker.conn.poll():
                    try:
                        outcome = json.loads(worker.conn.recv_bytes())
                        worker.tasks += 1
                        if worker.tasks >= max_tasks_per_worker:  # a fresh process returns leaked memory
                            worker.stop()
                            workers[slot] = _Worker(context, parser)
                    except (EOFError, OSError):
                        worker.stop(kill=True)
                        outcome = {
                            "reason": "parse_error",
                            "detail": f"the worker died (exit code {worker.process.exitcode})",
                        }
                        workers[slot] = _Worker(context, parser)
                elif time.monotonic() >= deadline:
                    worker.stop(kill=True)
                    workers[slot] = _Worker(context, parser)
                    outcome = {"reason": "timeout", "detail": f"parsing took longer than {timeout:g} s"}
                else:
                    continue
                del busy[slot]
                job.outcome = outcome
                yield job
    finally:
        for slot, worker in enumerate(workers):
            worker.stop(kill=slot in busy)
