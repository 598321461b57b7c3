// The self-influence table's cells: one row per training example (its label and any relabel, the suggested label,
// the prediction, self-influence, the flag box) and the "where to stop" divider at the estimated number of wrong
// labels. Text only (textContent); table.js owns the paging and the requests.

import { imageElement } from "./codecs.js";
import { h } from "./dom.js";
import { isFlagged, newLabel } from "./flags.js";
import { className, fmtInt, fmtProb, fmtScore } from "./format.js";

export const COLUMNS = [
  { key: "rank", label: "Rank", sort: "rank" },
  { key: "image", label: "" },
  { key: "index", label: "Index", sort: "index" },
  { key: "label", label: "Label", sort: "label" },
  { key: "suggested", label: "Suggested", sort: "suggested", firstDescending: true },
  { key: "pred", label: "Predicted", sort: "pred" },
  { key: "score", label: "Self-influence", sort: "score", firstDescending: true },
  { key: "flag", label: "Flag" },
];

/** The divider's text at rank n (the contract's words). */
export function dividerText(n) {
  return `≈ ${fmtInt(n)} labels estimated wrong above this line`;
}

/** A class name that never wraps mid-word: one line, cut with an ellipsis, the full name in its title. */
export function nameSpan(names, label, props = {}) {
  const text = className(names, label);
  return h("span", { className: "tracin-name", title: text, text, ...props });
}

/** The new label of row r: the `relabels` trait when the model has it (it follows every edit), else the row's. */
export function rowNewLabel(model, r) {
  if (model.get("relabels") !== undefined) return newLabel(model, r.index);
  return r.new_label ?? null;
}

/** The label cell: the given label, and "→ new" when relabelled (the given one struck through). */
export function labelCell(model, r, tag = "td") {
  const names = model.get("class_names");
  const nl = rowNewLabel(model, r);
  return h(
    tag,
    { className: `tracin-col-label${nl !== null ? " is-relabelled" : ""}` },
    nameSpan(names, r.label, { className: "tracin-name tracin-given" }),
    nl !== null
      ? h("span", { className: "tracin-relabel-arrow", attrs: { "aria-label": "relabelled as" }, text: " → " })
      : null,
    nl !== null ? nameSpan(names, nl, { className: "tracin-name tracin-new-label", testid: "tracin-new-label" }) : null,
  );
}

/** The suggested-label cell (empty when there is none); its title is the badge text (what was measured). */
export function suggestedCell(model, r) {
  const names = model.get("class_names");
  const has = r.suggested !== null && r.suggested !== undefined;
  return h(
    "td",
    {
      className: "tracin-col-suggested",
      testid: "tracin-suggested-label",
      dataset: { suggested: has ? r.suggested : "" },
      title: r.badge || (has ? "" : "no suggestion: the checkpoints' average prediction agrees with the label"),
    },
    has ? nameSpan(names, r.suggested, { title: r.badge || className(names, r.suggested) }) : null,
  );
}

/**
 * One table row. `on.click(e, r, i)` handles a click on the row, `on.flag(e, r, box)` a click on its flag box
 * (before the box's change event), `on.change(r, box)` the box's change.
 */
export function tableRow(model, r, i, focused, on) {
  const names = model.get("class_names");
  const flagged = isFlagged(model, r.index);
  const wrong = r.pred !== null && r.pred !== undefined && r.pred !== r.label;
  const box = h("input", {
    type: "checkbox",
    testid: "tracin-row-flag",
    checked: flagged,
    dataset: { index: r.index, flagItem: "" },
    attrs: { "aria-label": `flag training example ${r.index}` },
    onClick: (e) => {
      e.stopPropagation();
      on.flag(e, r, box);
    },
    onChange: () => on.change(r, box),
  });
  const has = r.suggested !== null && r.suggested !== undefined;
  return h(
    "tr",
    {
      className: `tracin-table-row${flagged ? " is-flagged" : ""}${focused ? " is-focused" : ""}`,
      testid: "tracin-table-row",
      dataset: { index: r.index, flagItem: "", ...(has ? { suggested: r.suggested } : {}), label: r.label ?? "" },
      tabIndex: -1,
      onClick: (e) => on.click(e, r, i),
    },
    h("td", { className: "tracin-col-rank tracin-mono", text: fmtInt(r.rank) }),
    h(
      "td",
      { className: "tracin-col-image" },
      imageElement(r.image, "tracin-img tracin-img-row", `training example ${r.index}`),
    ),
    h("td", { className: "tracin-col-index tracin-mono", text: `#${r.index}` }),
    labelCell(model, r),
    suggestedCell(model, r),
    h(
      "td",
      { className: `tracin-col-pred${wrong ? " tracin-wrong" : ""}` },
      r.pred === null || r.pred === undefined ? "…" : nameSpan(names, r.pred),
      r.prob != null ? h("span", { className: "tracin-muted", text: ` ${fmtProb(r.prob)}` }) : null,
    ),
    h("td", { className: "tracin-col-score tracin-mono", text: fmtScore(r.score) }),
    h("td", { className: "tracin-col-flag" }, box),
  );
}

/** The divider row "≈ N labels estimated wrong above this line". */
export function dividerRow(n) {
  return h(
    "tr",
    { className: "tracin-divider", testid: "tracin-estimate-divider", dataset: { rank: n } },
    h("td", { attrs: { colspan: String(COLUMNS.length) }, text: dividerText(n) }),
  );
}

/**
 * Where the divider goes on this page: the position (0..rows.length) before which it is drawn, or -1. Only in rank
 * order (rank ascending or self-influence descending), between the last row ranked <= n and the first ranked > n;
 * at the page's top when the page starts right after rank n.
 */
export function dividerAt(rows, n, sort, descending) {
  if (n === null || n === undefined || !(n > 0) || !rows.length) return -1;
  const inOrder = (sort === "rank" && !descending) || (sort === "score" && descending);
  if (!inOrder) return -1;
  for (let i = 0; i < rows.length; i++) {
    const rank = rows[i].rank;
    if (rank === null || rank === undefined) return -1;
    if (rank > n) {
      if (i > 0) return i;
      return rank === n + 1 ? 0 : -1;
    }
  }
  return -1;
}
