"""The ``structformer`` dispatcher: cheap to start, and bad input ends in one line and status 2."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from structformer.cli import main
from structformer.errors import InputError, run_command


def _run_python(code: str, cwd: Path) -> str:
    result = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], cwd=cwd, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


@pytest.mark.parametrize(
    "code",
    [
        "import structformer.cli, sys; structformer.cli.main([]); structformer.cli.main(['--help']);"
        " structformer.cli.main(['--version'])",
        "import structformer.errors, sys",
    ],
    ids=["cli", "errors"],
)
def test_help_and_errors_do_not_import_torch(code: str, tmp_path: Path) -> None:
    """Importing torch costs seconds; the help text and the error type need neither it nor transformers."""
    out = _run_python(f"{code}\nprint(sorted({{'torch', 'transformers'}} & set(sys.modules)))", tmp_path)
    assert out.splitlines()[-1] == "[]"


def test_importing_the_model_registers_the_auto_classes(tmp_path: Path) -> None:
    """In a fresh process: ``from structformer.modeling import ...`` is enough, as for code that then reaches
    the model only through the Auto classes."""
    out = _run_python(
        """
        import sys
        import structformer
        assert "torch" not in sys.modules
        from structformer.modeling import StructBertConfig
        from transformers import AutoConfig, AutoModelForMaskedLM
        config = StructBertConfig(
            vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37
        )
        print(type(AutoModelForMaskedLM.from_config(config)) is structformer.StructBertForMaskedLM)
        print(type(AutoConfig.for_model("structbert")) is StructBertConfig)
        """,
        tmp_path,
    )
    assert out.split() == ["True", "True"]


def test_model_classes_are_attributes_of_the_package() -> None:
    import structformer
    import structformer.modeling
    from structformer import StructBertModel

    assert structformer.StructBertConfig is structformer.modeling.StructBertConfig
    assert StructBertModel is structformer.modeling.StructBertModel
    assert "StructBertForTokenClassification" in dir(structformer)
    with pytest.raises(AttributeError, match="StructBertDecoder"):
        structformer.StructBertDecoder  # noqa: B018


def test_help_and_version(capsys: pytest.CaptureFixture) -> None:
    assert main([]) == 0 and main(["--help"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: structformer <command>") and "  convert " in out
    assert main(["--version"]) == 0
    assert capsys.readouterr().out.startswith("structformer 0.")


def test_unknown_command(capsys: pytest.CaptureFixture) -> None:
    assert main(["unknown-cmd"]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err == (
        "structformer: error: unknown command 'unknown-cmd'; choose one of experiment, build-corpus, "
        "train-tokenizer, pretrain, finetune, analyze-attention, convert, publish\n"
    )


def test_convert_from_a_missing_folder(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    missing = tmp_path / "missing"
    assert main(["convert", "--from", str(missing), "--to", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"structformer convert: error: {missing}: no such folder") and err.count("\n") == 1
    assert not (tmp_path / "out").exists()


def _raise(error: Exception):
    def command(argv: list[str]) -> None:
        raise error

    return command


@pytest.mark.parametrize(
    "error",
    [
        InputError("corpus.tar: not an archive;\n  give a .tar or .tar.gz"),
        FileNotFoundError("tok/: no such folder"),
        FileExistsError(17, "File exists", "out"),
        PermissionError(13, "Permission denied", "/root/out"),
    ],
    ids=type,
)
def test_bad_input_is_one_line_and_status_2(error: Exception, capsys: pytest.CaptureFixture) -> None:
    assert run_command("build-corpus", _raise(error), []) == 2
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("structformer build-corpus: error: ")
    if isinstance(error, InputError):
        assert lines[0].endswith("error: corpus.tar: not an archive; give a .tar or .tar.gz")


def test_bugs_keep_their_traceback_and_results_pass_through() -> None:
    with pytest.raises(KeyError):
        run_command("pretrain", _raise(KeyError("step")), [])
    assert run_command("pretrain", lambda argv: None, []) == 0
    assert run_command("pretrain", lambda argv: len(argv), ["a", "b", "c"]) == 3


def test_run_command_reads_sys_argv_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    """What ``if __name__ == "__main__": sys.exit(run_command(NAME, main))`` relies on."""
    monkeypatch.setattr(sys, "argv", ["structformer/convert.py", "--from", "x"])
    assert run_command("convert", lambda argv: 0 if argv == ["--from", "x"] else 1) == 0


def test_python_dash_m_runs_the_command_and_trainer_scripts_report_bad_input_in_one_line(
    tmp_path: Path,
) -> None:
    version = subprocess.run(
        [sys.executable, "-m", "structformer", "--version"], capture_output=True, text=True
    )
    assert version.returncode == 0 and version.stdout.startswith("structformer ")
    script = Path(__file__).resolve().parents[1] / "trainers" / "pretrain.py"
    missing = str(tmp_path / "nowhere")
    run = subprocess.run(
        [
            sys.executable,
            str(script),
            "--dataset",
            missing,
            "--max-steps",
            "1",
            "--output-dir",
            str(tmp_path / "o"),
        ],
        capture_output=True,
        text=True,
    )
    assert run.returncode == 2, run.stderr
    assert (
        run.stderr.strip()
        .splitlines()[-1]
        .startswith(f"structformer pretrain: error: dataset not found: {missing}")
    )
    assert "Traceback" not in run.stderr
