// Details of one training example: larger image, label (and relabel), suggested label, prediction, self-influence
// rank, flag toggle, walk on; the evidence by checkpoint (evidence.js) and, on the test tab, the per-checkpoint
// breakdown of its influence on the galleries' query. Where the widget is narrow the panel is a drawer beside the
// content at the height of what was clicked (CSS: .tracin-details in narrow.css), never far below it.

import { imageElement } from "./codecs.js";
import { h, setChildren } from "./dom.js";
import { evidenceSection } from "./evidence.js";
import { isFlagged, toggleFlag } from "./flags.js";
import { fmtInt, fmtProb, fmtScore } from "./format.js";
import { answers, explainedWords } from "./gallery.js";
import { relabelControls, suggestedLine } from "./relabel.js";
import { labelCell, nameSpan } from "./tablerows.js";

/** "top 0.06%": the share of the training set ranked at or above `rank`, never rounded to 0. */
export function fmtTop(rank, n) {
  const top = (100 * rank) / n;
  if (!(top > 0)) return "";
  if (top >= 10) return `top ${Math.round(top)}%`;
  if (top >= 1) return `top ${Number(top.toFixed(1))}%`;
  const digits = 1 - Math.floor(Math.log10(top)); // two significant digits: 0.056%, 0.25%, 0.00025%
  return `top ${top.toFixed(digits).replace(/0+$/, "")}%`;
}

/** The per-checkpoint breakdown of one influence score: one labelled bar per checkpoint (exported for tests). */
export function breakdownBars(terms, fmt) {
  const max = Math.max(...terms.map((t) => Math.abs(t.contribution)), 0);
  return terms.map((t) => {
    const v = t.contribution;
    const sign = v > 0 ? "pos" : v < 0 ? "neg" : "zero";
    const width = max > 0 ? (50 * Math.abs(v)) / max : 0;
    const value = `${v > 0 ? "+" : v < 0 ? "−" : ""}${fmt(Math.abs(v))}`;
    const lr = t.lr === null || t.lr === undefined ? "" : ` (learning rate ${fmt(t.lr)})`;
    const words = `${t.checkpoint}: ${v > 0 ? "raised the score by" : v < 0 ? "lowered the score by" : "changed nothing"} ${fmt(Math.abs(v))}${lr}`;
    return h(
      "div",
      {
        className: `tracin-cbar is-${sign}`,
        testid: "tracin-checkpoint-bar",
        dataset: { checkpoint: t.checkpoint, contribution: String(v) },
        title: words,
        attrs: { role: "listitem", "aria-label": words },
      },
      h("span", { className: "tracin-cbar-name", text: t.checkpoint }),
      h(
        "span",
        { className: "tracin-cbar-track" },
        h("span", {
          className: "tracin-cbar-fill",
          style: `width:${width.toFixed(2)}%;${v < 0 ? `right:50%` : "left:50%"}`,
        }),
      ),
      h("span", { className: "tracin-cbar-value tracin-mono", text: value }),
    );
  });
}

export function createDetails(ctx) {
  const { model, rpc } = ctx;
  const body = h("div", { className: "tracin-details-body" });
  const close = h("button", {
    type: "button",
    className: "tracin-btn tracin-btn-icon",
    testid: "tracin-details-close",
    attrs: { "aria-label": "Close details" },
    text: "×",
    onClick: () => hide(),
  });
  const evidence = h("div", { className: "tracin-evidence-holder" });
  const breakdown = h("section", {
    className: "tracin-breakdown",
    testid: "tracin-breakdown",
    attrs: { "aria-label": "Influence by checkpoint" },
  });

  const el = h(
    "aside",
    {
      className: "tracin-details",
      testid: "tracin-details",
      hidden: true,
      attrs: { "aria-label": "Training example details" },
    },
    h(
      "div",
      { className: "tracin-toolbar" },
      h("span", { className: "tracin-section-title", text: "Training example" }),
      h("span", { className: "tracin-spacer" }),
      close,
    ),
    body,
    evidence,
    breakdown,
  );
  let index = null;
  let item = null; // the detail reply's row on screen
  let anchorTop = 0; // where the clicked element was, relative to the panel's container
  let pair = null; // the (query, label, index) whose breakdown is shown or asked for
  /** The breakdown the panel should show: the galleries' query and explained label, and this example. */
  function wantedPair() {
    const g = model.get("gallery") || {};
    const q = model.get("query") || {};
    if (
      index === null ||
      ctx.state.tab !== "test" ||
      !answers(g, q) ||
      g.error ||
      g.explained_label === null ||
      g.explained_label === undefined
    )
      return null;
    return { query: { source: q.source, index: q.index }, label: g.explained_label, index, gallery: g };
  }

  function requestBreakdown() {
    const want = wantedPair();
    const same =
      want &&
      pair &&
      pair.index === want.index &&
      pair.label === want.label &&
      pair.query.source === want.query.source &&
      pair.query.index === want.query.index;
    if (same) return;
    pair = want;
    if (!want) {
      setChildren(breakdown);
      return;
    }
    setChildren(breakdown, breakdownTitle(want), h("div", { className: "tracin-muted", text: "by checkpoint …" }));
    rpc.request("contributions", { query: want.query, label: want.label, index: want.index });
  }

  function breakdownTitle(p) {
    const names = model.get("class_names");
    const what = p.query.source === "test" ? `test #${p.query.index}` : `training #${p.query.index}`;
    const label = explainedWords(p.gallery, names) ?? `label ${p.label}`;
    return h("div", {
      className: "tracin-breakdown-title",
      text: `Influence on ${what} (score of ${label}), by checkpoint`,
    });
  }

  rpc.on("contributions", (msg) => {
    if (!pair || msg.index !== pair.index || msg.label !== pair.label) return;
    if (msg.error) {
      setChildren(
        breakdown,
        breakdownTitle(pair),
        h("div", { className: "tracin-muted", testid: "tracin-breakdown-error", text: msg.error }),
      );
      return;
    }
    const row = [...(pair.gallery.proponents || []), ...(pair.gallery.opponents || [])].find(
      (r) => r.index === msg.index,
    );
    const shown = row?.score;
    const off =
      shown !== null && shown !== undefined && Math.abs(shown - msg.total) > 1e-4 * Math.max(Math.abs(shown), 1e-12);
    setChildren(
      breakdown,
      breakdownTitle(pair),
      h("div", { className: "tracin-cbars", attrs: { role: "list" } }, breakdownBars(msg.checkpoints, fmtScore)),
      h("div", {
        className: "tracin-muted tracin-breakdown-sum",
        testid: "tracin-breakdown-sum",
        text: `sum ${fmtScore(msg.total)}${row && !off ? " = the score in the gallery" : ""}${off ? ` (the gallery shows ${fmtScore(shown)}, the engine's approximation)` : ""}`,
      }),
    );
  });

  /**
   * Where the panel is a drawer (narrow widgets: narrow.css), it opens at the clicked element's height: this sets
   * --tracin-drawer-top on the panel and --tracin-drawer-bottom on its container (which grows to hold it). Wide
   * widgets keep the panel beside the content and ignore both.
   */
  function place() {
    const holder = el.parentElement;
    if (el.hidden || !holder) return;
    // the drawer covers the clicked element's height, and stays within the content beside it when that is taller
    const contentHeight = holder.firstElementChild?.offsetHeight || 0;
    const top = Math.max(0, Math.min(anchorTop, contentHeight - el.offsetHeight));
    el.style.setProperty("--tracin-drawer-top", `${Math.round(top)}px`);
    holder.style.setProperty("--tracin-drawer-bottom", `${Math.round(top + el.offsetHeight)}px`);
    if (getComputedStyle(el).position === "absolute") el.scrollIntoView?.({ block: "nearest" });
  }

  /** Show training example i; anchor: the element clicked (tile, row), to open the drawer beside it. */
  function show(i, anchor = null) {
    index = i;
    item = null;
    pair = null;
    el.hidden = false;
    el.dataset.index = String(i);
    const holder = el.parentElement;
    if (anchor?.getBoundingClientRect && holder) {
      const a = anchor.getBoundingClientRect(),
        b = holder.getBoundingClientRect();
      anchorTop = a.top - b.top;
      // the drawer docks on the side away from the click, so that what was clicked stays in sight
      const centre = (a.left + a.right) / 2 - b.left;
      el.classList.toggle("is-left", b.width > 0 && centre > 0.6 * b.width);
    }
    setChildren(body, h("div", { className: "tracin-muted", text: `#${i} …` }));
    setChildren(evidence);
    setChildren(breakdown);
    rpc.request("detail", { index: i });
    requestBreakdown();
    place();
  }

  function hide() {
    index = null;
    item = null;
    pair = null;
    el.hidden = true;
    delete el.dataset.index;
    el.parentElement?.style.removeProperty("--tracin-drawer-bottom");
  }

  function renderItem() {
    const it = item;
    const names = model.get("class_names");
    const n = ctx.info().n_train;
    const flagged = isFlagged(model, it.index);
    const wrong = it.pred != null && it.pred !== it.label;
    const toggle = h(
      "button",
      {
        type: "button",
        className: `tracin-btn tracin-flag-toggle${flagged ? " is-flagged" : ""}`,
        testid: "tracin-flag-toggle",
        dataset: { index: it.index, flagItem: "" },
        attrs: { "aria-pressed": String(flagged) },
        onClick: () => toggleFlag(model, it.index),
      },
      h("span", { className: "tracin-flag-on", text: "⚑ Flagged" }),
      h("span", { className: "tracin-flag-off", text: "⚐ Flag (f)" }),
    );
    const walk = h("button", {
      type: "button",
      className: "tracin-btn tracin-btn-primary",
      testid: "tracin-walk",
      text: "Show its proponents →",
      onClick: () => ctx.walk(it.index),
    });
    const label = labelCell(model, it, "dd");
    label.querySelector(".tracin-given").dataset.testid = "tracin-details-label";
    setChildren(
      body,
      imageElement(it.image, "tracin-img tracin-img-detail", `training example ${it.index}`),
      h(
        "dl",
        { className: "tracin-dl" },
        h("dt", { text: "index" }),
        h("dd", { className: "tracin-mono", text: `#${it.index}` }),
        h("dt", { text: "label" }),
        label,
        h("dt", { text: "suggested" }),
        h("dd", {}, suggestedLine(names, it)),
        h("dt", { text: "predicted" }),
        h(
          "dd",
          { className: wrong ? "tracin-wrong" : "" },
          it.pred == null ? "…" : [nameSpan(names, it.pred), ` ${fmtProb(it.prob)}`],
        ),
        h("dt", { text: "self-influence" }),
        h(
          "dd",
          { testid: "tracin-details-rank" },
          it.rank == null
            ? "computing…"
            : `${fmtScore(it.score)} · rank ${fmtInt(it.rank)} of ${fmtInt(n)}${n ? ` (${fmtTop(it.rank, n)})` : ""}`,
        ),
      ),
      it.badge
        ? h("p", { className: "tracin-muted tracin-why", testid: "tracin-details-badge", text: it.badge })
        : null,
      relabelControls(ctx, it),
      h("div", { className: "tracin-actions" }, toggle, walk),
    );
    setChildren(evidence, evidenceSection(it, names));
    place();
  }

  rpc.on("detail", (msg) => {
    const it = msg.item;
    if (!it || it.index !== index) return;
    item = it;
    renderItem();
    ctx.setCurrent(it.index);
  });

  /** The tab changed: the breakdown belongs to the test tab only. */
  function retab() {
    if (index === null) return;
    requestBreakdown();
    place();
  }

  ctx.listen("change:relabels", () => {
    if (item) renderItem();
  });
  ctx.listen("change:class_names", () => {
    if (item) renderItem();
  });
  ctx.listen("change:gallery", () => {
    if (index !== null) requestBreakdown();
  });

  return {
    el,
    show,
    hide,
    retab,
    place,
    get index() {
      return index;
    },
    get item() {
      return item;
    },
  };
}
