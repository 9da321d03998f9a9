"""``structformer publish`` leaves no staging folder behind and uploads no path of the publisher's machine."""

from __future__ import annotations

import json
import re
import tempfile
from pathlib import Path

import pytest
from factories import build_tiny_corpus, build_tiny_model

from structformer.hub_cards import publish


@pytest.fixture
def temp_root(tmp_path, monkeypatch) -> Path:
    root = tmp_path / "tmp"
    root.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(root))
    return root


@pytest.fixture
def model_dir(tmp_path) -> Path:
    model = build_tiny_model(tmp_path / "home" / "me" / "runs" / "structured")
    args = json.loads((model / "training_args.json").read_text())
    args |= {
        "dataset": str(tmp_path / "home" / "me" / "corpus"),
        "output_dir": str(model),
        "tokenizer": str(tmp_path / "home" / "me" / "tok"),
        "cache_dir": "~/.cache/structformer",
        "nested": {"paths": [str(tmp_path / "a"), "relative/b"]},
    }
    (model / "training_args.json").write_text(json.dumps(args))
    return model


def _argv(model_dir: Path) -> list[str]:
    return ["model", str(model_dir), "--repo-id", "org/m", "--dry-run"]


def test_dry_run_removes_its_temporary_staging_and_stages_no_absolute_path(
    model_dir, temp_root, tmp_path, monkeypatch
):
    staged = {}

    def validate(source, staging, *, reference=None, timeout=0.0):
        assert staging.parent == temp_root
        staged.update(
            {p.relative_to(staging).as_posix(): p.read_bytes() for p in staging.rglob("*") if p.is_file()}
        )
        return {"class": "StructBertForMaskedLM", "max_abs_logit_difference": 0.0}

    monkeypatch.setattr(publish, "validate_model", validate)
    assert publish.main(_argv(model_dir)) == 0
    assert list(temp_root.iterdir()) == []
    assert "training_args.json" in staged and "README.md" in staged
    # No file that would be uploaded names a folder of this machine.
    home = re.compile(rb"(?<![\w.])(/(?:tmp|home|root|Users|data)/|~/)")
    text_files = {n: d for n, d in staged.items() if n.endswith((".json", ".md")) and n != "tokenizer.json"}
    assert {"README.md", "training_args.json", "eval_results.json", "config.json"} <= set(text_files)
    leaks = {name: home.findall(data) for name, data in text_files.items()}
    assert {name: found for name, found in leaks.items() if found} == {}
    assert not [name for name, data in staged.items() if str(tmp_path).encode() in data]
    args = json.loads(staged["training_args.json"])
    assert (
        args["dataset"] == "corpus"
        and args["output_dir"] == "structured"
        and args["cache_dir"] == "structformer"
    )
    assert args["nested"] == {"paths": ["a", "relative/b"]}
    # the source folder keeps its own record
    assert json.loads((model_dir / "training_args.json").read_text())["output_dir"] == str(model_dir)


def test_a_failed_step_removes_the_temporary_staging(model_dir, temp_root, monkeypatch, capsys):
    def fail(*args, **kwargs):
        raise publish.PublishError("model: the staged model's logits differ")

    monkeypatch.setattr(publish, "validate_model", fail)
    assert publish.main(_argv(model_dir)) == 1
    assert list(temp_root.iterdir()) == []
    assert "temporary and is removed; pass --staging-dir to keep one" in capsys.readouterr().err


def test_ctrl_c_removes_the_temporary_staging(model_dir, temp_root, monkeypatch):
    def interrupt(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(publish, "validate_model", interrupt)
    with pytest.raises(KeyboardInterrupt):
        publish.main(_argv(model_dir))
    assert list(temp_root.iterdir()) == []


def test_a_given_staging_folder_is_kept(model_dir, temp_root, tmp_path, monkeypatch):
    monkeypatch.setattr(
        publish,
        "validate_model",
        lambda *a, **k: {"class": "StructBertForMaskedLM", "max_abs_logit_difference": 0.0},
    )
    staging = tmp_path / "staging"
    assert publish.main([*_argv(model_dir), "--staging-dir", str(staging)]) == 0
    assert (staging / "README.md").is_file() and list(temp_root.iterdir()) == []


def test_dataset_staging_names_no_local_file(temp_root, tmp_path, monkeypatch):
    corpus = build_tiny_corpus(tmp_path / "home" / "me" / "corpus")
    report = json.loads((corpus / "build_report.json").read_text())
    report["options"]["metadata"] = str(tmp_path / "home" / "me" / "arxiv-metadata.json")
    report["rejected"][0]["source"] = str(tmp_path / "home" / "me" / "arXiv_src_2411_001.tar")
    (corpus / "build_report.json").write_text(json.dumps(report))
    staged = {}

    def validate(staging, *, timeout=0.0):
        staged.update({p.name: p.read_text() for p in staging.iterdir() if p.suffix in (".json", ".md")})
        return {"configs": ["arxiv_plain", "arxiv_structured"], "default": "arxiv_structured", "splits": {}}

    monkeypatch.setattr(publish, "validate_dataset", validate)
    assert publish.main(["dataset", str(corpus), "--repo-id", "org/arxiv", "--dry-run"]) == 0
    assert set(staged) == {"README.md", "build_report.json"}
    assert not [name for name, text in staged.items() if str(tmp_path) in text]
    staged_report = json.loads(staged["build_report.json"])
    assert staged_report["options"]["metadata"] == "arxiv-metadata.json"
    assert staged_report["rejected"][0]["source"] == "arXiv_src_2411_001.tar"
    assert list(temp_root.iterdir()) == []
