// Bulk flags over the self-influence table: "flag all shown" (every row under the table's filter, on every page, in
// Python: {kind: "bulk_flag"}), "this page", and shift-click ranges of rows (one `flagged` write).

import { h } from "./dom.js";
import { flaggedSet, setFlags } from "./flags.js";
import { fmtInt } from "./format.js";

/** The training indices of rows[from..to] (positions, either order, inclusive). */
export function rangeIndices(rows, from, to) {
  const [a, b] = from <= to ? [from, to] : [to, from];
  return rows.slice(Math.max(0, a), b + 1).map((r) => r.index);
}

/**
 * The range a shift-click on row position `at` covers, from the anchor (the training index last clicked; null or off
 * this page: the row alone), and the state to give it: `on` when given (a flag box's new state), else flag the range,
 * or unflag it when every row of it is flagged already.
 */
export function shiftRange(model, rows, anchor, at, on) {
  const from = rows.findIndex((r) => r.index === anchor);
  const indices = rangeIndices(rows, from < 0 ? at : from, at);
  const flagged = flaggedSet(model);
  const state = on === undefined ? !indices.every((i) => flagged.has(i)) : Boolean(on);
  return { indices, on: state };
}

/** Apply a shift-click range: one `flagged` write; returns {indices, on, changed}. */
export function flagRange(model, rows, anchor, at, on) {
  const r = shiftRange(model, rows, anchor, at, on);
  return { ...r, changed: setFlags(model, r.indices, r.on) };
}

/**
 * The bulk buttons over the table. `table` gives the filter (`filter()`: the RowsRequest fields), the page window
 * (`window()`: {offset, limit}) and the total shown (`total()`). With the "flagged" filter they unflag.
 */
export function createBulk(ctx, table) {
  const { rpc } = ctx;
  const all = h("button", {
    type: "button",
    className: "tracin-btn",
    testid: "tracin-bulk-flag",
    onClick: () => send(null),
  });
  const page = h("button", {
    type: "button",
    className: "tracin-btn",
    testid: "tracin-bulk-flag-page",
    onClick: () => send(table.window()),
  });
  const el = h("span", { className: "tracin-bulk", attrs: { role: "group", "aria-label": "Flag many" } }, all, page);

  /** Unflag instead of flag: the table shows flagged rows only. */
  const unflags = () => table.filter().only === "flagged";

  function send(win) {
    const flag = !unflags();
    rpc.request("bulk_flag", {
      filter: table.filter(),
      offset: win ? win.offset : null,
      limit: win ? win.limit : null,
      flag,
    });
  }

  function update() {
    const n = table.total();
    const shown = table.shown();
    const verb = unflags() ? "Unflag" : "Flag";
    all.textContent = `⚑ ${verb} all ${fmtInt(n)} shown`;
    page.textContent = `${verb} this page`;
    all.disabled = n === 0;
    page.disabled = shown === 0;
    all.title = `${verb} every row the table shows under its filter, on every page (u undoes it)`;
    page.title = `${verb} the ${fmtInt(shown)} rows of this page (u undoes it); shift-click rows to ${verb.toLowerCase()} a range`;
  }

  rpc.on("bulk_flag", (msg) => {
    const verb = msg.flag === false || unflags() ? "Unflagged" : "Flagged";
    ctx.announce(`${verb} ${fmtInt(msg.count)} training examples`);
  });
  update();
  return { el, update };
}
