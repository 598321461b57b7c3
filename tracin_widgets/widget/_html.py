"""``InfluenceExplorer.save_html``: one self-contained, static HTML file of a review (no kernel, no network).

ipywidgets' offline embedding (``ipywidgets.embed``) loads its widget manager from a CDN and the explorer needs a
kernel for its rows and galleries, so the file is a static snapshot instead: the widget's own CSS inlined, every image
a ``data:`` PNG, no scripts and no external URLs. It shows what the reviewer looked at: from the test view the
current query with its galleries, then the top of the self-influence ranking; from the ranking view the ranking (with
the suggested labels and where ``estimated_mislabelled`` falls) and no galleries; then the flags and relabels. Scores
are written as the widget writes them. :func:`snapshot` gathers them from an explorer; :func:`render` turns plain
data into the text.
"""

from __future__ import annotations

import base64
import datetime
import html
import io
import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .._io import atomic_write
from . import _codec
from ._protocols import Row

if TYPE_CHECKING:
    from ._widget import InfluenceExplorer

MAX_ROWS = 500  # most ranking rows and flagged rows (with thumbnails) written to the file

_STATIC_CSS = Path(__file__).parent / "static" / "widget.css"

# Layout of the snapshot's own parts; colours, tiles, images and tables come from the widget's CSS.
_SNAPSHOT_CSS = """
body { margin: 0; padding: 16px; background: #ffffff; }
@media (prefers-color-scheme: dark) { body { background: #111111; } }
.tracin-snapshot { max-width: 1200px; margin: 0 auto; }
.tracin-snapshot section { margin-top: 14px; }
.tracin-snapshot h2 { font-size: 1.1em; margin: 0 0 6px; }
.tracin-snapshot .tracin-gallery-body { display: flex; gap: 14px; align-items: flex-start; }
.tracin-snapshot .tracin-columns { flex: 1 1 auto; }
.tracin-snapshot .tracin-tile { cursor: default; }
.tracin-snapshot .tracin-table-row { cursor: default; }
.tracin-snapshot details code { white-space: pre-wrap; word-break: break-all; }
.tracin-snapshot footer { margin-top: 16px; }
"""


def snapshot(explorer: InfluenceExplorer, top: int) -> tuple[str, list[str]]:
    """The HTML text of ``explorer``'s review as it stands (its query and galleries, the ``top`` rows of the
    self-influence ranking, the flags) and the parts not computed yet, in words (the file names them too)."""
    flagged, q, g = list(explorer.flagged), dict(explorer.query), dict(explorer.gallery)
    relabels, names = dict(explorer.relabels), list(explorer.class_names)
    ranking_view = explorer.view == "ranking"
    missing: list[str] = []
    gallery, why = None, "No example was selected when this file was saved."
    if q and not ranking_view:
        what = f"{'test' if q.get('source') == 'test' else 'training'} #{q.get('index')}"
        if g.get("query") == q and g.get("k") == explorer.k and not g.get("error"):
            gallery = g
        else:
            error = f" ({g['error']})" if g.get("query") == q and g.get("error") else ""
            why = f"The galleries of {what} were not computed when this file was saved{error}."
            missing.append(f"the galleries of {what}")
    top_rows: list[Row] | None = []
    if top:
        reply = explorer._table.rows({"sort": "rank", "offset": 0, "limit": top}, flagged, relabels, names)
        top_rows = None if reply["pending"] else reply["rows"]
    ex = explorer._examples
    with ex.lock:
        scores, rank, preds = ex.self_infl, ex.rank, ex.train_preds
    if scores is None:
        missing.append("self-influence (the ranking)")
    flagged_rows = [
        ex.reviewed(
            _codec.item_row(
                i,
                ex.train_label(i),
                score=None if scores is None else scores[i],
                rank=None if rank is None else rank[i],
                pred=None if preds is None else preds[i],
                image=ex.image("train", i),
            ),
            relabels,
            names,
        )
        for i in sorted(set(flagged) | set(relabels))[:MAX_ROWS]
    ]
    text = render(
        info=dict(explorer.info),
        class_names=list(explorer.class_names),
        gallery=gallery,
        gallery_missing=why,
        top_rows=top_rows,
        flagged=flagged,
        flagged_rows=flagged_rows,
        n_relabelled=len(relabels),
        ranking_first=ranking_view,
        estimated=explorer.estimated_mislabelled,
        flag_metrics=dict(explorer.stats.get("flags") or {}),
        auc=(explorer.stats.get("roc") or {}).get("auc"),
        saved_at=datetime.datetime.now().strftime("%Y-%m-%d %H:%M"),
    )
    return text, missing


def png_data_uri(image: dict | None) -> str | None:
    """An image payload (``{"data": bytes, "shape": [h, w, c]}``, uint8 HWC) as a ``data:image/png;base64,`` URI."""
    if not image or image.get("data") is None:
        return None
    from PIL import Image  # matplotlib's dependency: always installed with the package

    a = _codec.decode_image(image)
    mode = {1: "L", 3: "RGB", 4: "RGBA"}[a.shape[2]]
    img = Image.fromarray(np.ascontiguousarray(a[:, :, 0] if a.shape[2] == 1 else a), mode=mode)
    buf = io.BytesIO()
    img.save(buf, format="PNG", optimize=True)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _e(x: Any) -> str:
    return html.escape(str(x), quote=True)


def _name(names: Sequence[str], label: int | None) -> str:
    if label is None:
        return "?"
    return str(names[label]) if 0 <= label < len(names) else str(label)


def _score(x: float | None) -> str:
    """A score as the widget writes it (``fmtScore`` of js/src/format.js): ``toExponential(2)`` for magnitudes from
    1e5 or below 1e-3, else 3 significant digits without an exponent (``Number(x.toPrecision(3)).toString()``)."""
    if x is None or not np.isfinite(x):
        return "–"
    a = abs(x)
    if a != 0 and (a >= 1e5 or a < 1e-3):
        mantissa, exp = f"{x:.2e}".split("e")
        return f"{mantissa}e{'-' if int(exp) < 0 else '+'}{abs(int(exp))}"
    return str(np.format_float_positional(float(f"{x:.3g}"), trim="-"))


def _opt_name(names: Sequence[str], label: int | None) -> str:
    return "" if label is None else _name(names, label)


def _img(image: dict | None, cls: str, alt: str) -> str:
    uri = png_data_uri(image)
    if image is None or uri is None:
        return f'<span class="tracin-img {cls} tracin-img-missing" role="img" aria-label="{_e(alt)}"></span>'
    h, w = image["shape"][:2]
    return f'<img class="tracin-img {cls}" src="{uri}" alt="{_e(alt)}" style="--tracin-ar: {_aspect(h, w)}">'


def _aspect(h: int, w: int) -> str:
    return f"{w / h:.6g}" if h > 0 and w > 0 else "1"


def _tile(row: dict, kind: str, names: Sequence[str], flagged: set[int]) -> str:
    lab = _name(names, row.get("label"))
    on = row["index"] in flagged
    badge = row.get("badge")
    title = f"training #{row['index']} · label {lab} · influence {_score(row.get('score'))}"
    if row.get("rank") is not None:
        title += f" · self-influence rank {row['rank']:,}"
    if badge:
        title += f" · ⚠ {badge}"
    cls = f"tracin-tile tracin-tile-{kind}{' is-flagged' if on else ''}{' has-badge' if badge else ''}"
    testid = "tracin-proponent" if kind == "proponents" else "tracin-opponent"
    return (
        f'<div class="{cls}" data-testid="{testid}" data-index="{row["index"]}" title="{_e(title)}">'
        + _img(row.get("image"), "tracin-img-tile", f"training example {row['index']}")
        + (f'<span class="tracin-badge" title="{_e(badge)}">!</span>' if badge else "")
        + '<span class="tracin-flag-mark" aria-hidden="true">⚑</span>'
        + f'<span class="tracin-tile-meta"><span class="tracin-tile-label">{_e(lab)}</span>'
        + f'<span class="tracin-tile-index">#{row["index"]}</span></span>'
        + f'<span class="tracin-tile-score">{_e(_score(row.get("score")))}</span></div>'
    )


def _gallery(gallery: dict | None, missing: str | None, names: Sequence[str], flagged: set[int]) -> str:
    if gallery is None:
        return (
            '<section class="tracin-gallery" data-testid="tracin-snapshot-gallery"><h2>Most influential training '
            f'examples</h2><p class="tracin-empty">{_e(missing or "No example selected.")}</p></section>'
        )
    q, item = gallery["query"], gallery.get("item") or {}
    what = f"Test #{q['index']}" if q["source"] == "test" else f"Training #{q['index']}"
    label = _name(names, item.get("label"))
    pred = item.get("pred")
    card = [
        _img(item.get("image"), "tracin-img-query", f"{what} image"),
        '<div class="tracin-query-text">',
        f'<div class="tracin-query-title" data-testid="tracin-snapshot-query">{_e(what)}</div>',
        f'<div><span class="tracin-muted">label </span><strong data-testid="tracin-snapshot-label">{_e(label)}'
        "</strong></div>",
    ]
    if pred is not None:
        prob = item.get("prob")
        p = f" {round(100 * prob)}%" if prob is not None else ""
        wrong = " tracin-wrong" if pred != item.get("label") else ""
        card.append(
            f'<div class="{wrong.strip()}"><span class="tracin-muted">predicted </span>'
            f"<strong>{_e(_name(names, pred))}</strong>{_e(p)}</div>"
        )
    if item.get("rank") is not None:
        card.append(f'<div class="tracin-muted">self-influence rank {item["rank"]:,}</div>')
    card.append("</div>")
    k = len(gallery.get("proponents") or [])
    cols = []
    for kind, title, note in (
        ("proponents", "Proponents", f"raised the score of label {label}"),
        ("opponents", "Opponents", f"lowered the score of label {label}"),
    ):
        dot = "pro" if kind == "proponents" else "opp"
        tiles = "".join(_tile(r, kind, names, flagged) for r in gallery.get(kind) or [])
        cols.append(
            f'<div class="tracin-column"><div class="tracin-column-title"><span class="tracin-dot tracin-dot-{dot}">'
            f'</span>{title}<span class="tracin-muted"> · {_e(note)}</span></div>'
            f'<div class="tracin-grid" data-testid="tracin-{kind}">{tiles}</div></div>'
        )
    return (
        '<section class="tracin-gallery" data-testid="tracin-snapshot-gallery">'
        f"<h2>Most influential training examples of {_e(what.lower())} (k = {k})</h2>"
        f'<div class="tracin-gallery-body"><div class="tracin-query">{"".join(card)}</div>'
        f'<div class="tracin-columns">{"".join(cols)}</div></div></section>'
    )


def _rows_table(
    rows: Sequence[Mapping[str, Any]],
    names: Sequence[str],
    flagged: set[int],
    testid: str,
    estimated: int | None = None,
) -> str:
    cols = ("rank", "image", "index", "label", "pred", "suggested", "new-label", "score", "flag")
    titles = ("Rank", "", "Index", "Label", "Predicted", "Suggested", "New label", "Self-influence", "Flagged")
    head = "".join(f'<th class="tracin-col-{c}">{t}</th>' for c, t in zip(cols, titles, strict=True))
    body = []
    for r in rows:
        if estimated is not None and r.get("rank") == estimated + 1:
            body.append(
                f'<tr class="tracin-estimate-row" data-testid="tracin-estimate-divider"><td colspan="{len(cols)}">'
                f"≈ {estimated:,} labels estimated wrong above this line</td></tr>"
            )
        i, on, pred = r["index"], r["index"] in flagged, r.get("pred")
        rank = "" if r.get("rank") is None else f"{r['rank']:,}"
        pred_text = "" if pred is None else _e(_name(names, pred))
        wrong = "tracin-wrong" if pred is not None and pred != r.get("label") else ""
        image = _img(r.get("image"), "tracin-img-row", f"training example {i}")
        body.append(
            f'<tr class="tracin-table-row{" is-flagged" if on else ""}" data-testid="{testid}-row" data-index="{i}">'
            f'<td class="tracin-col-rank tracin-mono">{rank}</td><td class="tracin-col-image">{image}</td>'
            f'<td class="tracin-col-index tracin-mono">#{i}</td>'
            f'<td class="tracin-col-label">{_e(_name(names, r.get("label")))}</td>'
            f'<td class="tracin-col-pred {wrong}">{pred_text}</td>'
            f'<td class="tracin-col-suggested" data-testid="tracin-suggested-label"'
            f' title="{_e(r.get("badge") or "")}">{_e(_opt_name(names, r.get("suggested")))}</td>'
            f'<td class="tracin-col-new-label">{_e(_opt_name(names, r.get("new_label")))}</td>'
            f'<td class="tracin-col-score tracin-mono">{_e(_score(r.get("score")))}</td>'
            f'<td class="tracin-col-flag">{"⚑ flagged" if on else ""}</td></tr>'
        )
    return (
        f'<table class="tracin-table" data-testid="{testid}"><thead><tr>{head}</tr></thead>'
        f"<tbody>{''.join(body)}</tbody></table>"
    )


def render(
    *,
    info: dict,
    class_names: Sequence[str],
    gallery: dict | None,
    gallery_missing: str | None,
    top_rows: Sequence[Mapping[str, Any]] | None,
    flagged: Sequence[int],
    flagged_rows: Sequence[Mapping[str, Any]],
    flag_metrics: dict,
    auc: float | None,
    saved_at: str,
    n_relabelled: int = 0,
    ranking_first: bool = False,
    estimated: int | None = None,
) -> str:
    """The snapshot's HTML text (see the module docstring): ``ranking_first`` (saved from the ranking view) puts the
    ranking first and leaves the galleries out; ``estimated`` (``estimated_mislabelled``) draws its divider."""
    css = _STATIC_CSS.read_text(encoding="utf-8") if _STATIC_CSS.exists() else ""
    names = list(class_names)
    fl = set(flagged)
    n_flagged = len(flagged)
    subtitle = (
        f"{info.get('engine', '')} · {info.get('n_train', 0):,} training · {info.get('n_test', 0):,} test · "
        f"saved {saved_at}"
    )
    if top_rows is None:
        ranking = '<p class="tracin-empty">Self-influence was not computed yet when this file was saved.</p>'
    else:
        ranking = _rows_table(top_rows, names, fl, "tracin-snapshot-ranking", estimated)
    summary = f"<strong>{n_flagged:,} flagged</strong>, {n_relabelled:,} relabelled, of {info.get('n_train', 0):,}"
    m = flag_metrics
    if m.get("n_mislabelled") is not None:
        if n_flagged:
            precision, recall = round(100 * (m.get("precision") or 0)), round(100 * (m.get("recall") or 0))
            summary += (
                f" · precision {precision}% · recall {recall}% ({m.get('true_positives')}/{m.get('n_mislabelled')})"
            )
        else:
            summary += f" · {m['n_mislabelled']:,} mislabelled in the ground truth"
    if auc is not None:
        summary += f" · self-influence ROC AUC {auc:.3f}"
    if estimated is not None:
        summary += f" · ≈ {estimated:,} labels estimated wrong (the checkpoints' average prediction differs)"
    shown, reviewed = len(flagged_rows), len(fl | {int(r["index"]) for r in flagged_rows})
    n_rows = max(reviewed, n_flagged)
    more = f"<p class='tracin-muted'>The first {shown:,} of {n_rows:,} are shown.</p>" if shown < n_rows else ""
    flags = (
        '<section data-testid="tracin-snapshot-flags"><h2>Flagged and relabelled training examples</h2>'
        f'<p class="tracin-flag-summary" data-testid="tracin-flag-summary">{summary}</p>'
        + (_rows_table(flagged_rows, names, fl, "tracin-snapshot-flagged") + more if flagged_rows else "")
        + f"<details><summary>All {n_flagged:,} flagged indices (JSON)</summary>"
        f"<code>{_e(json.dumps(list(flagged)))}</code></details></section>"
    )
    ranking_section = (
        '<section class="tracin-table-section" data-testid="tracin-snapshot-ranking-section">'
        f"<h2>Self-influence ranking: top {0 if top_rows is None else len(top_rows):,}</h2>"
        '<p class="tracin-muted">high = unusual or likely mislabelled</p>' + ranking + "</section>"
    )
    gallery_section = "" if ranking_first else _gallery(gallery, gallery_missing, names, fl)
    views = ranking_section + gallery_section if ranking_first else gallery_section + ranking_section
    return (
        "<!doctype html>\n"
        '<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width">'
        '<meta name="color-scheme" content="light dark">'
        f"<title>TracIn review · {n_flagged:,} flagged</title>"
        f"<style>{css}\n{_SNAPSHOT_CSS}</style></head><body>"
        '<div class="tracin-root tracin-snapshot" data-testid="tracin-root">'
        '<header class="tracin-header"><div class="tracin-brand"><span class="tracin-title">TracIn explorer</span>'
        f'<span class="tracin-muted tracin-subtitle">{_e(subtitle)}</span></div><span class="tracin-spacer"></span>'
        f'<span class="tracin-flag-count{" is-active" if n_flagged else ""}" data-testid="tracin-flag-count">'
        f"⚑ {n_flagged:,} flagged</span></header>"
        + _notes(info.get("notes") or [])
        + views
        + flags
        + '<footer class="tracin-muted">A static snapshot saved by tracin_widgets <code>InfluenceExplorer.save_html'
        "</code>: it needs no kernel and no network; open the notebook to explore further.</footer>"
        "</div></body></html>\n"
    )


def _notes(notes: list) -> str:
    """The engine's warnings, as the widget lists them above the views."""
    if not notes:
        return ""
    items = "".join(f'<li data-testid="tracin-note">{_e(str(n))}</li>' for n in notes)
    return (
        '<div class="tracin-notes" data-testid="tracin-notes" role="status"><strong>Engine notes</strong>'
        f'<ul class="tracin-notes-list">{items}</ul></div>'
    )


def check_top(top: Any) -> None:
    if isinstance(top, bool) or not isinstance(top, int) or not 0 <= top <= MAX_ROWS:
        raise ValueError(
            f"top must be an int in [0, {MAX_ROWS}] (rows of the self-influence ranking to include), got {top!r}."
        )


def check_path(path: Any) -> Path:
    """``path`` as a Path ending in .html/.htm (checked before any work)."""
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"path must be a str or os.PathLike naming an .html file, got {type(path).__name__}.")
    p = Path(path)
    if p.suffix.lower() not in (".html", ".htm"):
        raise ValueError(f"path must end in .html (or .htm), got {str(p)!r}: pass e.g. 'review.html'.")
    return p


def write(path: os.PathLike | str, text: str) -> Path:
    """Write ``text`` to ``path`` atomically (a crash never leaves half a file); the folder is created."""
    p = check_path(path)
    data = text.encode("utf-8")
    try:
        p.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(p, lambda f: f.write(data))
    except OSError as e:  # a full disk, a folder that cannot be written: say which file
        raise OSError(e.errno, f"save_html cannot write {str(p)!r}: {e.strerror or e}") from e
    return p
