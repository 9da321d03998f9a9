"""One lock per output folder, for every command that writes one (build-corpus, pretrain, finetune).

A lock file in the folder is held with ``flock`` for the whole run and holds the holder's pid; a second run
into the folder is refused at once, naming that pid. The kernel drops the lock if the holder dies. Releasing
unlinks the file before unlocking it, and acquiring checks that the file it locked is still the one at the path,
so two runs never both hold a folder.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from pathlib import Path

from structformer.errors import InputError


def acquire(lock_path: Path, refusal: str) -> int:
    """Lock ``lock_path`` (created if needed) and return its descriptor; an :class:`InputError` with
    ``refusal`` (``{pid}`` is filled with the holder's pid) when another process holds it."""
    while True:
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 64).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise InputError(refusal.format(pid=holder)) from None
        with contextlib.suppress(FileNotFoundError):
            if os.stat(lock_path).st_ino == os.fstat(fd).st_ino:
                os.ftruncate(fd, 0)
                os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
                return fd
        os.close(fd)  # the holder removed it meanwhile: lock the new file


def release(lock_path: Path, fd: int) -> None:
    """Unlink, then unlock: a run that opened the file meanwhile sees it is gone and retries."""
    with contextlib.suppress(FileNotFoundError):
        os.unlink(lock_path)
    # LOCK_UN, not just close: a forked worker may still hold a copy of the descriptor.
    fcntl.flock(fd, fcntl.LOCK_UN)
    os.close(fd)
