// The self-influence histogram and its brush: drag across bars (or click one) to show exactly the rows whose
// self-influence lies in those bins; the table then asks Python for RowsRequest.score_range = [lo, hi] (the bins'
// outer edges), and clicking the selection again, or the "×" chips, clears it.

import { axes, frame, H, leftPad, PAD_B, PAD_R, PAD_T, scales, W } from "./chartframe.js";
import { svg } from "./dom.js";
import { fmtInt, fmtScore } from "./format.js";

/** The score range [lo, hi] of bins a..b (either order, inclusive): the outer edges of those bins. */
export function binsRange(edges, a, b) {
  const [i, j] = a <= b ? [a, b] : [b, a];
  return [edges[i], edges[j + 1]];
}

/** Whether bin i lies inside the selected range (its edges within [lo, hi], up to rounding). */
export function binSelected(edges, i, range) {
  if (!range) return false;
  const tol = 1e-9 * Math.max(Math.abs(range[0]), Math.abs(range[1]), 1e-300);
  return edges[i] >= range[0] - tol && edges[i + 1] <= range[1] + tol;
}

/**
 * Histogram of self-influence. `selected` = the [lo, hi] range filtering the table; onPick(range | null) when the
 * user brushes bins (pointer down on one bar, up on another), clicks a bar (its bin; again: clear) or clears.
 */
export function histogramChart(hist, selected, onPick) {
  const root = frame("tracin-histogram", "Histogram of self-influence scores: drag across bars to filter the table");
  const counts = hist?.counts || [];
  if (!counts.length) return root;
  const edges = hist.edges,
    log = hist.log;
  const max = counts.reduce((a, c) => Math.max(a, c), 1); // no spread: fine for any number of bins
  const yt = fmtInt(max);
  const padL = leftPad([yt, "0"]);
  const s = scales(padL);
  const base = H - PAD_B;
  const bw = (W - padL - PAD_R) / counts.length;
  const bars = [];
  const brush = svg("rect", {
    class: "tracin-brush",
    y: PAD_T,
    height: base - PAD_T,
    x: padL,
    width: 0,
    visibility: "hidden",
    testid: "tracin-brush",
  });

  /** Draw bins a..b as the brushed span (null: the selected range, if any). */
  function paint(a, b) {
    let first = -1,
      last = -1;
    bars.forEach((bar, i) => {
      const on = a === null ? binSelected(edges, i, selected) : i >= Math.min(a, b) && i <= Math.max(a, b);
      bar.classList.toggle("is-selected", on);
      if (on && first < 0) first = i;
      if (on) last = i;
    });
    brush.setAttribute("visibility", first < 0 ? "hidden" : "visible");
    brush.setAttribute("x", String(padL + first * bw));
    brush.setAttribute("width", String(first < 0 ? 0 : (last - first + 1) * bw));
  }

  let drag = null; // {start, cur}: bins under the pointer's press and its latest position
  // A release picks at once only through its click (same task: pointerup, mouseup, click), so that the click is not
  // taken for a second pick on the chart re-drawn for the new range; a release without a click picks on the next turn.
  let pending = null;
  const win = () => root.ownerDocument?.defaultView || globalThis;

  /** Pick bins a..b: a single selected bin again clears the selection. */
  function pick(a, b) {
    const range = binsRange(edges, a, b);
    const again = a === b && selected && selected[0] === range[0] && selected[1] === range[1];
    onPick(again ? null : range);
  }
  function flush() {
    if (!pending) return false;
    const [a, b] = pending;
    pending = null;
    pick(a, b);
    return true;
  }
  function up() {
    win().removeEventListener("pointerup", up);
    if (!drag) return;
    pending = [drag.start, drag.cur];
    drag = null;
    setTimeout(flush, 0);
  }
  // on each bar's hit area (events dispatched at it need not bubble), the release anywhere
  const handlers = (i) => ({
    onPointerdown: (e) => {
      if (e.button !== undefined && e.button > 0) return;
      e.preventDefault(); // no text selection while dragging
      drag = { start: i, cur: i };
      paint(i, i);
      win().addEventListener("pointerup", up);
    },
    onPointermove: () => {
      if (!drag || i === drag.cur) return;
      drag.cur = i;
      paint(drag.start, i);
    },
    onPointerup: up,
    onClick: (e) => {
      e.stopPropagation();
      if (!flush()) pick(i, i);
    },
  });
  root.addEventListener("click", flush); // a drag across bars clicks their common ancestor, the chart

  counts.forEach((c, i) => {
    const lo = edges[i],
      hi = edges[i + 1];
    const y = s.y(c, 0, max);
    const tip = `${fmtScore(lo)} – ${fmtScore(hi)}: ${fmtInt(c)} examples (click or drag across bars to filter)`;
    const bar = svg("rect", {
      class: "tracin-bar",
      x: padL + i * bw + 0.5,
      y: Math.min(y, base - (c ? 1 : 0)),
      width: Math.max(1, bw - 1),
      height: Math.max(c ? 1 : 0, base - y),
      "data-bin": i,
    });
    bar.append(svg("title", { text: tip }));
    // a transparent full-height hit area makes thin bars easy to press and drag across
    const hit = svg("rect", {
      class: "tracin-hit",
      x: padL + i * bw,
      y: PAD_T,
      width: bw,
      height: base - PAD_T,
      "data-bin": i,
      ...handlers(i),
    });
    hit.append(svg("title", { text: tip }));
    bars.push(bar);
    root.append(bar, hit);
  });
  root.append(brush);
  paint(null, null);
  axes(root, padL, {
    xl: fmtScore(edges[0]),
    xr: fmtScore(edges[edges.length - 1]),
    yt,
    yb: "0",
    xtitle: log ? "self-influence (log scale)" : "self-influence",
    ytitle: "count",
  });
  return root;
}
