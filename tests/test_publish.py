"""``structformer publish``: staging, fresh-process validation, and what is (not) sent to the Hub."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import huggingface_hub
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from factories import build_results, build_tiny_corpus, build_tiny_model

from structformer.cli import main as cli_main
from structformer.errors import InputError
from structformer.hub_cards import publish


class NoNetwork:
    """Stands in for HfApi where nothing may be sent: any use fails the test."""

    def __init__(self, *args, **kwargs) -> None:
        raise AssertionError("HfApi was used: something would have been sent")


class RecordingApi:
    """Stands in for HfApi: records the calls and a snapshot of the folder at upload time."""

    calls: list[tuple[str, dict]] = []
    uploaded: list[str] = []

    def __init__(self, token: str | None = None) -> None:
        self.calls.append(("init", {"token": token}))

    def create_repo(self, repo_id: str, **kwargs) -> None:
        self.calls.append(("create_repo", {"repo_id": repo_id, **kwargs}))

    def create_branch(self, repo_id: str, **kwargs) -> None:
        self.calls.append(("create_branch", {"repo_id": repo_id, **kwargs}))

    def upload_folder(self, *, folder_path: Path, **kwargs) -> str:
        self.calls.append(("upload_folder", kwargs))
        ignored = set(kwargs.get("ignore_patterns") or [])
        RecordingApi.uploaded = sorted(
            str(p.relative_to(folder_path))
            for p in Path(folder_path).rglob("*")
            if p.is_file() and p.name not in ignored
        )
        return "https://huggingface.co/datasets/org/name/commit/abc"


@pytest.fixture(autouse=True)
def no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(huggingface_hub, "get_token", lambda: None)
    monkeypatch.setattr(huggingface_hub, "HfApi", NoNetwork)
    monkeypatch.setattr(huggingface_hub.hf_api, "HfApi", NoNetwork)
    for function in ("create_repo", "upload_folder", "create_commit", "upload_file"):
        monkeypatch.setattr(huggingface_hub, function, NoNetwork)
    RecordingApi.calls, RecordingApi.uploaded = [], []


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    exp = tmp_path_factory.mktemp("exp")
    build_tiny_model(exp / "models" / "structured", local_attention_scope="section")
    build_results(exp)
    return exp / "models" / "structured"


def test_model_dry_run_stages_validates_and_sends_nothing(
    model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    staging = tmp_path / "staging"
    argv = [
        "model",
        str(model_dir),
        "--repo-id",
        "org/structbert-tiny",
        "--dry-run",
        "--staging-dir",
        str(staging),
    ]
    argv += ["--results", str(model_dir.parent.parent / "results.json"), "--datasets", "org/arxiv_structured"]
    assert publish.main(argv) == 0
    out = capsys.readouterr().out
    expected = {
        "README.md",
        "config.json",
        "model.safetensors",
        "configuration_structbert.py",
        "modeling_structbert.py",
        "attention_structbert.py",
        "tokenizer.json",
        "tokenizer_config.json",
        "training_args.json",
        "eval_results.json",
        "attention_heatmap_structured.png",
        "training_curve.png",
    }
    assert {str(p) for p in publish.staged_files(staging)} == expected
    for name in expected:
        assert name in out
    assert "dry run: would upload to public model repository org/structbert-tiny" in out
    assert f"{len(expected)} files" in out and "logits match" in out
    config = json.loads((staging / "config.json").read_text())
    assert config["auto_map"]["AutoModelForMaskedLM"] == "modeling_structbert.StructBertForMaskedLM"
    card = huggingface_hub.ModelCard.load(staging / "README.md")
    assert card.data.datasets == ["org/arxiv_structured"] and 'repo = "org/structbert-tiny"' in card.text
    # A re-run may reuse the staging folder it made; a foreign non-empty folder is refused.
    assert publish.prepare_staging_dir(staging, "model") == staging and publish.staged_files(staging) == []
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "keep.txt").write_text("x")
    with pytest.raises(InputError, match="not empty"):
        publish.prepare_staging_dir(foreign, "model")


@pytest.mark.slow
def test_model_with_stale_remote_code_is_not_sent(
    model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    """Remote code that computes something else than the package fails the logits check: nothing is sent."""
    monkeypatch.setattr(huggingface_hub, "HfApi", RecordingApi)
    stale = tmp_path / "stale"
    shutil.copytree(model_dir, stale)
    with (stale / "modeling_structbert.py").open("a", encoding="utf-8") as f:
        f.write(
            "\n_forward = StructBertForMaskedLM.forward\n\n\n"
            "def _scaled(self, *args, **kwargs):\n"
            "    out = _forward(self, *args, **kwargs)\n"
            "    out.logits = out.logits * 1.5\n"
            "    return out\n\n\n"
            "StructBertForMaskedLM.forward = _scaled\n"
        )
    argv = [
        "model",
        str(stale),
        "--repo-id",
        "org/m",
        "--token",
        "hf_x",
        "--staging-dir",
        str(tmp_path / "s"),
    ]
    assert publish.main(argv) == 1
    assert "logits differ" in capsys.readouterr().err
    assert RecordingApi.calls == []


def test_model_with_corrupted_weights_is_not_sent(
    model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    monkeypatch.setattr(huggingface_hub, "HfApi", RecordingApi)
    broken = tmp_path / "broken"
    shutil.copytree(model_dir, broken)
    weights = broken / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    argv = [
        "model",
        str(broken),
        "--repo-id",
        "org/m",
        "--token",
        "hf_x",
        "--staging-dir",
        str(tmp_path / "s"),
    ]
    assert publish.main(argv) == 1
    assert "does not load" in capsys.readouterr().err
    assert RecordingApi.calls == []


def test_dataset_dry_run_stages_validates_and_sends_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    corpus = build_tiny_corpus(tmp_path / "corpus")
    staging = tmp_path / "staging"
    argv = [
        "dataset",
        str(corpus),
        "--repo-id",
        "org/arxiv",
        "--dry-run",
        "--private",
        "--staging-dir",
        str(staging),
    ]
    assert publish.main(argv) == 0
    out = capsys.readouterr().out
    shards = [
        f"data/{c}/{s}-00000-of-00001.parquet"
        for c in ("arxiv_structured", "arxiv_plain")
        for s in ("train", "validation")
    ]
    assert {str(p) for p in publish.staged_files(staging)} == {"README.md", "build_report.json", *shards}
    assert "dry run: would upload to private dataset repository org/arxiv" in out and "6 files" in out
    assert "default arxiv_structured (train 5, validation 2)" in out
    assert 'load_dataset("org/arxiv")' in (staging / "README.md").read_text()


def skip_validation(monkeypatch: pytest.MonkeyPatch) -> None:
    """The fresh-process check is tested above; the upload tests need not pay for it again."""
    result = {
        "configs": ["arxiv_structured", "arxiv_plain"],
        "default": "arxiv_structured",
        "splits": {"train": 5},
    }
    monkeypatch.setattr(publish, "validate_dataset", lambda staging, timeout: result)


def test_dataset_upload_honours_options(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(huggingface_hub, "HfApi", RecordingApi)
    skip_validation(monkeypatch)
    corpus = build_tiny_corpus(tmp_path / "corpus")
    argv = [
        "dataset",
        str(corpus),
        "--repo-id",
        "org/arxiv",
        "--private",
        "--revision",
        "v2",
        "--token",
        "hf_x",
    ]
    argv += ["--staging-dir", str(tmp_path / "s")]
    assert publish.main([*argv, "--commit-message", "first corpus"]) == 0
    calls = dict(RecordingApi.calls)
    assert calls["init"] == {"token": "hf_x"}
    assert calls["create_repo"] == {
        "repo_id": "org/arxiv",
        "repo_type": "dataset",
        "private": True,
        "exist_ok": True,
    }
    assert calls["create_branch"]["branch"] == "v2"
    upload = calls["upload_folder"]
    assert upload["repo_id"] == "org/arxiv" and upload["repo_type"] == "dataset"
    assert upload["revision"] == "v2" and upload["commit_message"] == "first corpus"
    assert publish.STAGING_MARKER not in RecordingApi.uploaded and "README.md" in RecordingApi.uploaded
    assert len(RecordingApi.uploaded) == 6


def test_dataset_without_token_names_the_staging_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    skip_validation(monkeypatch)
    corpus = build_tiny_corpus(tmp_path / "corpus")
    staging = tmp_path / "staged here"
    assert (
        publish.main(["dataset", str(corpus), "--repo-id", "org/arxiv", "--staging-dir", str(staging)]) == 1
    )
    err = capsys.readouterr().err
    assert "no Hugging Face token" in err and str(staging) in err and "Nothing was sent" in err
    assert (staging / "README.md").is_file()


def test_dataset_whose_configs_disagree_is_not_sent(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    monkeypatch.setattr(huggingface_hub, "HfApi", RecordingApi)
    corpus = build_tiny_corpus(tmp_path / "corpus")
    shard = corpus / "data" / "arxiv_plain" / "train-00000-of-00001.parquet"
    rows = pq.read_table(shard).to_pylist()
    rows[0]["text"] += " (edited)"
    pq.write_table(pa.Table.from_pylist(rows), shard)
    argv = [
        "dataset",
        str(corpus),
        "--repo-id",
        "org/arxiv",
        "--token",
        "hf_x",
        "--staging-dir",
        str(tmp_path / "s"),
    ]
    assert publish.main(argv) == 1
    assert "do not hold the same ids and text" in capsys.readouterr().err
    assert RecordingApi.calls == []


def test_relative_staging_folder_becomes_absolute(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    # The fresh process runs elsewhere, so a relative staging folder must become absolute.
    assert publish.prepare_staging_dir("relative", "model") == tmp_path / "relative"


def _publish_error(argv: list[str], capsys: pytest.CaptureFixture) -> str:
    """The one line ``structformer publish ARGV`` prints for bad input (status 2)."""
    assert cli_main(["publish", *argv]) == 2
    captured = capsys.readouterr()
    lines = captured.err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("structformer publish: error: "), captured.err
    return lines[0]


def test_model_without_tokenizer_says_so(
    model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """Not transformers' advice to install sentencepiece, which would not help."""
    bare = tmp_path / "bare"
    shutil.copytree(model_dir, bare)
    for name in publish.TOKENIZER_FILES:
        (bare / name).unlink(missing_ok=True)
    error = _publish_error(["model", str(bare), "--repo-id", "org/m", "--dry-run"], capsys)
    assert f"no tokenizer in {bare}" in error and "tokenizer.save_pretrained" in error


def test_model_without_config(model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    folder = tmp_path / "weights-only"
    shutil.copytree(model_dir, folder)
    (folder / "config.json").unlink()
    error = _publish_error(["model", str(folder), "--repo-id", "org/m", "--dry-run"], capsys)
    assert f"{folder}: no config.json" in error and "save_pretrained" in error


@pytest.mark.parametrize(
    "repo_id", ["no-slash", "org/", "a/b/c", "org/bad..name", "org/-name", "org/name.git"]
)
def test_invalid_repo_id_fails_even_in_a_dry_run(
    model_dir: Path, repo_id: str, capsys: pytest.CaptureFixture
) -> None:
    error = _publish_error(["model", str(model_dir), "--repo-id", repo_id, "--dry-run"], capsys)
    assert f"--repo-id {repo_id!r}" in error


def test_missing_folder(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    missing = tmp_path / "missing"
    error = _publish_error(["dataset", str(missing), "--repo-id", "org/x", "--dry-run"], capsys)
    assert f"{missing}: no such folder" in error
