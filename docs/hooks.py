"""MkDocs hooks of the documentation site (``mkdocs.yml`` names this file; it is not a page).

* The notebooks are pages where they live: ``notebooks/tutorial.ipynb`` is added as ``tutorial.ipynb`` (rendered by
  mkdocs-jupyter, not executed) and ``notebooks/explorer_marimo.py`` is shown on the explorer page through a snippet.
* ``<!-- keys -->`` on a page becomes the table of the explorer's keys, read from the ``KEYS`` list of the widget's
  JS (the list its ``?`` help shows), so the page and the widget never disagree.
* ``<!-- explorer-arguments -->`` marks the explorer page's table of constructor arguments: the build fails when an
  argument of ``InfluenceExplorer.__init__`` (read from the source with griffe) is neither in that table nor in the
  class docstring.
* ``<!-- results-table: FILE NAME -->`` becomes the generated table ``NAME`` of ``FILE`` (the text between its
  ``<!-- table:NAME -->`` markers, which ``python -m benchmarks report`` writes), so a page quoting the measurements
  never goes stale.
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
JS_SRC = REPO / "js" / "src"
KEY_GROUPS = {"test": "Test predictions", "ranking": "Self-influence ranking", "all": "Both views"}
KEYS_MARK = "<!-- keys -->"
ARGS_MARK = "<!-- explorer-arguments -->"
_RESULTS_MARK = re.compile(r"<!-- results-table: (\S+) ([\w-]+) -->")
REGENERATE = "bash .ci/setup --test && .venv/bin/python -m pytest tests/e2e/test_docs_screenshots.py"
_SHOT = re.compile(r"assets/screenshots/([\w.-]+\.png)")
_shown: set[str] = set()


@event_priority(100)  # before mkdocs-jupyter's on_files, which wraps the notebook files it finds
def on_files(files, config):
    for name, path in NOTEBOOKS.items():
        if not path.is_file():
            raise PluginError(f"the notebook page {name} comes from {path}, which does not exist.")
        files.append(
            File(
                name,
                src_dir=str(path.parent),
                dest_dir=config["site_dir"],
                use_directory_urls=config["use_directory_urls"],
            )
        )
    return files


def on_pre_build(config):
    _shown.clear()


def keys_table() -> str:
    """The explorer's keys as a Markdown table, from ``const KEYS = {...}`` in the widget's JS source."""
    for path in sorted(JS_SRC.glob("*.js")):
        m = re.search(r"^(?:export )?const KEYS = \{\n(.*?)^\};", path.read_text(encoding="utf-8"), re.S | re.M)
        if m:
            break
    else:
        raise PluginError(f"no `const KEYS = {{...}};` in {JS_SRC}/*.js: the keys table cannot be made.")
    rows = []
    for group, body in re.findall(r"^  (\w+): \[\n(.*?)^  \],", m.group(1), re.S | re.M):
        for key, what in re.findall(r'\["([^"]+)", "([^"]+)"\]', body):
            keys = " ".join(f"++{k.lower()}++" if len(k) > 1 and k.isalpha() else f"`{k}`" for k in key.split())
            rows.append(f"| {KEY_GROUPS.get(group, group)} | {keys} | {what} |")
    if not rows:
        raise PluginError(f"{path.name}'s KEYS lists no keys: the keys table cannot be made.")
    return "| where | key | what it does |\n|---|---|---|\n" + "\n".join(rows)


def check_explorer_arguments(markdown: str, src_uri: str) -> None:
    """Every constructor argument of ``InfluenceExplorer`` is in the page's arguments table or its docstring."""
    import griffe

    explorer = griffe.load("tracin_widgets.widget", search_paths=[str(REPO)], resolve_aliases=True)["InfluenceExplorer"]
    init = explorer.members["__init__"]
    names = [
        p.name for p in init.parameters if p.name != "self" and p.kind.name not in ("var_keyword", "var_positional")
    ]
    table = markdown.split(ARGS_MARK, 1)[1].split("\n\n", 1)[0]
    doc = explorer.docstring.value if explorer.docstring else ""
    missing = [n for n in names if f"`{n}`" not in table and f"{n}:" not in doc]
    if missing:
        raise PluginError(
            f"{src_uri}: InfluenceExplorer's argument(s) {', '.join(missing)} are documented neither in the table "
            f"after {ARGS_MARK} nor in the class docstring."
        )


def results_table(match: re.Match) -> str:
    """The generated table ``NAME`` of a results file, between its ``<!-- table:NAME -->`` markers."""
    path, name = REPO / match.group(1), match.group(2)
    text = path.read_text(encoding="utf-8") if path.is_file() else ""
    m = re.search(rf"<!-- table:{name} -->\n(.*?)<!-- /table:{name} -->", text, re.S)
    if not m:
        raise PluginError(f"{match.group(1)} has no generated table {name!r} (<!-- table:{name} --> markers).")
    return m.group(1).strip()


def on_page_markdown(markdown, page, config, files):
    markdown = _RESULTS_MARK.sub(results_table, markdown)
    if KEYS_MARK in markdown:
        markdown = markdown.replace(KEYS_MARK, keys_table())
    if ARGS_MARK in markdown:
        check_explorer_arguments(markdown, page.file.src_uri)
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
