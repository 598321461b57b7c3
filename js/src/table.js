// Self-influence table over the whole training set: server-side paging, sorting and filtering through custom
// messages ({kind: "rows", id, ...}); only the visible page and its thumbnails travel.

import { createBulk, flagRange } from "./bulk.js";
import { h, setChildren } from "./dom.js";
import { createExport } from "./export.js";
import { toggleFlag } from "./flags.js";
import { className, fmtInt, fmtScore } from "./format.js";
import { COLUMNS, dividerAt, dividerRow, tableRow } from "./tablerows.js";

export const PAGE_SIZE = 50;

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
    pendingFocus = null,
    anchor = null, // the training index last clicked: shift-click flags the rows from it
    skipChange = false; // a shift-click on a flag box flagged a range: its change event does nothing more

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
  const rangeChip = h("button", {
    type: "button",
    className: "tracin-btn tracin-chip",
    testid: "tracin-table-range",
    hidden: true,
    onClick: () => ctx.setScoreRange(null),
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
      rangeChip,
      h("span", { className: "tracin-spacer" }),
      pageText,
      prev,
      next,
    ),
    h("div", { className: "tracin-toolbar tracin-bulk-bar" }),
    h("div", { className: "tracin-table-wrap" }, table, note),
  );
  const bulk = createBulk(ctx, {
    filter,
    window: () => ({ offset: state.page * state.pageSize, limit: state.pageSize }),
    total: () => total,
    shown: () => rows.length,
  });
  el.querySelector(".tracin-bulk-bar").append(
    bulk.el,
    h("span", {
      className: "tracin-muted tracin-bulk-hint",
      text: "shift-click rows to flag a range",
    }),
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
      ["suggested", "with a suggested label"],
      ["relabelled", "relabelled"],
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

  /** The table's filter: the RowsRequest fields that choose and order the rows (bulk_flag sends them too). */
  function filter() {
    return {
      sort: state.sort,
      descending: state.descending,
      label: state.label,
      only: state.only,
      score_range: state.score_range,
    };
  }

  /** Ask Python for the current page; the newest request wins. */
  function fetch() {
    tbody.classList.add("is-loading");
    return rpc.request("rows", { offset: state.page * state.pageSize, limit: state.pageSize, ...filter() });
  }

  /** The estimated number of wrong labels (stats, else the trait); null when unknown. */
  function estimate() {
    const st = model.get("stats") || {};
    const n = st.estimated_mislabelled ?? model.get("estimated_mislabelled");
    return n === undefined ? null : n;
  }

  const handlers = {
    click(e, r, i) {
      if (e.shiftKey && anchor !== null) {
        const got = flagRange(model, rows, anchor, i);
        ctx.announce(`${got.on ? "Flagged" : "Unflagged"} ${got.indices.length} rows`);
        setFocus(i);
        return;
      }
      anchor = r.index;
      setFocus(i);
      ctx.openDetails(r.index, e.currentTarget);
    },
    flag(e, r, box) {
      const i = rows.indexOf(r);
      if (e.shiftKey && anchor !== null && anchor !== r.index) {
        skipChange = true;
        flagRange(model, rows, anchor, i, box.checked);
      }
      anchor = r.index;
    },
    change(r, box) {
      if (skipChange) skipChange = false;
      else toggleFlag(model, r.index, box.checked);
    },
  };

  function render() {
    tbody.classList.remove("is-loading");
    const hadFocus = tbody.contains(document.activeElement);
    drawnEstimate = estimate();
    const trs = rows.map((r, i) => tableRow(model, r, i, i === focus, handlers));
    const at = dividerAt(rows, estimate(), state.sort, state.descending);
    if (at >= 0) trs.splice(at, 0, dividerRow(estimate()));
    setChildren(tbody, trs);
    if (hadFocus && focus >= 0) rowEl(focus)?.focus();
    const range = state.score_range;
    rangeChip.hidden = !range;
    if (range) {
      rangeChip.textContent = `self-influence ${fmtScore(range[0])}–${fmtScore(range[1])} ×`;
      rangeChip.title = "Rows whose self-influence lies in the range brushed on the histogram; click to show all";
    }
    bulk.update();
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

  /** The <tr> of row position i (the divider row is not one). */
  const rowEl = (i) => tbody.querySelectorAll(".tracin-table-row")[i];

  function focusRow() {
    const tr = rowEl(focus);
    if (tr) {
      tr.focus();
      ctx.setCurrent(rows[focus].index);
    }
  }

  function setFocus(i) {
    focus = i;
    for (const [j, tr] of [...tbody.querySelectorAll(".tracin-table-row")].entries())
      tr.classList.toggle("is-focused", j === i);
    if (rows[i]) ctx.setCurrent(rows[i].index);
  }

  /** Keyboard: move the focused row by delta (from row element tr when given: the row that has the focus), flipping
   * pages at the ends. */
  function move(delta, tr = null) {
    const at = tr ? [...tbody.querySelectorAll(".tracin-table-row")].indexOf(tr) : -1;
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
    if (rows[focus]) ctx.openDetails(rows[focus].index, rowEl(focus));
  }

  /** Show the page of rank n in rank order, every filter off: the "where to stop" divider. */
  function gotoRank(n) {
    Object.assign(state, { sort: "rank", descending: false, label: null, only: "all", score_range: null });
    state.page = Math.max(0, Math.floor(n / state.pageSize));
    renderFilters();
    renderHead();
    fetch();
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
  let seen = "",
    drawnEstimate = null;
  ctx.listen("change:stats", () => {
    // refetch only when self-influence or the predictions arrive, not on every flag
    const st = model.get("stats") || {};
    const now = `${Boolean(st.ready)}/${Boolean(st.has_preds)}`;
    if (now !== seen) {
      seen = now;
      renderFilters();
      fetch();
    } else if (estimate() !== drawnEstimate) render();
  });
  ctx.listen("change:status", () => {
    if (model.get("status") === "ready") fetch();
  });
  ctx.listen("change:flagged", () => {
    if (state.only === "flagged") fetch();
  });
  ctx.listen("change:relabels", () => {
    if (state.only === "relabelled") fetch();
    else render();
  });
  ctx.listen("change:estimated_mislabelled", render);
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
    gotoRank,
    state,
    filter,
    get rows() {
      return rows;
    },
  };
}
