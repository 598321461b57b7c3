// Proponents and opponents of the current query (a test example, or a training example when walking).

import { imageElement } from "./codecs.js";
import { h, setChildren } from "./dom.js";
import { isFlagged } from "./flags.js";
import { className, fmtInt, fmtProb, fmtScore } from "./format.js";
import { rowNewLabel } from "./tablerows.js";

const K_CHOICES = [5, 10, 20, 50];
const EXPLAIN_CHOICES = [
  ["label", "its label"],
  ["prediction", "the prediction"],
];

/** Class c in words: "8 (cat)" with class names ("8" when its name is "8"). */
export function classWords(names, c) {
  const name = className(names, c);
  return name === String(c) ? name : `${c} (${name})`;
}

/** What the galleries explain, in words: "label 8 (cat)" or "the prediction 1"; null when not known yet. */
export function explainedWords(gallery, names) {
  const c = gallery?.explained_label;
  if (c === null || c === undefined) return null;
  return gallery.explain === "prediction" ? `the prediction ${classWords(names, c)}` : `label ${classWords(names, c)}`;
}

/** Whether the gallery payload answers query q. */
export function answers(gallery, q) {
  return Boolean(gallery?.query && q && gallery.query.source === q.source && gallery.query.index === q.index);
}

/**
 * The galleries' status line: what they explain, and how many tiles carry a "!" (a suggested label), in words that
 * cannot be read as a label: "test #0 · 3 of 10 tiles: ! a suggested label".
 */
export function statusLine(what, rows) {
  const nb = rows.filter((r) => r.badge).length;
  if (!nb) return what;
  return `${what} · ${fmtInt(nb)} of ${fmtInt(rows.length)} tiles: ! a suggested label`;
}

/** One gallery tile (exported for tests). */
export function tile(ctx, row, kind) {
  const names = ctx.model.get("class_names");
  const lab = className(names, row.label);
  const nl = rowNewLabel(ctx.model, row);
  const flagged = isFlagged(ctx.model, row.index);
  const title =
    `training #${row.index} · label ${lab}` +
    (nl !== null ? ` → relabelled ${className(names, nl)}` : "") +
    ` · influence ${fmtScore(row.score)}` +
    (row.rank != null ? ` · self-influence rank ${fmtInt(row.rank)}` : "") +
    (row.badge ? ` · ! ${row.badge}` : "");
  const has = row.suggested !== null && row.suggested !== undefined;
  return h(
    "button",
    {
      type: "button",
      className: `tracin-tile tracin-tile-${kind}${flagged ? " is-flagged" : ""}${row.badge ? " has-badge" : ""}`,
      testid: kind === "proponents" ? "tracin-proponent" : "tracin-opponent",
      dataset: { index: row.index, flagItem: "", label: row.label ?? "", ...(has ? { suggested: row.suggested } : {}) },
      title,
      attrs: { "aria-label": title },
      onClick: (e) => ctx.openDetails(row.index, e.currentTarget),
      onFocus: () => ctx.setCurrent(row.index),
    },
    imageElement(row.image, "tracin-img tracin-img-tile", `training example ${row.index}`),
    row.badge
      ? h("span", {
          className: "tracin-badge",
          testid: "tracin-badge",
          title: row.badge,
          text: "!",
        })
      : null,
    h("span", { className: "tracin-flag-mark", attrs: { "aria-hidden": "true" }, text: "⚑" }),
    h(
      "span",
      { className: "tracin-tile-meta" },
      h("span", {
        className: `tracin-tile-label tracin-name${nl !== null ? " is-relabelled" : ""}`,
        title: nl !== null ? `${lab} → ${className(names, nl)}` : lab,
        text: nl !== null ? `${lab}→${className(names, nl)}` : lab,
      }),
      h("span", { className: "tracin-tile-index", text: `#${row.index}` }),
    ),
    h("span", { className: "tracin-tile-score", text: fmtScore(row.score) }),
  );
}

export function createGallery(ctx) {
  const { model } = ctx;
  const card = h("div", { className: "tracin-query", testid: "tracin-query" });
  const back = h("button", {
    type: "button",
    className: "tracin-btn",
    testid: "tracin-back",
    text: "← back",
    title: "Back to the previous query",
    onClick: () => ctx.back(),
  });
  const kSel = h("select", {
    className: "tracin-select",
    testid: "tracin-k",
    attrs: { "aria-label": "Number of proponents and opponents" },
    onChange: () => {
      model.set("k", Number(kSel.value));
      model.save_changes();
    },
  });
  const explainSel = h("select", {
    className: "tracin-select",
    testid: "tracin-label-choice",
    attrs: { "aria-label": "Which label's score the galleries explain" },
    title: "Proponents raised the score of this label, opponents lowered it",
    onChange: () => {
      model.set("explain", explainSel.value);
      model.save_changes();
    },
  });
  const labelNote = h("span", { className: "tracin-muted tracin-label-note", testid: "tracin-label-note" });
  const proCaption = h("span", { className: "tracin-muted", testid: "tracin-proponents-caption" });
  const oppCaption = h("span", { className: "tracin-muted", testid: "tracin-opponents-caption" });
  const status = h("span", {
    className: "tracin-muted tracin-gallery-status",
    testid: "tracin-gallery-status",
    attrs: { "aria-live": "polite" },
  });
  const pro = h("div", { className: "tracin-grid", testid: "tracin-proponents" });
  const opp = h("div", { className: "tracin-grid", testid: "tracin-opponents" });
  const body = h(
    "div",
    { className: "tracin-columns" },
    h(
      "div",
      { className: "tracin-column" },
      h(
        "div",
        { className: "tracin-column-title" },
        h("span", { className: "tracin-dot tracin-dot-pro" }),
        "Proponents",
        proCaption,
      ),
      pro,
    ),
    h(
      "div",
      { className: "tracin-column" },
      h(
        "div",
        { className: "tracin-column-title" },
        h("span", { className: "tracin-dot tracin-dot-opp" }),
        "Opponents",
        oppCaption,
      ),
      opp,
    ),
  );
  const el = h(
    "section",
    { className: "tracin-gallery", attrs: { "aria-label": "Influential training examples" } },
    h(
      "div",
      { className: "tracin-toolbar" },
      h("span", { className: "tracin-section-title", text: "Most influential training examples" }),
      status,
      h("span", { className: "tracin-spacer" }),
      back,
      h("label", { className: "tracin-inline" }, "explain ", explainSel),
      labelNote,
      h("label", { className: "tracin-inline" }, "k ", kSel),
    ),
    h("div", { className: "tracin-gallery-body" }, card, body),
  );

  function renderK() {
    const k = model.get("k");
    const opts = K_CHOICES.includes(k) ? K_CHOICES : [...K_CHOICES, k].sort((a, b) => a - b);
    setChildren(
      kSel,
      opts.map((v) => h("option", { value: String(v), text: String(v), selected: v === k })),
    );
    kSel.value = String(k);
  }

  function renderExplain() {
    const v = model.get("explain") || "label";
    setChildren(
      explainSel,
      EXPLAIN_CHOICES.map(([value, text]) => h("option", { value, text, selected: value === v })),
    );
    explainSel.value = v;
  }

  function renderCaptions(g, q) {
    const names = model.get("class_names");
    const fresh = answers(g, q) && !g.error && g.explain === (model.get("explain") || "label");
    const what = fresh ? explainedWords(g, names) : null;
    const target = what ?? (model.get("explain") === "prediction" ? "the prediction" : "the label");
    proCaption.textContent = ` · raised the score of ${target}`;
    oppCaption.textContent = ` · lowered the score of ${target}`;
    labelNote.textContent = fresh && g.same_label ? `label = prediction (${classWords(names, g.explained_label)})` : "";
    labelNote.title =
      fresh && g.same_label ? "The model predicts this example's label: both choices show the same galleries." : "";
  }

  function renderCard(g, q) {
    const names = model.get("class_names");
    if (!q?.source) {
      setChildren(card);
      return;
    }
    const item = answers(g, q) ? g.item : null;
    const what = q.source === "test" ? `Test #${q.index}` : `Training #${q.index}`;
    if (!item) {
      setChildren(card, h("div", { className: "tracin-query-title", text: what }));
      return;
    }
    const wrong = item.pred != null && item.pred !== item.label;
    setChildren(
      card,
      imageElement(item.image, "tracin-img tracin-img-query", `${what} image`),
      h(
        "div",
        { className: "tracin-query-text" },
        h("div", { className: "tracin-query-title", text: what }),
        h(
          "div",
          {},
          h("span", { className: "tracin-muted", text: "label " }),
          h("strong", { text: className(names, item.label) }),
        ),
        item.pred != null
          ? h(
              "div",
              { className: wrong ? "tracin-wrong" : "" },
              h("span", { className: "tracin-muted", text: "predicted " }),
              h("strong", { text: className(names, item.pred) }),
              ` ${fmtProb(item.prob)}`,
            )
          : null,
        item.rank != null
          ? h("div", { className: "tracin-muted", text: `self-influence rank ${fmtInt(item.rank)}` })
          : null,
      ),
    );
  }

  function render() {
    const g = model.get("gallery") || {};
    const q = model.get("query") || {};
    back.hidden = !ctx.canGoBack();
    renderCard(g, q);
    renderCaptions(g, q);
    if (!q.source) {
      status.textContent = "";
      setChildren(
        pro,
        h("div", {
          className: "tracin-empty",
          text: "Select a test example, or open a training example from the table.",
        }),
      );
      setChildren(opp);
      el.classList.remove("is-stale");
      return;
    }
    const fresh =
      answers(g, q) && g.k === model.get("k") && (g.explain ?? "label") === (model.get("explain") || "label");
    el.classList.toggle("is-stale", !fresh);
    const what = q.source === "test" ? `test #${q.index}` : `training #${q.index}`;
    if (!fresh) {
      status.textContent =
        model.get("status") === "running"
          ? `computing influence for ${what} (waiting for the background computation)…`
          : `computing influence for ${what}…`;
      if (!answers(g, q) && !(g.proponents || []).length) {
        setChildren(pro, h("div", { className: "tracin-empty", text: "…" }));
        setChildren(opp);
      }
      return;
    }
    if (g.error) {
      status.textContent = "";
      setChildren(
        pro,
        h("div", { className: "tracin-empty tracin-wrong", testid: "tracin-gallery-error", text: g.error }),
      );
      setChildren(opp);
      return;
    }
    status.textContent = statusLine(what, [...(g.proponents || []), ...(g.opponents || [])]);
    setChildren(
      pro,
      (g.proponents || []).map((r) => tile(ctx, r, "proponents")),
    );
    setChildren(
      opp,
      (g.opponents || []).map((r) => tile(ctx, r, "opponents")),
    );
  }

  ctx.listen("change:gallery", render);
  ctx.listen("change:query", render);
  ctx.listen("change:class_names", render);
  ctx.listen("change:relabels", render);
  ctx.listen("change:explain", () => {
    renderExplain();
    render();
  });
  ctx.listen("change:k", () => {
    renderK();
    render();
  });
  renderK();
  renderExplain();
  render();
  return { el, render };
}
