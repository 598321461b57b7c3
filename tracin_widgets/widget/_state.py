"""The explorer's synced state: every trait the page and Python share, documented lonboard-style (type, default,
who writes it), and the JS bundle. ``InfluenceExplorer`` (``_widget.py``) adds the behaviour; ``_protocols.py`` has
the shapes of what the dict traits hold."""

from __future__ import annotations

from pathlib import Path
from typing import cast

import anywidget
import traitlets as t

from ._codec import as_base64
from ._review import relabels_from_json, relabels_to_json
from ._traits import ClassNames, IndexList, PositiveInt, View

_STATIC = Path(__file__).parent / "static"
_MISSING_BUNDLE = (
    "export default { render({ el }) { const d = document.createElement('div');"
    " d.textContent = 'tracin_widgets: the JS bundle is missing. Run: cd js && npm ci && npm run build';"
    " d.style.cssText = 'padding:8px;border:1px solid #d32f2f;color:#d32f2f'; el.append(d); } };"
)


def images_json(value: dict, widget: object) -> dict:
    """A trait holding images, as sent: binary buffers, or base64 text once the page asked for it (a notebook host
    that drops binary buffers: the ``image_transport`` request)."""
    return as_base64(value) if getattr(widget, "image_transport", "binary") == "base64" else value


class ExplorerState(anywidget.AnyWidget):
    """The traits of :class:`~tracin_widgets.InfluenceExplorer`, the wire state its page renders."""

    _esm = _STATIC / "widget.js" if (_STATIC / "widget.js").exists() else _MISSING_BUNDLE
    _css = _STATIC / "widget.css" if (_STATIC / "widget.css").exists() else ""

    # --- shared state (both sides write) ----------------------------------------------------------------------------
    flagged = IndexList(t.Int()).tag(sync=True)
    """
    Flagged training indices: the user's output, shared by the galleries, the table and ``flags_path``.

    - Type: list of int (sorted, unique, each in ``[0, n_train)``); numpy / torch integers are accepted.
    - Default: ``[]``, or the indices read from ``flags_path``.
    - Written by: both sides (the flag buttons, ``undo()``, Python).
    """
    relabels = cast("t.Dict[int, int]", t.Dict().tag(sync=True, to_json=relabels_to_json, from_json=relabels_from_json))
    """
    New labels of training examples: the user's corrections, shared by the details panel, Python and the review file;
    ``cleaned_dataset()`` yields them. A relabel to the given label is dropped.

    - Type: dict ``{train_index: new_label}`` of ints (each index in ``[0, n_train)``, each label a class index); on
      the wire the keys are strings (``{"12": 3}``).
    - Default: ``{}``, or what the review file restores.
    - Written by: both sides (the relabel control, "accept the suggestion", ``undo()``, Python).
    """
    k = PositiveInt(10).tag(sync=True)
    """
    Number of proponents and of opponents shown in the galleries.

    - Type: int, at least 1.
    - Default: ``10``.
    - Written by: both sides.
    """
    selected_test = t.Int(-1).tag(sync=True)
    """
    Dataset index of the selected test example; selecting one makes it the galleries' ``query``.

    - Type: int (``-1``: none).
    - Default: the first of ``test_indices``, or ``-1`` without a test set.
    - Written by: both sides.
    """
    query = t.Dict().tag(sync=True)
    """
    What the galleries explain.

    - Type: ``{"source": "test" | "train", "index": int}``, or ``{}`` for nothing.
    - Default: the selected test example.
    - Written by: both sides (walking to a training example makes it the query).
    """
    explain = t.Enum(("label", "prediction"), "label").tag(sync=True)
    """
    Which label's score the galleries explain: proponents raised it, opponents lowered it.

    - Type: ``"label"`` (the query's own label, as in the tutorial: which training examples support the truth) |
      ``"prediction"`` (the model's prediction for it: which pushed the model toward its answer, right or wrong).
    - Default: ``"label"``. When the two agree the galleries are the same (computed once; the page says so).
    - Written by: both sides (the page's label choice).
    """
    test_page = t.Int(0).tag(sync=True)
    """
    Page of the test strip shown.

    - Type: int (clamped to the pages there are).
    - Default: ``0``.
    - Written by: both sides.
    """
    test_page_size = t.Int(24).tag(sync=True)
    """
    Test examples per page of the test strip.

    - Type: int (at least 1 is used).
    - Default: ``24``; the page sets it to the number of whole tiles that fit its width (and moves ``test_page`` so
      that the selected test example stays shown).
    - Written by: both sides.
    """
    misclassified_only = t.Bool(False).tag(sync=True)
    """
    Test strip filter: only test examples whose prediction differs from their label (once predicted).

    - Type: bool.
    - Default: ``False``.
    - Written by: both sides.
    """
    view = View("test").tag(sync=True)
    """
    The tab shown: ``"test"`` (test predictions and the galleries) or ``"ranking"`` (the self-influence ranking).
    Without a test set the ``"test"`` tab explains a training example chosen from the ranking.

    - Type: ``"test"`` | ``"ranking"``.
    - Default: the constructor's ``view=``: ``"test"`` with a test set, else ``"ranking"``.
    - Written by: both sides (the tabs write it).
    """
    error = t.Unicode("").tag(sync=True)
    """
    Last error (engine, data, flags file, refused update), shown as a banner.

    - Type: str (``""``: none).
    - Default: ``""``.
    - Written by: Python; the page clears it when the banner is dismissed.
    """

    # --- Python -> JS ---------------------------------------------------------------------------------------------
    class_names = ClassNames(t.Unicode()).tag(sync=True)
    """
    Name of each class, in class-index order; refused when the count differs from the model's outputs or does not
    cover every label.

    - Type: list of str.
    - Default: ``[]`` (classes are shown by index).
    - Written by: Python.
    """
    status = t.Unicode("idle").tag(sync=True)
    """
    State of the background computation.

    - Type: ``"idle"`` | ``"running"`` | ``"ready"`` | ``"cancelled"`` | ``"error"``.
    - Default: ``"idle"`` (``"running"`` as soon as the explorer is built).
    - Written by: Python.
    """
    progress = t.Float(0.0).tag(sync=True)
    """
    Fraction done of the current background phase.

    - Type: float in ``[0, 1]``.
    - Default: ``0.0``.
    - Written by: Python.
    """
    progress_info = t.Dict().tag(sync=True)
    """
    Progress of the background computation; ``run`` names it, so a Cancel never cancels a later one.

    - Type: ``{"phase", "done", "total", "fraction", "eta_s", "step", "steps", "run"}``.
    - Default: ``{}``.
    - Written by: Python.
    """
    info = t.Dict().tag(sync=True)
    """
    What the explorer works on.

    - Type: ``{"n_train", "n_test", "has_truth", "engine", "n_classes", "notes"}`` (``n_classes`` None until
      known; ``notes`` the engine's ``TracInWarning`` messages so far, e.g. scores that are not exact last-layer
      gradients, a cache that cannot be written, factors in host memory: shown above the views).
    - Written by: Python.
    """
    estimated_mislabelled = t.Int(None, allow_none=True, read_only=True).tag(sync=True)
    """
    How many training labels are estimated wrong: the rows whose checkpoints' average prediction differs from their
    label (those with a suggested label), computed without ground truth. Where to stop inspecting the ranking.

    - Type: int, or None until the suggestions are computed (or for labels that are not class indices).
    - Written by: Python (read-only).
    """
    image_transport: str = "binary"
    """
    How images reach the page: ``"binary"`` (binary buffers, the default) or ``"base64"`` (text). The page switches
    it to ``"base64"`` itself when the notebook host drops binary buffers (Colab-like managers: tiles would stay
    empty); set it before displaying the explorer in such a host. A plain attribute, not synced.
    """
    test_strip = t.Dict().tag(sync=True, to_json=images_json)
    """
    The current page of test examples.

    - Type: ``{"page", "n_pages", "total", "page_size", "filtered", "has_preds", "items"}``, items being rows
      (``_protocols.Row``).
    - Written by: Python.
    """
    gallery = t.Dict().tag(sync=True, to_json=images_json)
    """
    The last computed galleries (or why there are none).

    - Type: ``_protocols.Gallery``: ``{"query", "k", "request", "item", "proponents", "opponents", "error"}``.
    - Default: ``{}``.
    - Written by: Python.
    """
    stats = t.Dict().tag(sync=True)
    """
    Self-influence summary for the table's charts.

    - Type: ``{"ready", "has_preds", "flags", "estimated_mislabelled", "histogram", "score_min", "score_max", "roc",
      "found"}`` (the score keys once self-influence is known, ``roc`` and ``found`` with ``is_mislabelled``;
      ``estimated_mislabelled`` None until the suggestions are computed).
    - Written by: Python.
    """
