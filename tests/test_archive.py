"""Reading papers out of arXiv bulk archives, folders and files, and refusing hostile ones."""

from __future__ import annotations

import gzip
import io
import os
import tarfile
from pathlib import Path

import pytest

from structformer.dataset_scripts.archive import (
    ArchiveLimits,
    iter_bulk_archive,
    iter_papers,
    parse_paper_id,
    safe_member_name,
)
from structformer.dataset_scripts.sample import SAMPLE_RECORDS, pack_sample_archive, sample_dir, sample_ids

MINIMAL = b"\\documentclass{article}\\begin{document}\\section{A}Text.\\end{document}"


def _tar(members: list[tarfile.TarInfo | tuple[str, bytes]]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.GNU_FORMAT) as tar:
        for member in members:
            if isinstance(member, tarfile.TarInfo):
                tar.addfile(member)
            else:
                info = tarfile.TarInfo(member[0])
                info.size = len(member[1])
                tar.addfile(info, io.BytesIO(member[1]))
    return buffer.getvalue()


def _bulk(path: Path, members: list[tarfile.TarInfo | tuple[str, bytes]]) -> Path:
    path.write_bytes(_tar(members))
    return path


def _special(name: str, kind: bytes, target: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = target
    return info


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("2101/2101.00001.gz", ("2101.00001", None)),
        ("2101/2101.00001v3.gz", ("2101.00001", "v3")),
        ("1501/1501.0001.gz", ("1501.0001", None)),
        ("9901/hep-th9901001.gz", ("hep-th/9901001", None)),
        ("0301/math.GT0301001.pdf", ("math/0301001", None)),
        ("hep-th/9901001v2", ("hep-th/9901001", "v2")),
        ("my-paper", ("my-paper", None)),
        ("notes-v2.tex", ("notes-v2", None)),
        ("project.tar.gz", ("project", None)),
        # issue 14.4: the version rule is for arXiv ids only, and .tex.gz is stripped whole
        ("papers/mobilenetv2", ("mobilenetv2", None)),
        ("yolov7", ("yolov7", None)),
        ("2403.00007v2.tex.gz", ("2403.00007", "v2")),
        ("hep-th/9901001v1.tex.gz", ("hep-th/9901001", "v1")),
    ],
)
def test_parse_paper_id(name: str, expected: tuple[str, str | None]) -> None:
    assert parse_paper_id(name) == expected


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("a/b.tex", "a/b.tex"),
        ("./a//b.tex", "a/b.tex"),
        ("../x.tex", None),
        ("a/../../x.tex", None),
        ("/etc/passwd", None),
        ("C:/x.tex", None),
        ("a\\..\\x.tex", None),
        ("", None),
    ],
)
def test_safe_member_name(name: str, expected: str | None) -> None:
    assert safe_member_name(name) == expected


def test_sample_archive_is_arxiv_shaped_and_deterministic(tmp_path: Path) -> None:
    first = pack_sample_archive(tmp_path / "a")
    second = pack_sample_archive(tmp_path / "b")
    assert first.name == "arXiv_src_2411_001.tar"
    assert first.read_bytes() == second.read_bytes()
    with tarfile.open(first) as tar:
        names = tar.getnames()
    assert len(names) == len(sample_ids()) == SAMPLE_RECORDS + 2
    assert names[0] == "sample/sample-0001.gz" and names[-1] == "sample/sample-0022.pdf"
    papers = list(iter_papers([first]))
    by_id = {paper.paper_id: paper for paper in papers}
    ids = sample_ids()
    # single-file paper: a gzipped .tex; multi-file: a gzipped tar with its folders
    assert list(by_id[ids["01-spectral-pruning"]].files) == ["main.tex"]
    assert sorted(by_id[ids["02-glacier-sensors"]].files) == [
        "main.tex",
        "sections/calibration.tex",
        "sections/design.tex",
        "sections/intro.tex",
        "sections/results.tex",
    ]
    assert by_id[ids["22-pdf-only.pdf"]].reason == "pdf_only"
    assert (
        sum(paper.reason is None for paper in papers) == SAMPLE_RECORDS + 1
    )  # the broken draft is the parser's


def test_folder_of_papers_single_folder_and_single_file(tmp_path: Path) -> None:
    sample = sample_dir()
    papers = list(iter_papers([sample]))
    assert [paper.paper_id for paper in papers] == [
        name.removesuffix(".pdf") for name in sorted(sample_ids())
    ]
    assert (papers[-1].paper_id, papers[-1].reason) == ("22-pdf-only", "pdf_only")
    single = list(iter_papers([sample / "02-glacier-sensors"]))
    assert len(single) == 1 and "sections/intro.tex" in single[0].files and "refs.bib" not in single[0].files
    loose = list(iter_papers([sample / "01-spectral-pruning" / "paper.tex"]))
    assert len(loose) == 1 and loose[0].paper_id == "paper" and list(loose[0].files) == ["paper.tex"]
    versioned = tmp_path / "2101.00001v2.tex"
    versioned.write_bytes(MINIMAL)
    (paper,) = iter_papers([versioned])
    assert (paper.paper_id, paper.version, paper.reason) == ("2101.00001", "v2", None)
    gz = tmp_path / "hep-th9901001.gz"
    gz.write_bytes(gzip.compress(MINIMAL))
    (paper,) = iter_papers([gz])
    assert (paper.paper_id, paper.files) == ("hep-th/9901001", {"main.tex": MINIMAL})
    with pytest.raises(FileNotFoundError, match="nowhere"):
        list(iter_papers([tmp_path / "nowhere"]))


def test_tar_members_that_escape_are_skipped(tmp_path: Path) -> None:
    inner = _tar(
        [
            ("main.tex", MINIMAL),
            ("../evil.tex", b"escape"),
            ("/etc/passwd.tex", b"absolute"),
            ("sub/../../x.tex", b"sneaky"),
            _special("link.tex", tarfile.SYMTYPE, "/etc/passwd"),
            _special("hard.tex", tarfile.LNKTYPE, "main.tex"),
            _special("dev.tex", tarfile.CHRTYPE),
            ("figure.png", b"\x89PNG not kept"),
        ]
    )
    archive = _bulk(
        tmp_path / "arXiv_src_2101_001.tar",
        [
            ("2101/2101.00001.gz", gzip.compress(inner)),
            ("../2101.00002.gz", gzip.compress(MINIMAL)),
            _special("2101/2101.00003.gz", tarfile.SYMTYPE, "/etc/shadow"),
        ],
    )
    first, second, third = iter_papers([archive])
    assert first.files == {"main.tex": MINIMAL}
    assert len(first.warnings) == 6
    assert (second.reason, third.reason) == ("unsafe_archive", "unsafe_archive")
    assert third.paper_id == "2101.00003"


def test_gzip_bomb_and_tar_bomb_are_too_large(tmp_path: Path) -> None:
    limits = ArchiveLimits(max_paper_bytes=2 * 2**20, max_file_bytes=2**20, max_members=50)
    zeros = b"\0" * (3 * 2**20)  # compresses to a few kilobytes
    gzip_bomb = gzip.compress(b"\\documentclass{article}" + zeros)
    tar_bomb = gzip.compress(_tar([("main.tex", MINIMAL), ("padding.bin", zeros)]))
    big_file = gzip.compress(_tar([("main.tex", MINIMAL + b"\0" * (2**20 + 1))]))
    many = gzip.compress(_tar([(f"f{i}.tex", b"x") for i in range(51)]))
    archive = _bulk(
        tmp_path / "arXiv_src_2101_001.tar",
        [
            ("2101/2101.00001.gz", gzip_bomb),
            ("2101/2101.00002.gz", tar_bomb),
            ("2101/2101.00003.gz", big_file),
            ("2101/2101.00004.gz", many),
            ("2101/2101.00005.gz", gzip.compress(MINIMAL)),
        ],
    )
    assert len(gzip_bomb) < 10_000 and len(tar_bomb) < 10_000
    papers = list(iter_bulk_archive(archive, limits))
    assert [paper.reason for paper in papers] == ["too_large"] * 4 + [None]
    assert "more than" in papers[0].detail


def test_corrupt_inputs_become_rejects(tmp_path: Path) -> None:
    truncated = gzip.compress(_tar([("main.tex", MINIMAL * 200)]))[:-40]
    pdf_in_tar = gzip.compress(_tar([("paper.pdf", b"%PDF-1.4 ...")]))
    gz_pdf = gzip.compress(b"%PDF-1.5 ...")
    archive = _bulk(
        tmp_path / "arXiv_src_2101_001.tar",
        [
            ("2101/2101.00001.gz", truncated),
            ("2101/2101.00002.gz", b"\x1f\x8bnot really gzip"),
            ("2101/2101.00003.gz", pdf_in_tar),
            ("2101/2101.00004.gz", gz_pdf),
        ],
    )
    reasons = [paper.reason for paper in iter_papers([archive])]
    assert reasons == ["decode_error", "decode_error", "pdf_only", "pdf_only"]
    whole = _tar([("2101/2101.00001.gz", gzip.compress(MINIMAL)), ("2101/2101.00002.gz", os.urandom(4000))])
    cut = tmp_path / "arXiv_src_2101_002.tar"
    cut.write_bytes(whole[: 1024 + 512 + 1000])  # a download that stopped inside the second member
    papers = list(iter_papers([cut]))
    assert [paper.reason for paper in papers] == [None, "decode_error"]
    assert "unreadable after member 2101/2101.00002.gz" in papers[-1].detail


def test_folder_links_never_leave_the_paper(tmp_path: Path) -> None:
    secret = tmp_path / "secret.tex"
    secret.write_text("TOP SECRET")
    paper = tmp_path / "papers" / "p1"
    (paper / "sec").mkdir(parents=True)
    (paper / "main.tex").write_bytes(MINIMAL)
    (paper / "sec" / "a.tex").write_text("inside")
    os.symlink(secret, paper / "leak.tex")
    os.symlink(paper / "sec" / "a.tex", paper / "alias.tex")
    os.symlink(tmp_path, paper / "up")
    os.symlink(secret, tmp_path / "papers" / "p2.tex")
    os.symlink(tmp_path, tmp_path / "papers" / "p3")
    found = list(iter_papers([tmp_path / "papers"]))
    assert [p.paper_id for p in found] == ["p1", "p2", "p3"]
    assert sorted(found[0].files) == ["alias.tex", "main.tex", "sec/a.tex"]
    assert b"TOP SECRET" not in b"".join(found[0].files.values())
    # a link among the papers is the user's own and is followed, unless it holds the folder itself
    assert found[1].files == {"p2.tex": b"TOP SECRET"}
    assert (found[2].reason, found[2].detail) == (
        "unsafe_archive",
        "papers/p3: a link to a folder that holds it",
    )


def test_skip_leaves_finished_members_unread(tmp_path: Path) -> None:
    archive = pack_sample_archive(tmp_path)
    papers = list(iter_papers([archive]))
    keys = [paper.key for paper in papers]
    rest = list(iter_papers([archive], skip={paper.key: paper.stamp for paper in papers[:5]}))
    assert [paper.key for paper in rest] == keys[5:]
    assert len(set(keys)) == len(keys)
    # a journal entry of another version of the archive is not a reason to skip
    assert len(list(iter_papers([archive], skip=dict.fromkeys(keys, "0:0")))) == len(keys)


def test_symlinked_paper_folders_are_read(tmp_path: Path) -> None:
    """Issue 17.7: a folder of links to paper folders, and a link to a paper folder, named by the user."""
    store = tmp_path / "store"
    for name in ("alpha", "beta"):
        (store / name).mkdir(parents=True)
        (store / name / "main.tex").write_bytes(MINIMAL)
    links = tmp_path / "links"
    links.mkdir()
    for name in ("alpha", "beta"):
        os.symlink(store / name, links / name)
    os.symlink(store / "alpha", tmp_path / "one")
    found = list(iter_papers([links, tmp_path / "one"]))
    assert [(p.paper_id, p.reason, sorted(p.files)) for p in found] == [
        ("alpha", None, ["main.tex"]),
        ("beta", None, ["main.tex"]),
        ("one", None, ["main.tex"]),
    ]
    assert {p.kind for p in found} == {"folder"}


def test_every_entry_is_an_input(tmp_path: Path) -> None:
    """Issue 14.9: a second member of the same name and a .zip are rejects, never lost or skipped."""
    archive = _bulk(
        tmp_path / "arXiv_src_2101_001.tar",
        [(f"2101/2101.0000{i}.gz", gzip.compress(MINIMAL)) for i in range(1, 9)]
        + [("2101/2101.00003.gz", gzip.compress(MINIMAL))],
    )
    papers = list(iter_papers([archive]))
    assert len(papers) == 9 and len({p.key for p in papers}) == 9
    assert [p.reason for p in papers].count("duplicate_member") == 1
    folder = tmp_path / "papers"
    (folder / "a").mkdir(parents=True)
    (folder / "a" / "main.tex").write_bytes(MINIMAL)
    (folder / "b.zip").write_bytes(b"PK\x03\x04")
    (folder / "MANIFEST.tsv").write_text("folder\tmain_tex\n\\documentclass \\begin{document}\n")
    (folder / ".hidden").write_text("")
    found = {p.paper_id: (p.reason, p.kind) for p in iter_papers([folder])}
    assert found == {
        "a": (None, "folder"),
        "b": ("unsupported_format", "file"),
        "MANIFEST.tsv": ("unsupported_format", "file"),
    }


def test_undecodable_names_are_rejects(tmp_path: Path) -> None:
    """Issue 14.11: a folder or member name that is not UTF-8 is a reject whose strings are printable."""
    folder = tmp_path / "papers"
    (folder / "good").mkdir(parents=True)
    (folder / "good" / "main.tex").write_bytes(MINIMAL)
    bad = os.fsencode(folder) + b"/bad\xff"
    os.mkdir(bad)
    Path(os.fsdecode(bad + b"/main.tex")).write_bytes(MINIMAL)
    archive = _bulk(
        tmp_path / "arXiv_src_2402_001.tar",
        [
            ("2402/2402.00001.gz", gzip.compress(MINIMAL)),
            ("2402/2402.0000\udcff5.gz", gzip.compress(MINIMAL)),
        ],
    )
    papers = list(iter_papers([folder, archive]))
    assert [p.reason for p in papers] == ["bad_name", None, None, "bad_name"]
    for paper in papers:
        for text in (paper.key, paper.source, paper.paper_id, paper.detail):
            text.encode("utf-8")  # no surrogate left to crash a JSON journal
    assert papers[0].paper_id == "bad\\xff"


def test_plain_tar_of_paper_folders(tmp_path: Path) -> None:
    """Issue 17.6: each top-level folder of a plain tar is one paper; loose files are their own inputs."""
    members = []
    for name in ("alpha", "beta"):
        members += [
            (f"{name}/main.tex", MINIMAL),
            (f"{name}/sec/intro.tex", b"Intro."),
            (f"{name}/fig.png", b"\x89PNG"),
        ]
    members += [("README.md", b"# papers"), ("gamma.tex", MINIMAL)]
    plain = _bulk(tmp_path / "papers.tar", members)
    found = {p.paper_id: (p.reason, sorted(p.files), p.kind) for p in iter_papers([plain])}
    assert found == {
        "README.md": ("unsupported_format", [], "tar_of_folders"),
        "alpha": (None, ["main.tex", "sec/intro.tex"], "tar_of_folders"),
        "beta": (None, ["main.tex", "sec/intro.tex"], "tar_of_folders"),
        "gamma": (None, ["gamma.tex"], "tar_of_folders"),
    }
    # `tar cf papers.tar papers/`: the one folder that holds them all is looked into
    wrapped = _bulk(
        tmp_path / "wrapped.tar",
        [_special("papers/", tarfile.DIRTYPE)]
        + [(f"papers/{name}", data) for name, data in members[:6]]
        + [("papers/README.md", b"# papers")],
    )
    assert [(p.paper_id, p.reason) for p in iter_papers([wrapped])] == [
        ("README.md", "unsupported_format"),
        ("alpha", None),
        ("beta", None),
    ]
    # the headers a tar of folders holds in memory are capped too
    many = _bulk(tmp_path / "many.tar", [(f"p{i}/main.tex", MINIMAL) for i in range(60)])
    assert [p.reason for p in iter_papers([many], ArchiveLimits(max_members=1))] == ["too_large"]
    # a tar of one paper's files, no folder: one paper
    single = _bulk(tmp_path / "single.tar", [("main.tex", MINIMAL), ("refs.bbl", b"")])
    assert [(p.paper_id, sorted(p.files)) for p in iter_papers([single])] == [
        ("single", ["main.tex", "refs.bbl"])
    ]


def test_stamps_follow_content_not_size_and_mtime(tmp_path: Path) -> None:
    """Issue 14.10: an edit that keeps the size and restores the mtime changes the stamp."""
    from structformer.dataset_scripts.archive import entry_stamp

    loose = tmp_path / "paper.tex"
    loose.write_bytes(MINIMAL)
    folder = tmp_path / "p"
    folder.mkdir()
    (folder / "main.tex").write_bytes(MINIMAL)
    for path, file in ((loose, loose), (folder, folder / "main.tex")):
        before = entry_stamp(path)
        info = file.stat()
        file.write_bytes(MINIMAL.replace(b"Text", b"Txet"))
        os.utime(file, ns=(info.st_atime_ns, info.st_mtime_ns))
        assert entry_stamp(path) != before
