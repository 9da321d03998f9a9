"""Papers out of arXiv bulk archives, folders and loose ``.tex`` files, safely.

Every input yields one :class:`PaperInput`: either the paper's text files (name -> bytes,
paths relative to the paper's root) or a reject reason. Archives are streamed with
:mod:`tarfile` stream mode and held in memory one paper at a time; nothing is ever
extracted to disk. Sources come from strangers, so:

- tar members with absolute paths, ``..``, links or device nodes are skipped with a warning;
- decompressed bytes are capped per paper and per kept file (gzip and tar bombs become
  ``too_large``), and so is the number of members of a paper's tar;
- folder inputs never follow a symlink that leaves the paper's folder, and only regular files are
  read: a dangling link, a link loop, a FIFO (which would block the build forever), a socket or a
  device is an ``unreadable`` reject, or a skipped file with a warning inside a paper's folder.

Each input carries a ``stamp`` (sizes and modification times of its files) so that a resumed build
parses again the papers edited since the interrupted run.

Only files whose extension is in ``ArchiveLimits.text_extensions`` (or that have no extension,
for ``\\input{name}`` of an extension-less file) are kept; images and other binaries are
streamed past without being stored.
"""

from __future__ import annotations

import errno
import gzip
import hashlib
import io
import logging
import os
import re
import stat
import tarfile
import zlib
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

logger = logging.getLogger(__name__)

_NEW_ID = re.compile(r"^(?P<id>\d{4}\.\d{4,5})(?P<version>v\d+)?$")
# Old-style ids appear in bulk archives without their slash: ``hep-th9901001`` is
# ``hep-th/9901001``; a subject class (``math.GT``) is not part of the id.
_OLD_ID = re.compile(r"^(?P<archive>[a-z][a-z\-]*)(?:\.[A-Za-z\-]+)?/?(?P<number>\d{7})(?P<version>v\d+)?$")
_GENERIC_VERSION = re.compile(r"^(?P<id>.+?)(?P<version>v\d+)$")
_CHUNK = 1 << 20
_TAR_BLOCK = 512
_TEX_SUFFIXES = (".tex", ".ltx", ".latex")
# What a folder of papers may hold besides paper folders; other files (README, MANIFEST) are not papers.
_PAPER_FILES = (*_TEX_SUFFIXES, ".gz", ".tgz", ".pdf", ".tar")


@dataclass(frozen=True)
class ArchiveLimits:
    """Caps that keep one hostile paper from exhausting memory.

    Args:
        max_paper_bytes: decompressed bytes of one paper (every member of its tar counted,
            kept or not, and the compressed ``.gz`` itself).
        max_file_bytes: decompressed bytes of one kept text file.
        max_members: members of one paper's tar.
        text_extensions: extensions (lower case, with the dot) of the files handed to the parser.
    """

    max_paper_bytes: int = 256 * 2**20
    max_file_bytes: int = 32 * 2**20
    max_members: int = 20_000
    text_extensions: tuple[str, ...] = (".tex", ".ltx", ".latex", ".sty", ".bbl", ".def", ".cfg", ".txt")


@dataclass
class PaperInput:
    """One input paper: its files, or the reason it cannot be parsed.

    ``key`` is unique over a build and stable between runs (source path plus member or
    folder name); it is what the resume journal records, with ``stamp`` (see :func:`entry_stamp`).
    """

    key: str
    source: str
    paper_id: str
    version: str | None
    files: dict[str, bytes] = field(default_factory=dict)
    reason: str | None = None
    detail: str = ""
    warnings: list[str] = field(default_factory=list)
    stamp: str = ""


class _Reject(Exception):
    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


def parse_paper_id(name: str) -> tuple[str, str | None]:
    """``(id, version)`` from a member, file or folder name.

    ``2101/2101.00001v2.gz`` -> ``("2101.00001", "v2")``; ``0001/hep-th0001001.gz`` ->
    ``("hep-th/0001001", None)``; anything else keeps its stem (and a trailing ``vN``).
    """
    path = PurePosixPath(name.replace("\\", "/"))
    stem = path.name
    for suffix in (".tar.gz", ".tgz", ".gz", ".tar", ".tex", ".ltx", ".latex", ".pdf"):
        if stem.lower().endswith(suffix) and len(stem) > len(suffix):
            stem = stem[: -len(suffix)]
            break
    # An id written with its slash (``hep-th/9901001``) spans the last two path parts.
    if len(path.parts) >= 2 and _OLD_ID.match(f"{path.parts[-2]}/{stem}"):
        stem = f"{path.parts[-2]}/{stem}"
    match = _NEW_ID.match(stem)
    if match:
        return match["id"], match["version"]
    match = _OLD_ID.match(stem)
    if match:
        return f"{match['archive']}/{match['number']}", match["version"]
    match = _GENERIC_VERSION.match(stem)
    if match:
        return match["id"], match["version"]
    return stem, None


def safe_member_name(name: str) -> str | None:
    """The normalized relative path of a tar member, or ``None`` when it could escape."""
    if not name or "\x00" in name:
        return None
    posix = name.replace("\\", "/")
    if posix.startswith("/") or re.match(r"^[A-Za-z]:", posix):
        return None
    parts = [part for part in posix.split("/") if part not in ("", ".")]
    if not parts or any(part == ".." for part in parts):
        return None
    return "/".join(parts)


def _keep(name: str, limits: ArchiveLimits) -> bool:
    suffix = PurePosixPath(name).suffix.lower()
    return suffix in limits.text_extensions or suffix == ""


def _read_capped(stream: io.BufferedIOBase, cap: int, what: str) -> bytes:
    """Read a whole stream, refusing to hold more than ``cap`` bytes of it."""
    chunks: list[bytes] = []
    total = 0
    while True:
        chunk = stream.read(min(_CHUNK, cap + 1 - total))
        if not chunk:
            return b"".join(chunks)
        total += len(chunk)
        if total > cap:
            raise _Reject("too_large", f"{what} decompresses to more than {cap} bytes")
        chunks.append(chunk)


def _looks_like_tar(block: bytes) -> bool:
    if len(block) < _TAR_BLOCK:
        return False
    if block[257:262] == b"ustar":
        return True
    try:
        tarfile.TarInfo.frombuf(block[:_TAR_BLOCK], "utf-8", "surrogateescape")
    except tarfile.HeaderError:
        return False
    return True


def _files_from_tar(stream: io.BufferedIOBase, limits: ArchiveLimits, label: str) -> tuple[dict, list[str]]:
    """Text files of a paper's tar (a stream), with warnings for skipped members."""
    files: dict[str, bytes] = {}
    warnings: list[str] = []
    total = pdfs = 0
    try:
        with tarfile.open(fileobj=stream, mode="r|") as tar:
            for count, member in enumerate(tar, start=1):
                if count > limits.max_members:
                    raise _Reject("too_large", f"{label}: more than {limits.max_members} tar members")
                if member.isdir():
                    continue
                name = safe_member_name(member.name)
                if name is None or not member.isfile():
                    kind = "unsafe path" if name is None else "link or special file"
                    warnings.append(f"skipped tar member {member.name!r} ({kind})")
                    logger.warning("%s: skipped tar member %r (%s)", label, member.name, kind)
                    continue
                # The header's size is what the member will decompress to: refuse before reading.
                total += member.size
                if total > limits.max_paper_bytes:
                    raise _Reject(
                        "too_large", f"{label}: members add up to more than {limits.max_paper_bytes} bytes"
                    )
                if not _keep(name, limits):
                    pdfs += name.lower().endswith(".pdf")
                    continue
                if member.size > limits.max_file_bytes:
                    raise _Reject(
                        "too_large", f"{label}: {name} is larger than {limits.max_file_bytes} bytes"
                    )
                handle = tar.extractfile(member)
                files[name] = handle.read() if handle is not None else b""
    except (tarfile.TarError, EOFError, OSError, zlib.error) as error:
        raise _Reject("decode_error", f"{label}: corrupt archive ({error})") from error
    _check_not_pdf_only(files, pdfs, label)
    return files, warnings


def _check_not_pdf_only(files: dict[str, bytes], pdfs: int, label: str) -> None:
    if pdfs and not any(PurePosixPath(name).suffix.lower() in _TEX_SUFFIXES for name in files):
        raise _Reject("pdf_only", f"{label}: {pdfs} PDF file(s) and no TeX source")


def _files_from_gzip(data: bytes, limits: ArchiveLimits, label: str) -> tuple[dict, list[str]]:
    """A paper's ``.gz`` as arXiv ships it: a gzipped tar, a gzipped ``.tex`` or a gzipped PDF."""
    try:
        head = gzip.GzipFile(fileobj=io.BytesIO(data)).read(_TAR_BLOCK)
    except (OSError, EOFError, zlib.error) as error:
        raise _Reject("decode_error", f"{label}: corrupt gzip ({error})") from error
    if head.startswith(b"%PDF") or head.startswith(b"%!PS"):
        raise _Reject(
            "pdf_only", f"{label}: the source is a {'PDF' if head.startswith(b'%PDF') else 'PostScript'} file"
        )
    stream = gzip.GzipFile(fileobj=io.BytesIO(data))
    if _looks_like_tar(head):
        return _files_from_tar(stream, limits, label)
    try:
        text = _read_capped(stream, min(limits.max_file_bytes, limits.max_paper_bytes), label)
    except (OSError, EOFError, zlib.error) as error:
        raise _Reject("decode_error", f"{label}: corrupt gzip ({error})") from error
    return {"main.tex": text}, []


def _paper_from_bytes(name: str, data: bytes, limits: ArchiveLimits, label: str) -> tuple[dict, list[str]]:
    """Files of one paper stored as a single archive member or file named ``name``."""
    lower = name.lower()
    if lower.endswith(".pdf") or data.startswith(b"%PDF"):
        raise _Reject("pdf_only", f"{label}: only a PDF was submitted")
    if lower.endswith((".gz", ".tgz")) or data[:2] == b"\x1f\x8b":
        return _files_from_gzip(data, limits, label)
    if lower.endswith(".tar") or _looks_like_tar(data[:_TAR_BLOCK]):
        return _files_from_tar(io.BytesIO(data), limits, label)
    if len(data) > limits.max_file_bytes:
        raise _Reject("too_large", f"{label}: larger than {limits.max_file_bytes} bytes")
    return {PurePosixPath(name).name if _keep(name, limits) else "main.tex": data}, []


def _make(
    key: str, source: str, name: str, build: Callable[[], tuple[dict, list[str]]], stamp: str
) -> PaperInput:
    paper_id, version = parse_paper_id(name)
    paper = PaperInput(key=key, source=source, paper_id=paper_id, version=version, stamp=stamp)
    try:
        paper.files, paper.warnings = build()
    except _Reject as reject:
        paper.reason, paper.detail = reject.reason, reject.detail
    return paper


def iter_bulk_archive(
    path: Path, limits: ArchiveLimits, skip: Mapping[str, str] | None = None
) -> Iterator[PaperInput]:
    """Papers of an ``arXiv_src_YYMM_NNN.tar``, streamed member by member.

    Members that ``skip`` maps to the archive's current stamp (done in an interrupted run) are not
    decompressed. An archive that is unreadable or truncated yields one ``decode_error`` input for
    the unreadable rest, so the build reports it instead of stopping.
    """
    skip = skip or {}
    source = str(path)
    stamp = entry_stamp(path)
    last = "<start>"
    try:
        with tarfile.open(path, mode="r|*") as tar:
            for member in tar:
                last = member.name
                if member.isdir():
                    continue
                key = f"{source}::{member.name}"
                if skip.get(key) != stamp:
                    yield _bulk_member(tar, member, key, f"{path.name}:{member.name}", limits, stamp)
    except (tarfile.TarError, EOFError, OSError, zlib.error) as error:
        key = f"{source}::<unreadable after {last}>"
        if skip.get(key) != stamp:
            logger.warning("%s: unreadable after member %s (%s)", path, last, error)
            yield PaperInput(
                key, path.name, path.name, None, reason="decode_error",
                detail=f"{path.name}: the archive is unreadable after member {last} ({error})", stamp=stamp,
            )  # fmt: skip


def _bulk_member(
    tar: tarfile.TarFile, member: tarfile.TarInfo, key: str, label: str, limits: ArchiveLimits, stamp: str
) -> PaperInput:
    name = safe_member_name(member.name)
    if name is None or not member.isfile():
        logger.warning("%s: skipped unsafe member", label)
        paper_id, version = parse_paper_id(member.name)
        detail = f"{label}: absolute path, '..', link or special file"
        return PaperInput(key, label, paper_id, version, reason="unsafe_archive", detail=detail, stamp=stamp)
    if member.size > limits.max_paper_bytes:
        return _make(key, label, name, lambda: _too_large(member.size, limits, label), stamp)
    handle = tar.extractfile(member)
    data = handle.read() if handle is not None else b""
    if len(data) != member.size:
        raise tarfile.ReadError(f"{member.name} is cut short ({len(data)} of {member.size} bytes)")
    return _make(key, label, name, lambda: _paper_from_bytes(name, data, limits, label), stamp)


def _too_large(size: int, limits: ArchiveLimits, label: str) -> tuple[dict, list[str]]:
    raise _Reject("too_large", f"{label}: {size} bytes compressed, the cap is {limits.max_paper_bytes}")


def entry_stamp(path: Path) -> str:
    """Size and modification time (ns) of a file, or a digest of those of every file under a folder.

    A resumed build parses an input again when its stamp changed: an edited paper is never taken
    from the journal of an interrupted run. Empty when ``path`` cannot be stat'ed (it is then
    reported as ``unreadable`` when read).
    """
    try:
        info = path.stat()
    except OSError:
        return ""
    if not stat.S_ISDIR(info.st_mode):
        return f"{info.st_size}:{info.st_mtime_ns}"
    digest = hashlib.sha1()
    for dirpath, dirnames, filenames in os.walk(path):
        dirnames.sort()
        for filename in sorted(filenames):
            file = Path(dirpath) / filename
            try:
                info = file.stat()
                seen = f"{info.st_size}:{info.st_mtime_ns}"
            except OSError:
                seen = "unreadable"
            digest.update(f"{file.relative_to(path).as_posix()}\0{seen}\n".encode())
    return digest.hexdigest()


def _inside(path: Path, folder: Path) -> bool:
    """Whether ``path``, every link followed, stays inside ``folder`` (``realpath`` never raises on loops)."""
    return Path(os.path.realpath(path)).is_relative_to(os.path.realpath(folder))


def _os_problem(path: Path, error: OSError) -> str:
    if error.errno == errno.ELOOP:
        return "a symbolic link loop"
    if error.errno == errno.ENOENT and path.is_symlink():
        return "a dangling symbolic link"
    return error.strerror or str(error)


def _read_regular(path: Path, cap: int, label: str) -> bytes:
    """The bytes of a regular file of at most ``cap`` bytes.

    A FIFO would block the build forever and opening a device can act on it, so neither is opened;
    the open (which does not block) is checked again, for a file swapped for one after the first check.
    """
    special = _Reject("unreadable", f"{label}: not a regular file (a FIFO, socket or device)")
    try:
        if not stat.S_ISREG(os.stat(path).st_mode):
            raise special
        with os.fdopen(os.open(path, os.O_RDONLY | os.O_NONBLOCK), "rb") as handle:
            info = os.fstat(handle.fileno())
            if not stat.S_ISREG(info.st_mode):
                raise special
            if info.st_size > cap:
                raise _Reject("too_large", f"{label}: {info.st_size} bytes, the cap is {cap}")
            return _read_capped(handle, cap, label)
    except OSError as error:
        raise _Reject("unreadable", f"{label}: {_os_problem(path, error)}") from error


def _files_from_folder(root: Path, limits: ArchiveLimits, label: str) -> tuple[dict, list[str]]:
    """Text files under a paper folder, never following a link out of it.

    Like a tar member that is a link or a special file, a file that cannot be read (a dangling link,
    a link loop, a FIFO) is skipped with a warning: the rest of the paper may still parse.
    """
    files: dict[str, bytes] = {}
    warnings: list[str] = []
    total = pdfs = 0
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        dirnames.sort()
        for filename in sorted(filenames):
            path = Path(dirpath) / filename
            relative = path.relative_to(root).as_posix()
            if not _inside(path, root):
                warnings.append(f"skipped {relative!r} (a link out of the paper folder)")
                logger.warning("%s: skipped %r (a link out of the paper folder)", label, relative)
                continue
            if not _keep(relative, limits):
                pdfs += relative.lower().endswith(".pdf")
                continue
            try:
                data = _read_regular(path, limits.max_file_bytes, f"{label}: {relative}")
            except _Reject as reject:
                if reject.reason != "unreadable":
                    raise
                warnings.append(f"skipped {reject.detail}")
                logger.warning("skipped %s", reject.detail)
                continue
            total += len(data)
            if total > limits.max_paper_bytes:
                raise _Reject("too_large", f"{label}: {relative} takes the paper over the size cap")
            files[relative] = data
    _check_not_pdf_only(files, pdfs, label)
    return files, warnings


def _is_paper_folder(folder: Path, limits: ArchiveLimits) -> bool:
    """A paper's own folder, rather than a folder of papers.

    It is one when exactly one top-level TeX file opens the document; several such files
    are loose single-file papers. Without any, top-level TeX and no sub-folders still make a
    (broken) paper, so that it is reported rather than skipped.
    """
    children = sorted(folder.iterdir())
    tex = [
        child
        for child in children
        if child.suffix.lower() in _TEX_SUFFIXES and child.is_file() and _inside(child, folder)
    ]
    mains = 0
    for child in tex:
        try:
            mains += b"\\begin{document}" in _read_regular(child, limits.max_file_bytes, str(child))
        except _Reject:
            continue  # reported when the file is read as a paper
    if mains:
        return mains == 1
    return bool(tex) and not any(child.is_dir() for child in children)


def _entry_files(entry: Path, limits: ArchiveLimits, label: str) -> tuple[dict, list[str]]:
    """Files of a paper folder or a single paper file; only a folder or a regular file inside its
    parent folder is read."""
    if not _inside(entry, entry.parent):
        raise _Reject("unsafe_archive", f"{label}: a link out of its folder")
    try:
        mode = entry.stat().st_mode
    except OSError as error:
        raise _Reject("unreadable", f"{label}: {_os_problem(entry, error)}") from error
    if stat.S_ISDIR(mode):
        return _files_from_folder(entry, limits, label)
    data = _read_regular(entry, limits.max_paper_bytes, label)
    return _paper_from_bytes(entry.name, data, limits, label)


def _iter_folder_entry(
    entry: Path, limits: ArchiveLimits, skip: Mapping[str, str], label: str
) -> Iterator[PaperInput]:
    """One paper folder or file. ``label`` names it in the report without the local path above it."""
    key = str(entry)
    # Not stamped when it leaves its folder: a link to / would have the whole disk walked.
    stamp = entry_stamp(entry) if _inside(entry, entry.parent) else ""
    if skip.get(key) != stamp:
        yield _make(key, label, entry.name, lambda: _entry_files(entry, limits, label), stamp)


def iter_papers(
    sources: Iterable[str | os.PathLike],
    limits: ArchiveLimits | None = None,
    skip: Mapping[str, str] | None = None,
) -> Iterator[PaperInput]:
    """Every paper of every source, in a deterministic order.

    A source is an arXiv bulk ``.tar``, a paper folder (exactly one of its top-level
    ``.tex`` files has ``\\begin{document}``), a folder of papers (sub-folders, ``.tex``, ``.gz``, ``.tar.gz`` and ``.pdf`` files,
    and bulk ``.tar`` archives, in name order), or a single paper file of those kinds.
    Inputs that ``skip`` maps to their current stamp (``{key: stamp}`` of a resumed build) are not
    read again.
    """
    limits = limits or ArchiveLimits()
    skip = skip or {}
    for source in sources:
        path = Path(source)
        if not path.exists():
            raise FileNotFoundError(f"{path}: no such file or folder")
        if path.is_dir():
            if _is_paper_folder(path, limits):
                yield from _iter_folder_entry(path, limits, skip, path.name)
                continue
            for child in sorted(path.iterdir(), key=lambda p: p.name):
                if child.name.startswith(".") or not (
                    child.is_dir() or child.name.lower().endswith(_PAPER_FILES)
                ):
                    logger.info("%s: not a paper (no paper folder or file), skipped", child)
                    continue
                if child.name.lower().endswith(".tar") and _inside(child, path) and child.is_file():
                    yield from iter_bulk_archive(child, limits, skip)
                else:
                    yield from _iter_folder_entry(child, limits, skip, f"{path.name}/{child.name}")
        elif path.name.lower().endswith(".tar") and path.is_file():
            yield from iter_bulk_archive(path, limits, skip)
        else:
            yield from _iter_folder_entry(path, limits, skip, path.name)
