"""The bundled sample: 22 small papers written for this project, and an arXiv-style archive of them.

Their ids (``sample-0001`` ...) are not arXiv ids: the papers are not on arXiv.

``sample/`` holds 20 parseable papers (one folder each, several templates and multi-file
projects), one broken draft (unbalanced braces, no ``\\begin{document}``) and one PDF-only
submission. :func:`pack_sample_archive` packs them the way arXiv's bulk source archives are
laid out, so that the demo and the tests exercise the real input path.
"""

from __future__ import annotations

import gzip
import io
import os
import tarfile
from importlib.resources import files
from pathlib import Path

ARCHIVE_NAME = "arXiv_src_2411_001.tar"
# The folder of the archive's members and the prefix of the ids: ``sample/sample-0001.gz``. Not an
# arXiv id on purpose: made-up ``2411.0000N`` ids would point readers to unrelated real papers.
ID_PREFIX = "sample"
# Expected outcome of building the sample: every paper folder but the broken one is a record.
SAMPLE_RECORDS = 20
SAMPLE_REJECTS = {"no_main_file": 1, "pdf_only": 1}
# 2024-11-01T00:00:00Z: a fixed mtime everywhere, so the archive's bytes never change.
_MTIME = 1_730_419_200


def sample_dir() -> Path:
    """The folder of bundled sample papers (one sub-folder per paper, plus the PDF-only entry)."""
    path = Path(str(files("structformer.dataset_scripts") / "sample"))
    if not path.is_dir():
        raise FileNotFoundError(f"{path}: the bundled sample is missing from the installation")
    return path


def sample_entries() -> list[Path]:
    """The sample's papers in archive order (their position gives their arXiv-style id)."""
    return sorted(
        (p for p in sample_dir().iterdir() if not p.name.startswith((".", "_"))), key=lambda p: p.name
    )


def sample_ids() -> dict[str, str]:
    """``{entry name: id}``, e.g. ``{"01-spectral-pruning": "sample-0001", ...}``."""
    return {entry.name: f"{ID_PREFIX}-{index:04d}" for index, entry in enumerate(sample_entries(), start=1)}


def _tar_info(name: str, size: int) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size = size
    info.mtime = _MTIME
    info.mode = 0o644
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    return info


def _tar_bytes(members: list[tuple[str, bytes]]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.GNU_FORMAT) as tar:
        for name, data in members:
            tar.addfile(_tar_info(name, len(data)), io.BytesIO(data))
    return buffer.getvalue()


def _paper_files(folder: Path) -> list[tuple[str, bytes]]:
    found = []
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames.sort()
        for filename in sorted(filenames):
            path = Path(dirpath) / filename
            found.append((path.relative_to(folder).as_posix(), path.read_bytes()))
    return found


def pack_sample_archive(dest_dir: str | os.PathLike) -> Path:
    """Write ``arXiv_src_2411_001.tar`` into ``dest_dir`` and return its path.

    One member per paper, laid out like arXiv's (``sample/sample-0001.gz``): a gzipped tar for a
    multi-file paper, a gzipped ``.tex`` for a single-file one, the bare ``.pdf`` for the
    PDF-only entry. Every timestamp is fixed, so the bytes are the same on every call.
    """
    dest = Path(dest_dir)
    dest.mkdir(parents=True, exist_ok=True)
    members: list[tuple[str, bytes]] = []
    for entry, paper_id in zip(sample_entries(), sample_ids().values()):
        if entry.is_file():
            members.append((f"{ID_PREFIX}/{paper_id}{entry.suffix}", entry.read_bytes()))
            continue
        paper_files = _paper_files(entry)
        payload = paper_files[0][1] if len(paper_files) == 1 else _tar_bytes(paper_files)
        members.append((f"{ID_PREFIX}/{paper_id}.gz", gzip.compress(payload, compresslevel=9, mtime=0)))
    path = dest / ARCHIVE_NAME
    path.write_bytes(_tar_bytes(members))
    return path
