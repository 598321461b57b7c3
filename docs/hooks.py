"""MkDocs hooks of the documentation site (``mkdocs.yml`` names this file; it is not a page).

* The notebooks are pages where they live: ``notebooks/tutorial.ipynb`` is added as ``tutorial.ipynb`` (rendered by
  mkdocs-jupyter, not executed) and ``notebooks/explorer_marimo.py`` is shown on the explorer page through a snippet.
* Every screenshot a page shows must exist in ``docs/assets/screenshots/`` (the browser tests write them:
  ``tests/e2e/test_docs_screenshots.py``), and every screenshot there must be shown somewhere: a missing or an
  orphaned one fails the build with the command that regenerates them.
"""

from __future__ import annotations

import re
from pathlib import Path

from mkdocs.exceptions import PluginError
from mkdocs.plugins import event_priority
from mkdocs.structure.files import File

REPO = Path(__file__).resolve().parents[1]
SCREENSHOTS = Path(__file__).resolve().parent / "assets" / "screenshots"
NOTEBOOKS = {"tutorial.ipynb": REPO / "notebooks" / "tutorial.ipynb"}
REGENERATE = "bash .ci/setup --test && .venv/bin/python -m pytest tests/e2e/test_docs_screenshots.py"
_SHOT = re.compile(r"assets/screenshots/([\w.-]+\.png)")
_shown: set[str] = set()


@event_priority(100)  # before mkdocs-jupyter's on_files, which wraps the notebook files it finds
def on_files(files, config):
    for name, path in NOTEBOOKS.items():
        if not path.is_file():
            raise PluginError(f"the notebook page {name} comes from {path}, which does not exist.")
        files.append(
            File(name, src_dir=str(path.parent), dest_dir=config["site_dir"], use_directory_urls=config["use_directory_urls"])
        )
    return files


def on_pre_build(config):
    _shown.clear()


def on_page_markdown(markdown, page, config, files):
    for name in _SHOT.findall(markdown):
        if not (SCREENSHOTS / name).is_file():
            raise PluginError(
                f"{page.file.src_uri} shows assets/screenshots/{name}, which does not exist: the browser tests make "
                f"the screenshots ({REGENERATE})."
            )
        _shown.add(name)
    return markdown


def on_post_build(config):
    orphans = sorted(p.name for p in SCREENSHOTS.glob("*.png") if p.name not in _shown)
    if orphans:
        raise PluginError(
            f"screenshots that no page shows: {', '.join(orphans)}; show them or stop the browser tests making them."
        )
