"""Papers out of arXiv bulk archives, folders and loose ``.tex`` files, safely.

Every input yields one :class:`PaperInput`: either the paper's text files (name -> bytes,
paths relative to the paper's root) or a reject reason; an input that is no paper (a README, a
``.zip``), a second tar member of the same name or a name that is not UTF-8 is a reject too, so
that inputs = records + rejects. arXiv bulk archives are streamed with :mod:`tarfile` stream mode
and held in memory one paper at a time; a plain tar of paper folders is read folder by folder.
Nothing is ever extracted to disk. Sources come from strangers, so:

- tar members with absolute paths, ``..``, links or device nodes are skipped with a warning;
- decompressed bytes are capped per paper and per kept file (gzip and tar bombs become
  ``too_large``), and so is the number of members of a paper's tar;
- folder inputs never follow a symlink that leaves the paper's folder, and only regular files are
  read: a dangling link, a link loop, a FIFO (which would block the build forever), a socket or a
  device is an ``unreadable`` reject, or a skipped file with a warning inside a paper's folder.
  The user's own links are followed: the sources named, and the entries of a folder of papers
  (but not a link to a folder that holds the link).

:func:`plan_inputs` lists the sources' units (tars, paper folders and files), which tasks can read
apart (:func:`task_share`); :func:`iter_papers` reads them all.

Each input carries a ``stamp`` (a digest of its files' bytes) so that a resumed build parses again
the papers edited since the interrupted run, even by an edit that kept sizes and times.

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
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path, PurePosixPath

logger = logging.getLogger(__name__)

_NEW_ID = re.compile(r"^(?P<id>\d{4}\.\d{4,5})(?P<version>v\d+)?$")
# Old-style ids appear in bulk archives without their slash: ``hep-th9901001`` is
# ``hep-th/9901001``; a subject class (``math.GT``) is not part of the id.
_OLD_ID = re.compile(r"^(?P<archive>[a-z][a-z\-]*)(?:\.[A-Za-z\-]+)?/?(?P<number>\d{7})(?P<version>v\d+)?$")
_ARXIV_ID = re.compile(r"^(\d{4}\.\d{4,5}|[a-z][a-z\-]*/\d{7})$")
_CHUNK = 1 << 20
# A plain tar of paper folders may hold this many times a paper's member cap.
_FOLDER_TAR_MEMBERS = 50
_TAR_BLOCK = 512
_TEX_SUFFIXES = (".tex", ".ltx", ".latex")
# A paper on its own, besides paper folders; other files (README, MANIFEST) are unsupported_format rejects.
_PAPER_FILES = (*_TEX_SUFFIXES, ".gz", ".tgz", ".pdf", ".tar")
# Where an input came from: a member of an arXiv bulk tar, a file or folder named by an arXiv id,
# any other paper folder or file, a folder of a plain tar of paper folders.
SOURCE_KINDS = ("arxiv_bulk_tar", "arxiv_id_file", "folder", "file", "tar_of_folders")
# Whether to read the input ``(key, stamp)``: asked before an input is decompressed or read, so that
# a resumed build skips what it finished and a task skips the members of a tar that are another's.
Want = Callable[[str, str], bool]


def _every(key: str, stamp: str) -> bool:
    return True


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
    ``kind`` is one of :data:`SOURCE_KINDS`. Names that are not valid UTF-8 are kept with their odd
    bytes escaped (``\\xff``), so that every string of an input can be written as JSON.
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
    kind: str = "file"

    def __post_init__(self) -> None:
        self.key, self.source, self.paper_id = map(printable, (self.key, self.source, self.paper_id))
        self.detail = printable(self.detail)


def printable(name: str) -> str:
    """``name`` with the bytes that are not UTF-8 (surrogate escapes of the file system) as ``\\xNN``."""
    return name.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def _undecodable(name: str) -> bool:
    return printable(name) != name


class _Reject(Exception):
    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


def _strip_suffixes(stem: str) -> str:
    """``stem`` without its archive and format suffixes: ``a.tex.gz``, ``a.tar.gz``, ``a.tgz`` -> ``a``."""
    lower = stem.lower()
    for suffix in (".tar.gz", ".tgz"):
        if lower.endswith(suffix) and len(stem) > len(suffix):
            return stem[: -len(suffix)]
    if lower.endswith(".gz") and len(stem) > 3:
        stem, lower = stem[:-3], lower[:-3]
    for suffix in (".tar", ".tex", ".ltx", ".latex", ".pdf", ".zip"):
        if lower.endswith(suffix) and len(stem) > len(suffix):
            return stem[: -len(suffix)]
    return stem


def parse_paper_id(name: str) -> tuple[str, str | None]:
    """``(id, version)`` from a member, file or folder name.

    ``2101/2101.00001v2.gz`` -> ``("2101.00001", "v2")``; ``0001/hep-th0001001.gz`` ->
    ``("hep-th/0001001", None)``. A version is split off arXiv ids only: any other name keeps its
    stem whole (``mobilenetv2`` stays ``mobilenetv2``).
    """
    path = PurePosixPath(name.replace("\\", "/"))
    stem = _strip_suffixes(path.name)
    # An id written with its slash (``hep-th/9901001``) spans the last two path parts.
    if len(path.parts) >= 2 and _OLD_ID.match(f"{path.parts[-2]}/{stem}"):
        stem = f"{path.parts[-2]}/{stem}"
    match = _NEW_ID.match(stem)
    if match:
        return match["id"], match["version"]
    match = _OLD_ID.match(stem)
    if match:
        return f"{match['archive']}/{match['number']}", match["version"]
    return stem, None


def is_arxiv_id(paper_id: str) -> bool:
    """Whether ``paper_id`` is an arXiv identifier (``2403.00007``, ``hep-th/9901001``), versionless."""
    return _ARXIV_ID.match(paper_id) is not None


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
    try:
        with tarfile.open(fileobj=stream, mode="r|") as tar:
            return _files_from_members(tar, tar, limits, label, "")
    except (tarfile.TarError, EOFError, OSError, zlib.error) as error:
        raise _Reject("decode_error", f"{label}: corrupt archive ({error})") from error


def _files_from_members(
    tar: tarfile.TarFile, members: Iterable[tarfile.TarInfo], limits: ArchiveLimits, label: str, prefix: str
) -> tuple[dict, list[str]]:
    """Text files of one paper's ``members`` (their names less ``prefix``), the caps applied."""
    files: dict[str, bytes] = {}
    warnings: list[str] = []
    total = pdfs = 0
    for count, member in enumerate(members, start=1):
        if count > limits.max_members:
            raise _Reject(
                "too_large",
                f"{label}: more than {limits.max_members} tar members (the cap on a paper's tar members)",
            )
        if member.isdir():
            continue
        name = safe_member_name(member.name)
        if name is None or not member.isfile():
            kind = "unsafe path" if name is None else "link or special file"
            warnings.append(printable(f"skipped tar member {member.name!r} ({kind})"))
            logger.warning("%s: skipped tar member %r (%s)", label, member.name, kind)
            continue
        name = printable(name[len(prefix) :])
        # The header's size is what the member will decompress to: refuse before reading.
        total += member.size
        if total > limits.max_paper_bytes:
            raise _Reject(
                "too_large",
                f"{label}: members add up to more than {limits.max_paper_bytes} bytes (--max-paper-mb)",
            )
        if not _keep(name, limits):
            pdfs += name.lower().endswith(".pdf")
            continue
        if member.size > limits.max_file_bytes:
            raise _Reject(
                "too_large", f"{label}: {name} is larger than {limits.max_file_bytes} bytes (--max-file-mb)"
            )
        handle = tar.extractfile(member)
        files[name] = handle.read() if handle is not None else b""
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


def _single_file_problem(name: str) -> str | None:
    """Why a file cannot be a paper on its own, or ``None`` when it can.

    A paper file is TeX, a ``.gz``/``.tgz``/``.tar`` (arXiv's shapes), a PDF (a ``pdf_only`` reject), or a
    name without an extension (old arXiv submissions); a file named by an arXiv id is always tried.
    """
    base = PurePosixPath(name).name
    lower = base.lower()
    if lower.endswith(_PAPER_FILES) or "." not in base or is_arxiv_id(parse_paper_id(name)[0]):
        return None
    if lower.endswith((".zip", ".7z", ".rar", ".tar.bz2", ".tar.xz", ".tbz2", ".txz", ".bz2", ".xz")):
        return f"{base}: this archive format is not read; unpack it into a paper folder"
    return f"{base}: not a paper (TeX, .gz, .tar or a paper folder)"


def _paper_from_bytes(name: str, data: bytes, limits: ArchiveLimits, label: str) -> tuple[dict, list[str]]:
    """Files of one paper stored as a single archive member or file named ``name``."""
    lower = name.lower()
    if lower.endswith(".pdf") or data.startswith(b"%PDF"):
        raise _Reject("pdf_only", f"{label}: only a PDF was submitted")
    if lower.endswith((".gz", ".tgz")) or data[:2] == b"\x1f\x8b":
        return _files_from_gzip(data, limits, label)
    if lower.endswith(".tar") or _looks_like_tar(data[:_TAR_BLOCK]):
        return _files_from_tar(io.BytesIO(data), limits, label)
    problem = _single_file_problem(name)
    if problem:
        raise _Reject("unsupported_format", f"{label}: {problem}")
    if len(data) > limits.max_file_bytes:
        raise _Reject("too_large", f"{label}: larger than {limits.max_file_bytes} bytes (--max-file-mb)")
    return {printable(PurePosixPath(name).name) if _keep(name, limits) else "main.tex": data}, []


def _kind(paper_id: str, kind: str) -> str:
    return "arxiv_id_file" if kind in ("folder", "file") and is_arxiv_id(paper_id) else kind


def _make(
    key: str, source: str, name: str, build: Callable[[], tuple[dict, list[str]]], stamp: str, kind: str
) -> PaperInput:
    paper_id, version = parse_paper_id(name)
    paper = PaperInput(key, source, paper_id, version, stamp=stamp, kind=_kind(paper_id, kind))
    if _undecodable(name):
        paper.reason = "bad_name"
        paper.detail = printable(f"{source}: the name is not valid UTF-8; rename it to read it")
        return paper
    try:
        paper.files, paper.warnings = build()
    except _Reject as reject:
        paper.reason, paper.detail = reject.reason, printable(reject.detail)
    return paper


def _reject(key: str, source: str, name: str, reason: str, detail: str, stamp: str, kind: str) -> PaperInput:
    paper_id, version = parse_paper_id(name)
    return PaperInput(key, source, paper_id, version, reason=reason, detail=detail, stamp=stamp, kind=kind)


def _tar_layout(path: Path) -> str:
    """``"bulk"`` for arXiv's layout (every paper one ``.gz`` or ``.pdf`` member), ``"folders"`` else.

    Decided by the first file member; a tar that cannot be read is ``"bulk"``, whose reader reports it.
    """
    try:
        with tarfile.open(path, mode="r|*") as tar:
            for member in tar:
                if member.isdir():
                    continue
                base = PurePosixPath(member.name).name.lower()
                arxiv = is_arxiv_id(parse_paper_id(member.name)[0])
                return "bulk" if arxiv or base.endswith((".gz", ".tgz", ".pdf")) else "folders"
    except (tarfile.TarError, EOFError, OSError, zlib.error):
        pass
    return "bulk"


def iter_tar(path: Path, limits: ArchiveLimits, want: Want = _every) -> Iterator[PaperInput]:
    """Papers of a ``.tar``: arXiv's bulk layout (:func:`iter_bulk_archive`) or a tar of paper folders."""
    if _tar_layout(path) == "bulk":
        yield from iter_bulk_archive(path, limits, want)
    else:
        yield from iter_folder_tar(path, limits, want)


def iter_folder_tar(path: Path, limits: ArchiveLimits, want: Want = _every) -> Iterator[PaperInput]:
    """Papers of a plain tar of paper folders: each top-level folder is one paper, each top-level file
    a single-file paper (or a reject), as if the tar were unpacked into a folder of papers. One folder
    holding every member is looked into; a tar with files only and no folder is one paper. Only the
    inputs that ``want`` accepts are read (see :data:`Want`)."""
    source, stamp = str(path), entry_stamp(path)
    try:
        with tarfile.open(path, mode="r:*") as tar:
            members = []
            # The headers are held to group them by folder: a tar of countless empty members is refused.
            for member in tar:
                members.append(member)
                if len(members) > _FOLDER_TAR_MEMBERS * limits.max_members:
                    detail = f"{path.name}: more than {len(members) - 1} members ({_FOLDER_TAR_MEMBERS} times the cap on a paper's tar members)"
                    if not want(printable(f"{source}::<members>"), stamp):
                        return
                    yield _reject(
                        f"{source}::<members>",
                        path.name,
                        path.name,
                        "too_large",
                        detail,
                        stamp,
                        "tar_of_folders",
                    )
                    return
            names = [safe_member_name(member.name) for member in members]
            prefix = _common_folder(names)
            groups: dict[str, list[tarfile.TarInfo]] = {}
            folders: set[str] = set()
            for member, name in zip(members, names):
                if prefix and name == prefix[:-1]:
                    continue
                relative = name[len(prefix) :] if name and name.startswith(prefix) else (name or member.name)
                top = relative.split("/", 1)[0]
                groups.setdefault(top, []).append(member)
                if name and ("/" in relative or member.isdir()):
                    folders.add(top)
            if not folders:
                key = printable(f"{source}::<whole>")
                if want(key, stamp):
                    build = partial(_files_from_members, tar, members, limits, path.name, "")
                    yield _make(key, path.name, path.name, build, stamp, "file")
                return
            for top in sorted(groups):
                key, label = f"{source}::{prefix}{top}", f"{path.name}:{prefix}{top}"
                if not want(printable(key), stamp):
                    continue
                if top in folders:
                    build = partial(_files_from_members, tar, groups[top], limits, label, f"{prefix}{top}/")
                    yield _make(key, label, top, build, stamp, "tar_of_folders")
                else:
                    yield _tar_file_member(tar, groups[top][0], key, label, limits, stamp)
    except (tarfile.TarError, EOFError, OSError, zlib.error) as error:
        key = f"{source}::<unreadable>"
        if want(printable(key), stamp):
            detail = f"{path.name}: the archive is unreadable ({error})"
            yield _reject(key, path.name, path.name, "decode_error", detail, stamp, "tar_of_folders")


def _common_folder(names: list[str | None]) -> str:
    """``"top/"`` when every member lies in one folder that is a folder of papers rather than a paper: it
    holds sub-folders and no TeX file of its own (``tar cf papers.tar papers/``)."""
    tops = {name.split("/", 1)[0] for name in names if name}
    if len(tops) != 1 or None in names:
        return ""
    top = tops.pop()
    inner = [name[len(top) + 1 :] for name in names if name and name != top]
    own = [rest for rest in inner if "/" not in rest]
    if len(own) < len(inner) and not any(rest.lower().endswith(_TEX_SUFFIXES) for rest in own):
        return f"{top}/"
    return ""


def _tar_file_member(
    tar: tarfile.TarFile, member: tarfile.TarInfo, key: str, label: str, limits: ArchiveLimits, stamp: str
) -> PaperInput:
    name = safe_member_name(member.name)
    if name is None or not member.isfile():
        detail = f"{label}: absolute path, '..', link or special file"
        return _reject(key, label, member.name, "unsafe_archive", detail, stamp, "tar_of_folders")
    if member.size > limits.max_paper_bytes:
        return _make(
            key, label, name, lambda: _too_large(member.size, limits, label), stamp, "tar_of_folders"
        )
    problem = _single_file_problem(name)
    if problem:
        return _reject(key, label, name, "unsupported_format", f"{label}: {problem}", stamp, "tar_of_folders")
    handle = tar.extractfile(member)
    data = handle.read() if handle is not None else b""
    return _make(
        key, label, name, lambda: _paper_from_bytes(name, data, limits, label), stamp, "tar_of_folders"
    )


def iter_bulk_archive(path: Path, limits: ArchiveLimits, want: Want = _every) -> Iterator[PaperInput]:
    """Papers of an ``arXiv_src_YYMM_NNN.tar``, streamed member by member.

    Members that ``want`` refuses (done in an interrupted run, or another task's) are not
    decompressed. An archive that is unreadable or truncated yields one ``decode_error`` input for
    the unreadable rest, so the build reports it instead of stopping. A second member of the same
    name is a ``duplicate_member`` reject (the first one is read).
    """
    source = str(path)
    stamp = entry_stamp(path)
    last = "<start>"
    seen: Counter[str] = Counter()
    try:
        with tarfile.open(path, mode="r|*") as tar:
            for member in tar:
                last = member.name
                if member.isdir():
                    continue
                seen[member.name] += 1
                key = f"{source}::{member.name}"
                label = f"{path.name}:{member.name}"
                if seen[member.name] > 1:
                    key = f"{key}#{seen[member.name]}"
                    if want(printable(key), stamp):
                        detail = f"{label}: member {seen[member.name]} of that name in the archive; the first was read"
                        yield _reject(
                            key, label, member.name, "duplicate_member", detail, stamp, "arxiv_bulk_tar"
                        )
                elif want(printable(key), stamp):
                    yield _bulk_member(tar, member, key, label, limits, stamp)
    except (tarfile.TarError, EOFError, OSError, zlib.error) as error:
        key = f"{source}::<unreadable after {last}>"
        if want(printable(key), stamp):
            logger.warning("%s: unreadable after member %s (%s)", path, printable(last), error)
            detail = f"{path.name}: the archive is unreadable after member {last} ({error})"
            yield _reject(key, path.name, path.name, "decode_error", detail, stamp, "arxiv_bulk_tar")


def _bulk_member(
    tar: tarfile.TarFile, member: tarfile.TarInfo, key: str, label: str, limits: ArchiveLimits, stamp: str
) -> PaperInput:
    name = safe_member_name(member.name)
    if name is None or not member.isfile():
        logger.warning("%s: skipped unsafe member", printable(label))
        detail = f"{label}: absolute path, '..', link or special file"
        return _reject(key, label, member.name, "unsafe_archive", detail, stamp, "arxiv_bulk_tar")
    if member.size > limits.max_paper_bytes:
        return _make(
            key, label, name, lambda: _too_large(member.size, limits, label), stamp, "arxiv_bulk_tar"
        )
    handle = tar.extractfile(member)
    data = handle.read() if handle is not None else b""
    if len(data) != member.size:
        raise tarfile.ReadError(f"{member.name} is cut short ({len(data)} of {member.size} bytes)")
    return _make(
        key, label, name, lambda: _paper_from_bytes(name, data, limits, label), stamp, "arxiv_bulk_tar"
    )


def _too_large(size: int, limits: ArchiveLimits, label: str) -> tuple[dict, list[str]]:
    raise _Reject(
        "too_large", f"{label}: {size} bytes compressed, the cap is {limits.max_paper_bytes} (--max-paper-mb)"
    )


def _digest_file(path: Path) -> str:
    """SHA-1 of a regular file's bytes; a FIFO or device is never opened."""
    if not stat.S_ISREG(os.stat(path).st_mode):  # opening a device can act on it
        return "not a regular file"
    digest = hashlib.sha1()
    with os.fdopen(os.open(path, os.O_RDONLY | os.O_NONBLOCK), "rb") as handle:
        if not stat.S_ISREG(os.fstat(handle.fileno()).st_mode):
            return "not a regular file"
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def entry_stamp(path: Path) -> str:
    """A digest of the bytes of a file, or of the names and bytes of every file under a folder.

    A resumed build parses an input again when its stamp changed: an edited paper is never taken
    from the journal of an interrupted run, even when the edit kept its size and modification time
    (``cp -p``, ``rsync -a``, ``touch -r``). A link out of the folder is stamped by its target's name,
    never read. Empty when ``path`` cannot be read (it is then reported as ``unreadable`` when read).
    """
    try:
        if not path.is_dir():
            return f"{path.stat().st_size}:{_digest_file(path)}"
    except OSError:
        return ""
    digest = hashlib.sha1()
    for dirpath, dirnames, filenames in os.walk(path):
        dirnames.sort()
        for filename in sorted(filenames):
            file = Path(dirpath) / filename
            try:
                seen = _digest_file(file) if _inside(file, path) else f"-> {os.path.realpath(file)}"
            except OSError:
                seen = "unreadable"
            name = file.relative_to(path).as_posix()
            digest.update(f"{name}\\0{seen}\\n".encode("utf-8", "surrogateescape"))
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
                raise _Reject("too_large", f"{label}: {info.st_size} bytes, the cap is {cap} (--max-file-mb)")
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
            relative = printable(path.relative_to(root).as_posix())
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
                raise _Reject(
                    "too_large",
                    f"{label}: {relative} takes the paper over {limits.max_paper_bytes} bytes (--max-paper-mb)",
                )
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
        except _Reject as reject:
            # Over the cap it may well be a paper: counted, so that it is reported rather than absorbed
            # into a neighbour's folder (where it would make that paper too_large).
            mains += reject.reason == "too_large"
    if mains:
        return mains == 1
    return bool(tex) and not any(child.is_dir() for child in children)


def _entry_files(entry: Path, limits: ArchiveLimits, label: str, follow: bool) -> tuple[dict, list[str]]:
    """Files of a paper folder or a single paper file. Only a folder or a regular file inside its parent
    folder is read, or, with ``follow`` (a link the user made: a source, or a child of a source folder),
    wherever the link points, but never a folder that holds the link itself."""
    if not follow and not _inside(entry, entry.parent):
        raise _Reject("unsafe_archive", f"{label}: a link out of its folder")
    if follow and _inside(entry.parent, entry):
        raise _Reject("unsafe_archive", f"{label}: a link to a folder that holds it")
    try:
        mode = entry.stat().st_mode
    except OSError as error:
        raise _Reject("unreadable", f"{label}: {_os_problem(entry, error)}") from error
    if stat.S_ISDIR(mode):
        return _files_from_folder(entry, limits, label)
    problem = _single_file_problem(entry.name)
    if problem:
        raise _Reject("unsupported_format", f"{label}: {problem}")
    data = _read_regular(entry, limits.max_paper_bytes, label)
    return _paper_from_bytes(entry.name, data, limits, label)


def _iter_folder_entry(
    entry: Path, limits: ArchiveLimits, want: Want, label: str, follow: bool = True
) -> Iterator[PaperInput]:
    """One paper folder or file. ``label`` names it in the report without the local path above it."""
    key = printable(str(entry))
    # Not stamped when it may not be read: a link to / would have the whole disk walked.
    readable = _inside(entry, entry.parent) or (follow and not _inside(entry.parent, entry))
    stamp = entry_stamp(entry) if readable else ""
    if want(key, stamp):
        kind = "folder" if entry.is_dir() else "file"
        yield _make(key, label, entry.name, lambda: _entry_files(entry, limits, label, follow), stamp, kind)


@dataclass(frozen=True)
class InputUnit:
    """A piece of the inputs that can be read on its own: a ``.tar`` (``kind="tar"``, its papers
    streamed), or one paper folder or file (``kind="entry"``). ``label`` names it in the report."""

    path: Path
    label: str
    kind: str


def plan_inputs(sources: Iterable[str | os.PathLike], limits: ArchiveLimits | None = None) -> list[InputUnit]:
    """The units of ``sources``, in a deterministic order; reading them all gives :func:`iter_papers`.

    A source is a ``.tar`` (arXiv's bulk layout, or a plain tar of paper folders), a paper folder
    (exactly one of its top-level ``.tex`` files has ``\\begin{document}``), a folder of papers
    (sub-folders, ``.tex``, ``.gz``, ``.tar.gz`` and ``.pdf`` files, and ``.tar`` archives, in name
    order), or a single paper file of those kinds. Every entry of a folder of papers but hidden ones is
    an input: a file that is no paper (a README, a ``.zip``) is an ``unsupported_format`` reject. The
    sources, and the entries of a folder of papers, may be symbolic links (they are the user's own);
    inside a paper, links that leave it are never followed.
    """
    limits = limits or ArchiveLimits()
    units: list[InputUnit] = []
    for source in sources:
        path = Path(source)
        if not path.exists():
            raise FileNotFoundError(f"{path}: no such file or folder")
        if path.is_dir() and not _undecodable(path.name):
            if _is_paper_folder(path, limits):
                units.append(InputUnit(path, path.name, "entry"))
                continue
            for child in sorted(path.iterdir(), key=lambda p: p.name):
                if child.name.startswith("."):
                    logger.debug("%s: hidden, skipped", child)
                    continue
                if child.name.lower().endswith(".tar") and child.is_file() and not _undecodable(child.name):
                    units.append(InputUnit(child, child.name, "tar"))
                else:
                    units.append(InputUnit(child, f"{path.name}/{child.name}", "entry"))
        elif path.name.lower().endswith(".tar") and path.is_file() and not _undecodable(path.name):
            units.append(InputUnit(path, path.name, "tar"))
        else:
            units.append(InputUnit(path, path.name, "entry"))
    return units


def iter_unit(unit: InputUnit, limits: ArchiveLimits, want: Want = _every) -> Iterator[PaperInput]:
    """The inputs of one unit that ``want`` accepts (see :data:`Want`)."""
    if unit.kind == "tar":
        yield from iter_tar(unit.path, limits, want)
    else:
        yield from _iter_folder_entry(unit.path, limits, want, unit.label)


def iter_papers(
    sources: Iterable[str | os.PathLike],
    limits: ArchiveLimits | None = None,
    skip: Mapping[str, str] | None = None,
) -> Iterator[PaperInput]:
    """Every input of every source (see :func:`plan_inputs`), in a deterministic order.

    Inputs that ``skip`` maps to their current stamp (``{key: stamp}`` of a resumed build) are not
    read again.
    """
    limits = limits or ArchiveLimits()
    skip = skip or {}
    for unit in plan_inputs(sources, limits):
        yield from iter_unit(unit, limits, lambda key, stamp: skip.get(key) != stamp)


def part_of(key: str, parts: int) -> int:
    """Which of ``parts`` parts of a tar the input ``key`` (``TAR::MEMBER``) belongs to: a stable hash of
    the member's name, the same on every machine, so that the tasks sharing a tar read each member once."""
    digest = hashlib.sha1(key.partition("::")[2].encode("utf-8", "surrogateescape")).digest()
    return int.from_bytes(digest[:8], "big") % parts


def task_share(units: list[InputUnit], rank: int, tasks: int) -> list[tuple[InputUnit, int, int]]:
    """``(unit, part, parts)`` that task ``rank`` of ``tasks`` reads: together, every input once.

    With at least as many units as tasks, units go round-robin to the tasks, whole. With fewer (a
    build of one big tar on many tasks), the tasks ``r`` with ``r % len(units) == i`` share unit ``i``:
    a tar is split among them by :func:`part_of` its members' keys (each task streams the tar's
    headers and reads only its own members), a paper folder or file goes to the first of them.
    """
    if not units:
        return []
    if len(units) >= tasks:
        return [(unit, 0, 1) for index, unit in enumerate(units) if index % tasks == rank]
    unit = units[rank % len(units)]
    sharing = len(range(rank % len(units), tasks, len(units)))
    if unit.kind == "tar":
        return [(unit, rank // len(units), sharing)]
    return [(unit, 0, 1)] if rank < len(units) else []
