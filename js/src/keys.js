// The keyboard: keys act on the focused tile or row, else on the current tab ("test" | "ranking").
// KEYS is the one list of them (the help dialog in header.js shows it).

import { toggleFlag } from "./flags.js";
import { acceptSuggestion } from "./relabel.js";

// The keys of each view; every key is listed once per list with one meaning (j / k: next / previous everywhere).
export const KEYS = {
  test: [
    ["← →", "previous / next test example (focus in the strip)"],
    ["← → ↑ ↓", "move between proponent or opponent tiles (focus on a tile)"],
  ],
  ranking: [
    ["↑ ↓", "previous / next row"],
    ["← →", "previous / next page"],
  ],
  all: [
    ["j k", "next / previous item of the focused list (test examples, tiles or rows)"],
    ["Enter", "open the focused tile or row in the details panel"],
    ["f", "flag / unflag the focused tile or row (else the example in the details panel)"],
    ["a", "accept the suggested label of the focused tile or row (else of the example in the details panel)"],
    ["shift-click", "flag the table rows from the last one clicked to this one"],
    ["u", "undo the last flag or relabel change"],
    ["Esc", "close details / help"],
    ["?", "show / hide this help"],
  ],
};
const NEXT = { ArrowRight: 1, ArrowDown: 1, j: 1, ArrowLeft: -1, ArrowUp: -1, k: -1 };
const TILE_COLUMNS = 5; // .tracin-grid: five tiles a row

function isTyping(target) {
  return target?.matches?.("input:not([type=checkbox]), select, textarea, [contenteditable]");
}

/** Move the focus from gallery tile t by delta within its grid (← → and j k by one, ↑ ↓ by a row). */
function moveTile(t, delta) {
  const tiles = [...t.parentElement.querySelectorAll(".tracin-tile")];
  const to = tiles[tiles.indexOf(t) + delta];
  if (to) to.focus();
}

/** f: flag the focused tile or row, else the example in the details panel (or the one last focused). */
function flagKey(ctx, details, target) {
  const holder = target?.closest?.(".tracin-tile, .tracin-table-row, .tracin-flag-toggle");
  if (!holder && target?.closest?.(".tracin-test-item")) {
    ctx.announce("Test examples are not flagged: flag their proponents or opponents.");
    return true;
  }
  const i = holder ? Number(holder.dataset.index) : (details.index ?? ctx.state.current);
  if (i === null || i === undefined || Number.isNaN(i)) return false;
  const on = toggleFlag(ctx.model, i);
  ctx.announce(`${on ? "Flagged" : "Unflagged"} training example ${i}`);
  return true;
}

const num = (v) => (v === undefined || v === "" ? null : Number(v));

/** a: accept the suggestion of the focused tile or row, else of the example in the details panel. */
function acceptKey(ctx, details, target) {
  const holder = target?.closest?.(".tracin-tile, .tracin-table-row");
  if (holder) {
    const d = holder.dataset;
    return acceptSuggestion(ctx, Number(d.index), num(d.suggested), num(d.label)) || true;
  }
  const it = details.item;
  if (!it) return false;
  acceptSuggestion(ctx, it.index, it.suggested, it.label);
  return true;
}

/** The ranking tab's keys when no row has the focus. */
function rankingKey(table, k, target) {
  if (k === "ArrowDown" || k === "j") table.move(1);
  else if (k === "ArrowUp" || k === "k") table.move(-1);
  else if (k === "ArrowRight") table.page(1);
  else if (k === "ArrowLeft") table.page(-1);
  else if (k === "Enter" && target?.matches?.("tr, .tracin-root")) table.openFocused();
  else return false;
  return true;
}

/** ← → ↑ ↓ j k on the focused tile, table row or test example; false when none has the focus. */
function focusedKey({ strip, table }, k, step, target) {
  const tile = target?.closest?.(".tracin-tile");
  const tr = target?.closest?.(".tracin-table-row");
  if (tile) moveTile(tile, k === "ArrowUp" || k === "ArrowDown" ? step * TILE_COLUMNS : step);
  else if (tr && (k === "ArrowRight" || k === "ArrowLeft")) table.page(step);
  else if (tr) table.move(step, tr);
  else if (target?.closest?.(".tracin-test-item")) strip.move(step);
  else return false;
  return true;
}

/** One key aimed inside the view; true when it was handled. */
function handleKey(ctx, views, e) {
  const k = e.key;
  const step = NEXT[k];
  if (k === "?") views.help.toggle();
  else if (k === "f" || k === "F") return flagKey(ctx, views.details, e.target);
  else if (k === "a" || k === "A") return acceptKey(ctx, views.details, e.target);
  else if (k === "u" || k === "U") {
    ctx.rpc.action("undo");
    ctx.announce("Undo");
  } else if (step && focusedKey(views, k, step, e.target)) return true;
  else if (ctx.state.tab === "test" && step && ctx.hasTest()) views.strip.move(step);
  else if (ctx.state.tab === "ranking") return rankingKey(views.table, k, e.target);
  else return false;
  return true;
}

/**
 * Handle the keys aimed inside ctx.root; returns the cleanup function.
 * @param {{help: {hidden: boolean, toggle: (on?: boolean) => void}, details: any, strip: any, table: any}} views
 */
export function listenKeys(ctx, views) {
  function onKey(e) {
    if (e.ctrlKey || e.metaKey || e.altKey) return;
    if (e.key === "Escape") {
      if (!views.help.hidden) views.help.toggle(false);
      else views.details.hide();
      return;
    }
    if (isTyping(e.target) || !handleKey(ctx, views, e)) return;
    e.preventDefault();
    e.stopPropagation();
  }
  // Listened for on the window, in the capture phase: the host's shortcuts (Lumino's, e.g. Notebook 7's arrow keys)
  // otherwise stop some keys before they reach the widget. Only keys aimed inside this view are handled.
  const win = ctx.root.ownerDocument.defaultView || window;
  const onWindowKey = (e) => {
    if (ctx.root.contains(e.target)) onKey(e);
  };
  win.addEventListener("keydown", onWindowKey, true);
  return () => win.removeEventListener("keydown", onWindowKey, true);
}
