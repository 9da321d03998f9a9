"""What analyze-attention tells its user, and the per-layer figure's lines (trainers/analyze_attention.py, report)."""

from __future__ import annotations

from pathlib import Path

import pytest
from test_analysis import tiny_setup  # noqa: F401  (the module-scoped fixture: a tiny corpus and 2 models)

from structformer.trainers import analyze_attention as aa
from structformer.trainers.report import MODE_TITLES, per_layer_line_styles


def _run(checkpoints, corpus, out: Path) -> int:
    return aa.main(
        ["--checkpoints", *map(str, checkpoints), "--probe", str(corpus), "--output-dir", str(out)]
    )


def test_success_says_where_it_wrote_and_warns_about_few_documents(tiny_setup, tmp_path, capsys):  # noqa: F811
    _, corpus, checkpoints = tiny_setup
    out = tmp_path / "out"
    assert _run(checkpoints, corpus, out) == 0
    captured = capsys.readouterr()
    assert captured.out.splitlines()[-1] == (
        f"analyze-attention: probed 2 checkpoint(s) on 3 document(s); wrote {out / 'attention.json'} "
        f"and 5 figures in {out}"
    )
    assert len(list(out.glob("*.png"))) == 5
    warnings = [line for line in captured.err.splitlines() if "warning" in line]
    assert warnings == [
        "analyze-attention: warning: only 3 document(s) probed, fewer than 5: the measures describe these "
        "documents, not the model; probe more (--max-docs, --split, --probe)"
    ]


def test_enough_documents_give_no_warning(tiny_setup, tmp_path, capsys, monkeypatch):  # noqa: F811
    _, corpus, checkpoints = tiny_setup
    monkeypatch.setattr(aa, "MIN_PROBE_DOCUMENTS", 3)
    assert _run(checkpoints, corpus, tmp_path / "out") == 0
    assert "warning" not in capsys.readouterr().err


@pytest.mark.parametrize("count", [1, 2, 3])
def test_every_per_layer_line_has_its_own_colour_and_the_modes_their_own_markers(count):
    labels = [f"model-{k}" for k in range(count)]
    styles = per_layer_line_styles(labels)
    assert set(styles) == {(label, mode) for label in labels for mode in MODE_TITLES}
    colours = [style["color"] for style in styles.values()]
    assert len(set(colours)) == len(colours)
    for label in labels:
        with_mask, without = styles[label, "structure"], styles[label, "plain"]
        assert with_mask["marker"] != without["marker"] and with_mask["ls"] != without["ls"]
        assert without["mfc"] == "none"  # hollow: visible on top of the filled marker of the other mode
