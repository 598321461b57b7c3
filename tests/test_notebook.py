"""The tutorial notebook: committed clean, and executed headless end to end on the default (offline) data."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import nbformat
import pytest

NOTEBOOK = Path(__file__).resolve().parents[1] / "notebooks" / "tutorial.ipynb"


def _code_cells(nb):
    return [c for c in nb.cells if c.cell_type == "code"]


def test_committed_notebook_is_clean_and_uses_our_packages():
    nb = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(nb)
    cells = _code_cells(nb)
    assert all(not c.outputs and c.execution_count is None for c in cells), "clear the notebook's outputs"
    first = cells[0]
    assert "parameters" in first.metadata.get("tags", [])
    assert re.search(r'^DATASET = "digits"', first.source, re.M)
    source = "\n".join(c.source for c in cells)
    assert not re.search(r"^\s*(import|from)\s+captum\b", source, re.M), "the notebook must use tracin_widgets"
    for name in ("TracInCPFast", "TracInCPFastRandProj", "AnnoyNearestNeighbors"):
        assert re.search(rf"from tracin_widgets\.influence import .*\b{name}\b", source)
    assert "from tracin_widgets import InfluenceExplorer" in source
    assert "from tracin_widgets.tutorial import" in source


def _text_outputs(nb) -> str:
    parts = []
    for cell in _code_cells(nb):
        for out in cell.outputs:
            if out.output_type == "stream":
                parts.append(out.text)
            elif out.output_type in ("execute_result", "display_data"):
                parts.append(out.get("data", {}).get("text/plain", ""))
            elif out.output_type == "error":
                parts.append("\n".join(out.traceback))
    return "\n".join(parts)


@pytest.mark.notebook
def test_notebook_runs_headless_on_digits(tmp_path, monkeypatch):
    from nbclient import NotebookClient

    work = tmp_path / "run"
    work.mkdir()
    nb = nbformat.read(NOTEBOOK, as_version=4)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))  # the explorers' default review files
    monkeypatch.setenv("TRACIN_TUTORIAL_DIR", str(work))  # data/ and checkpoints/ go to tmp, not the repo
    monkeypatch.setenv("MPLBACKEND", "module://matplotlib_inline.backend_inline")
    client = NotebookClient(
        nb, timeout=900, kernel_name="python3", resources={"metadata": {"path": str(work)}}, allow_errors=False
    )
    start = time.perf_counter()
    try:
        client.execute()
    finally:
        nbformat.write(nb, tmp_path / "executed.ipynb")  # for debugging a failure
    elapsed = time.perf_counter() - start
    print(f"tutorial notebook executed in {elapsed:.1f} s")

    text = _text_outputs(nb)
    assert not [o for c in _code_cells(nb) for o in c.outputs if o.output_type == "error"]

    auc = re.search(r"AUC of the ROC curve for finding mislabelled examples by self influence: ([0-9.]+)", text)
    assert auc, "the ROC AUC line is missing"
    assert float(auc.group(1)) > 0.9

    share = re.search(r"([0-9.]+) percent of the labels in `mislabelled_dataset` are mislabelled\.", text)
    assert share, "the mislabelled share line is missing"
    assert abs(float(share.group(1)) - 10.0) < 2.5

    assert "TracInWarning: final_fc_layer 'relu4'" in text  # the original's layer choice is flagged

    # The markdown before it says the relu4 area "changes little" next to fc3's: the printed numbers must agree.
    relu4 = re.search(
        r"AUC with final_fc_layer=relu4 \(original\): ([0-9.]+), with fc3 \(this notebook\): ([0-9.]+), "
        r"difference ([-+0-9.e]+)",
        text,
    )
    assert relu4, "the relu4 AUC line is missing"
    a_relu4, a_fc3, diff = (float(v) for v in relu4.groups())
    assert a_fc3 == float(auc.group(1)) and abs(a_relu4 - a_fc3 - diff) < 1e-4
    assert abs(diff) < 0.01, "the notebook says the relu4 area changes little: update its text"
    prose = "\n".join(c.source for c in nb.cells if c.cell_type == "markdown")
    assert "the self-influence ranking, and with it the area, changes little" in prose
    assert "explorer's proponents == TracInCPFast's above: True" in text
    assert "explorer's self influence == the scores above: True" in text

    flags = work / "checkpoints" / "digits_mislabelled_dataset" / "flagged.json"
    exported = json.loads(flags.read_text())
    idx = [r["index"] for r in exported]
    assert len(exported) == 5 and idx == sorted(idx) and all(r["flagged"] for r in exported)
    assert sorted((work / "checkpoints" / "digits_correct_dataset").glob("checkpoint-*.pt"))
