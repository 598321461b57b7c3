"""The set-up the README gives: its main command installs both front ends it names (JupyterLab 4 and Notebook 7)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

tomllib = pytest.importorskip("tomllib")

REPO = Path(__file__).resolve().parents[1]


def _names(requirements: list[str]) -> dict[str, str]:
    """{distribution name: its version specifier} of PEP 508 requirement strings."""
    out = {}
    for r in requirements:
        m = re.match(r"\s*([A-Za-z0-9._-]+)\s*(?:\[[^\]]*\])?\s*([^;]*)", r)
        assert m, r
        out[m.group(1).lower().replace("_", "-")] = m.group(2).strip()
    return out


def test_the_notebook_extra_installs_jupyterlab_and_notebook_7():
    extras = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["project"]["optional-dependencies"]
    nb = _names(extras["notebook"])
    assert "jupyterlab" in nb and nb["jupyterlab"].startswith(">=4"), nb
    assert nb.get("notebook") == ">=7.2", nb  # Notebook 7 (/tree); without it `jupyter notebook` is missing
    assert "ipykernel" in nb
    test = _names(extras["test"])
    assert {"jupyterlab", "notebook"} <= set(test)  # the browser tests open both


def test_the_readme_main_command_sets_up_and_opens_both_front_ends():
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    setup = (REPO / ".ci/setup").read_text(encoding="utf-8")
    assert re.search(r'pip install -q -e "\.\[notebook,text\]"', setup)  # what `bash .ci/setup` installs
    assert "bash .ci/setup && .venv/bin/jupyter lab --ip=127.0.0.1 --allow-root notebooks/tutorial.ipynb" in readme
    assert ".venv/bin/jupyter notebook --ip=127.0.0.1 --allow-root notebooks/tutorial.ipynb" in readme
