// Self-influence table over the whole training set: server-side paging, sorting and filtering through custom
// messages ({kind: "rows", id, ...}); only the visible page and its thumbnails travel.

import { imageElement } from "./codecs.js";
import { h, setChildren } from "./dom.js";
import { createExport } from "./export.js";
import { isFlagged, toggleFlag } from "./flags.js";
import { className, fmtInt, fmtProb, fmtScore } from "./format.js";

export const PAGE_SIZE = 50;

const COLUMNS = [
  { key: "rank", label: "Rank", sort: "rank" },
  { key: "image", label: "" },
  { key: "index", label: "Index", sort: "index" },
  { key: "label", label: "Label", sort: "label" },
  { key: "pred", label: "Predicted", sort: "pred" },
  { key: "score", label: "Self-influence", sort: "score", firstDescending: true },
  { key: "flag", label: "Flag" },
];

export function createTable(ctx) {
  const { model, rpc } = ctx;
  const state = {
    sort: "rank",
    descending: false,
    label: null,
    only: "all",
    score_range: null,
    page: 0,
    pageSize: PAGE_SIZE,
  };
  let total = 0,
    rows = [],
    focus = -1,
    pendingFocus = null;

  const classSel = h("select", {
    className: "tracin-select",
    testid: "tracin-class-filter",
    attrs: { "aria-label": "Filter by class" },
    onChange: () => {
      state.label = classSel.value === "" ? null : Number(classSel.value);
      state.page = 0;
      fetch();
    },
  });
  const onlySel = h("select", {
    className: "tracin-select",
    testid: "tracin-only-filter",
    attrs: { "aria-label": "Show" },
    onChange: () => {
      state.only = onlySel.value;
      state.page = 0;
      fetch();
    },
  });
  const pageText = h("span", { className: "tracin-muted", testid: "tracin-table-page" });
  const prev = h("button", {
    type: "button",
    className: "tracin-btn tracin-btn-icon",
    testid: "tracin-table-prev",
    attrs: { "aria-label": "Previous page" },
    text: "‹",
    onClick: () => page(-1),
  });
  const next = h("button", {
    type: "button",
    className: "tracin-btn tracin-btn-icon",
    testid: "tracin-table-next",
    attrs: { "aria-label": "Next page" },
    text: "›",
    onClick: () => page(1),
  });
  const thead = h("thead");
  const tbody = h("tbody");
  const note = h("div", { className: "tracin-empty", testid: "tracin-table-note", hidden: true });
  const table = h("table", { className: "tracin-table", testid: "tracin-table" }, thead, tbody);
  const el = h(
    "section",
    { className: "tracin-table-section", attrs: { "aria-label": "Self-influence ranking" } },
    h(
      "div",
      { className: "tracin-toolbar" },
      h("span", { className: "tracin-section-title", text: "Self-influence ranking" }),
      h("span", { className: "tracin-muted", text: "high = unusual or likely mislabelled" }),
      h("span", { className: "tracin-spacer" }),
      createExport(ctx).el,
    ),
    h(
      "div",
      { className: "tracin-toolbar" },
      classSel,
      onlySel,
      h("span", { className: "tracin-spacer" }),
      pageText,
      prev,
      next,
    ),
    h("div", { className: "tracin-table-wrap" }, table, note),
  );

  function renderFilters() {
    const names = model.get("class_names") || [];
    const info = ctx.info();
    const n = Math.max(names.length, info.n_classes || 0);
    setChildren(
      classSel,
      h("option", { value: "", text: "all classes" }),
      Array.from({ length: n }, (_, c) =>
        h("option", { value: String(c), text: className(names, c), selected: state.label === c }),
      ),
    );
    classSel.value = state.label === null ? "" : String(state.label);
    const opts = [
      ["all", "all rows"],
      ["flagged", "flagged"],
      ["disagree", "label ≠ prediction"],
    ];
    if (info.has_truth) opts.push(["mislabelled", "mislabelled (truth)"]);
    setChildren(
      onlySel,
      opts.map(([v, t]) => h("option", { value: v, text: t, selected: state.only === v })),
    );
    onlySel.value = state.only;
  }

  function renderHead() {
    setChildren(
      thead,
      h(
        "tr",
        {},
        COLUMNS.map((c) => {
          if (!c.sort) return h("th", { className: `tracin-col-${c.key}`, text: c.label });
          const active = state.sort === c.sort;
          const arrow = active ? (state.descending ? " ▼" : " ▲") : "";
          return h(
            "th",
            {
              className: `tracin-col-${c.key}`,
              attrs: { "aria-sort": active ? (state.descending ? "descending" : "ascending") : "none" },
            },
            h("button", {
              type: "button",
              className: "tracin-sort",
              testid: `tracin-sort-${c.sort}`,
              text: c.label + arrow,
              onClick: () => sortBy(c),
            }),
          );
        }),
      ),
    );
  }

  function sortBy(c) {
    if (state.sort === c.sort) state.descending = !state.descending;
    else {
      state.sort = c.sort;
      state.descending = Boolean(c.firstDescending);
    }
    state.page = 0;
    renderHead();
    fetch();
  }

  function page(delta, then = null) {
    const n = Math.max(1, Math.ceil(total / state.pageSize));
    const p = state.page + delta;
    if (p < 0 || p >= n) return false;
    state.page = p;
    pendingFocus = then;
    fetch();
    return true;
  }

  /** Ask Python for the current page; the newest request wins. */
  function fetch() {
    tbody.classList.add("is-loading");
    return rpc.request("rows", {
      offset: state.page * state.pageSize,
      limit: state.pageSize,
      sort: state.sort,
      descending: state.descending,
      label: state.label,
      only: state.only,
      score_range: state.score_range,
    });
  }

  function row(r, i) {
    const names = model.get("class_names");
    const flagged = isFlagged(model, r.index);
    const wrong = r.pred !== null && r.pred !== undefined && r.pred !== r.label;
    const box = h("input", {
      type: "checkbox",
      testid: "tracin-row-flag",
      checked: flagged,
      dataset: { index: r.index, flagItem: "" },
      attrs: { "aria-label": `flag training example ${r.index}` },
      onClick: (e) => e.stopPropagation(),
      onChange: () => toggleFlag(model, r.index, box.checked),
    });
    return h(
      "tr",
      {
        className: `tracin-table-row${flagged ? " is-flagged" : ""}${i === focus ? " is-focused" : ""}`,
        testid: "tracin-table-row",
        dataset: { index: r.index, flagItem: "" },
        tabIndex: -1,
        onClick: () => {
          setFocus(i);
          ctx.openDetails(r.index);
        },
      },
      h("td", { className: "tracin-col-rank tracin-mono", text: fmtInt(r.rank) }),
      h(
        "td",
        { className: "tracin-col-image" },
        imageElement(r.image, "tracin-img tracin-img-row", `training example ${r.index}`),
      ),
      h("td", { className: "tracin-col-index tracin-mono", text: `#${r.index}` }),
      h("td", { className: "tracin-col-label", text: className(names, r.label) }),
      h(
        "td",
        { className: `tracin-col-pred${wrong ? " tracin-wrong" : ""}` },
        r.pred === null || r.pred === undefined ? "…" : className(names, r.pred),
        r.prob != null ? h("span", { className: "tracin-muted", text: ` ${fmtProb(r.prob)}` }) : null,
      ),
      h("td", { className: "tracin-col-score tracin-mono", text: fmtScore(r.score) }),
      h("td", { className: "tracin-col-flag" }, box),
    );
  }

  function render() {
    tbody.classList.remove("is-loading");
    setChildren(tbody, rows.map(row));
    const n = Math.max(1, Math.ceil(total / state.pageSize));
    const first = total ? state.page * state.pageSize + 1 : 0,
      last = Math.min(total, (state.page + 1) * state.pageSize);
    pageText.textContent = `${fmtInt(first)}–${fmtInt(last)} of ${fmtInt(total)} · page ${state.page + 1}/${n}`;
    prev.disabled = state.page <= 0;
    next.disabled = state.page >= n - 1;
    note.hidden = rows.length > 0;
    if (!rows.length) note.textContent = "No training examples match.";
  }

  rpc.on("rows", (msg) => {
    if (msg.pending) {
      rows = [];
      total = 0;
      render();
      note.hidden = false;
      note.textContent = "Self-influence is being computed; the ranking appears when it is done.";
      return;
    }
    rows = msg.rows || [];
    total = msg.total || 0;
    const maxPage = Math.max(0, Math.ceil(total / state.pageSize) - 1);
    if (state.page > maxPage) {
      state.page = maxPage;
      fetch();
      return;
    }
    if (pendingFocus === "first") focus = 0;
    else if (pendingFocus === "last") focus = rows.length - 1;
    else focus = Math.min(focus, rows.length - 1);
    pendingFocus = null;
    render();
    if (focus >= 0 && ctx.root.contains(document.activeElement)) focusRow();
  });

  function focusRow() {
    const tr = tbody.children[focus];
    if (tr) {
      tr.focus();
      ctx.setCurrent(rows[focus].index);
    }
  }

  function setFocus(i) {
    focus = i;
    for (const [j, tr] of [...tbody.children].entries()) tr.classList.toggle("is-focused", j === i);
    if (rows[i]) ctx.setCurrent(rows[i].index);
  }

  /** Keyboard: move the focused row by delta (from row element tr when given: the row that has the focus), flipping
   * pages at the ends. */
  function move(delta, tr = null) {
    const at = tr ? [...tbody.children].indexOf(tr) : -1;
    if (at >= 0) focus = at;
    const to = focus + delta;
    if (to >= 0 && to < rows.length) {
      setFocus(to);
      focusRow();
      return;
    }
    page(delta > 0 ? 1 : -1, delta > 0 ? "first" : "last");
  }

  function openFocused() {
    if (rows[focus]) ctx.openDetails(rows[focus].index);
  }

  function setRange(r) {
    state.score_range = r;
    state.page = 0;
    fetch();
  }

  ctx.listen("change:class_names", () => {
    renderFilters();
    render();
  });
  ctx.listen("change:info", renderFilters);
  let seen = "";
  ctx.listen("change:stats", () => {
    // refetch only when self-influence or the predictions arrive, not on every flag
    const st = model.get("stats") || {};
    const now = `${Boolean(st.ready)}/${Boolean(st.has_preds)}`;
    if (now !== seen) {
      seen = now;
      renderFilters();
      fetch();
    }
  });
  ctx.listen("change:status", () => {
    if (model.get("status") === "ready") fetch();
  });
  ctx.listen("change:flagged", () => {
    if (state.only === "flagged") fetch();
  });
  renderFilters();
  renderHead();
  render();
  return {
    el,
    fetch,
    move,
    page,
    openFocused,
    setRange,
    state,
    get rows() {
      return rows;
    },
  };
}
