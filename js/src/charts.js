// Small SVG charts: self-influence histogram (click a bar to filter the table), ROC with AUC,
// found-vs-inspected curve with the user's flags as a point.

import { h, setChildren, svg } from "./dom.js";
import { fmtInt, fmtScore } from "./format.js";

// Geometry in viewBox units. The SVG scales with its box (240-280 px wide in the table pane, see .tracin-charts), so
// 1 unit renders as 0.92-1.08 px: TICK_FONT 12 keeps every tick label >= 11 px on screen (tests/e2e checks it).
export const W = 260,
  H = 160,
  TICK_FONT = 12,
  TITLE_FONT = 12;
// Width of one digit (or comma) at TICK_FONT, a safe upper bound for sans-serif fonts: the left margin is sized from
// it so that the longest y tick label ("94,250") fits fully (it used to be clipped to "4,250").
export const CHAR_W = 0.62 * TICK_FONT;
const TITLE_BAND = 17; // the rotated y-axis title's column at the left edge
const PAD_R = 10,
  PAD_T = 10,
  PAD_B = 36;

function frame(testid, label) {
  return svg("svg", { class: "tracin-chart", viewBox: `0 0 ${W} ${H}`, role: "img", "aria-label": label, testid });
}

/** Left margin for y tick labels of these texts: title band + the longest label + a gap. */
export function leftPad(yTicks) {
  const chars = Math.max(1, ...yTicks.map((t) => String(t).length));
  return Math.ceil(TITLE_BAND + chars * CHAR_W + 6);
}

function scales(padL) {
  return {
    l: padL,
    x: (x, x0, x1) => padL + ((x - x0) / (x1 - x0 || 1)) * (W - padL - PAD_R),
    y: (y, y0, y1) => H - PAD_B - ((y - y0) / (y1 - y0 || 1)) * (H - PAD_T - PAD_B),
  };
}

/** Axis lines, end ticks of both axes and the two axis titles. */
function axes(root, padL, { xl, xr, yt, yb, xtitle, ytitle }) {
  const base = H - PAD_B;
  const mid = (PAD_T + base) / 2;
  root.append(
    svg("line", { class: "tracin-axis", x1: padL, y1: base, x2: W - PAD_R, y2: base }),
    svg("line", { class: "tracin-axis", x1: padL, y1: PAD_T, x2: padL, y2: base }),
    svg("text", { class: "tracin-tick", x: padL, y: base + 14, "text-anchor": "start", text: xl }),
    svg("text", { class: "tracin-tick", x: W - PAD_R, y: base + 14, "text-anchor": "end", text: xr }),
    svg("text", { class: "tracin-tick", x: padL - 4, y: PAD_T + 9, "text-anchor": "end", text: yt }),
    svg("text", { class: "tracin-tick", x: padL - 4, y: base, "text-anchor": "end", text: yb }),
    svg("text", {
      class: "tracin-axis-title",
      x: (W + padL - PAD_R) / 2,
      y: H - 5,
      "text-anchor": "middle",
      testid: "tracin-axis-x",
      text: xtitle,
    }),
    svg("text", {
      class: "tracin-axis-title",
      x: 0,
      y: 0,
      transform: `translate(${TITLE_BAND - 5},${mid}) rotate(-90)`,
      "text-anchor": "middle",
      testid: "tracin-axis-y",
      text: ytitle,
    }),
  );
}

/**
 * Histogram of self-influence. `selected` = [lo, hi] range currently filtering the table; onPick(range|null).
 */
export function histogramChart(hist, selected, onPick) {
  const root = frame("tracin-histogram", "Histogram of self-influence scores");
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
  counts.forEach((c, i) => {
    const lo = edges[i],
      hi = edges[i + 1];
    const on = selected && selected[0] === lo && selected[1] === hi;
    const y = s.y(c, 0, max);
    const bar = svg("rect", {
      class: `tracin-bar${on ? " is-selected" : ""}`,
      x: padL + i * bw + 0.5,
      y: Math.min(y, base - (c ? 1 : 0)),
      width: Math.max(1, bw - 1),
      height: Math.max(c ? 1 : 0, base - y),
      "data-bin": i,
      onClick: () => onPick(on ? null : [lo, hi]),
    });
    bar.append(svg("title", { text: `${fmtScore(lo)} – ${fmtScore(hi)}: ${fmtInt(c)} examples (click to filter)` }));
    // a transparent full-height hit area makes thin bars clickable
    const hit = svg("rect", {
      class: "tracin-hit",
      x: padL + i * bw,
      y: PAD_T,
      width: bw,
      height: base - PAD_T,
      onClick: () => onPick(on ? null : [lo, hi]),
    });
    hit.append(svg("title", { text: `${fmtScore(lo)} – ${fmtScore(hi)}: ${fmtInt(c)} examples (click to filter)` }));
    root.append(bar, hit);
  });
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

function curve(testid, label, xs, ys, { point = null, diagonal = true, xtitle, ytitle } = {}) {
  const root = frame(testid, label);
  const padL = leftPad(["0", "1"]);
  const s = scales(padL);
  if (diagonal)
    root.append(
      svg("line", { class: "tracin-diag", x1: s.x(0, 0, 1), y1: s.y(0, 0, 1), x2: s.x(1, 0, 1), y2: s.y(1, 0, 1) }),
    );
  const d = xs.map((x, i) => `${i ? "L" : "M"}${s.x(x, 0, 1).toFixed(1)},${s.y(ys[i], 0, 1).toFixed(1)}`).join("");
  root.append(svg("path", { class: "tracin-line", d }));
  axes(root, padL, { xl: "0", xr: "1", yt: "1", yb: "0", xtitle, ytitle });
  if (point) {
    // drawn last (on top of the curve): a large marker with a text label beside it, on the side with room
    const cx = s.x(point[0], 0, 1),
      cy = s.y(point[1], 0, 1);
    const left = cx > (W + padL) / 2;
    const c = svg("circle", { class: "tracin-point", cx, cy, r: 6, testid: `${testid}-flags` });
    c.append(svg("title", { text: point[2] }));
    const ly = Math.min(Math.max(cy + 4, PAD_T + 10), H - PAD_B - 3);
    root.append(
      c,
      svg("text", {
        class: "tracin-point-label",
        x: left ? cx - 10 : cx + 10,
        y: cy < PAD_T + 24 ? cy + 18 : ly,
        "text-anchor": left ? "end" : "start",
        testid: `${testid}-flags-label`,
        text: "your flags",
      }),
    );
  }
  return root;
}

/** The statistics panel: histogram + (with ground truth) ROC and found-vs-inspected. */
export function createCharts(ctx) {
  const { model } = ctx;
  const el = h("div", { className: "tracin-charts", testid: "tracin-charts" });

  function render() {
    const st = model.get("stats") || {};
    const parts = [];
    if (!st.ready) {
      setChildren(
        el,
        h("div", { className: "tracin-empty", text: "Statistics appear when self-influence is computed." }),
      );
      return;
    }
    const range = ctx.scoreRange();
    parts.push(
      h(
        "figure",
        { className: "tracin-figure" },
        h(
          "figcaption",
          {},
          "Self-influence",
          range
            ? h("button", {
                type: "button",
                className: "tracin-link",
                testid: "tracin-range-clear",
                text: `× ${fmtScore(range[0])}–${fmtScore(range[1])}`,
                onClick: () => ctx.setScoreRange(null),
              })
            : null,
        ),
        histogramChart(st.histogram, range, (r) => ctx.setScoreRange(r)),
      ),
    );
    const f = st.flags || {};
    if (st.roc) {
      parts.push(
        h(
          "figure",
          { className: "tracin-figure" },
          h(
            "figcaption",
            {},
            "ROC as a mislabel detector · ",
            h("strong", { testid: "tracin-auc", text: `AUC ${st.roc.auc.toFixed(3)}` }),
          ),
          curve(
            "tracin-roc",
            "ROC curve of self-influence against the mislabelled ground truth",
            st.roc.fpr,
            st.roc.tpr,
            { xtitle: "false positive rate", ytitle: "true positive rate" },
          ),
        ),
      );
    }
    if (st.found) {
      const pt =
        f.inspected != null && f.n_flagged
          ? [
              f.inspected,
              f.recall || 0,
              `your flags: ${f.true_positives} of ${f.n_mislabelled} found with ${f.n_flagged} flagged`,
            ]
          : null;
      parts.push(
        h(
          "figure",
          { className: "tracin-figure" },
          h("figcaption", { text: "Mislabelled found vs fraction inspected" }),
          curve(
            "tracin-found",
            "Fraction of mislabelled examples found against the fraction inspected in self-influence order",
            st.found.inspected,
            st.found.found,
            { point: pt, xtitle: "fraction inspected", ytitle: "mislabelled found" },
          ),
          h(
            "div",
            { className: "tracin-legend", testid: "tracin-found-legend" },
            h("span", { className: "tracin-legend-line" }),
            "inspecting in self-influence order",
            pt ? h("span", { className: "tracin-legend-dot" }) : null,
            pt ? pt[2] : " · flag examples to place your own point",
          ),
        ),
      );
    }
    const summary = h(
      "div",
      { className: "tracin-flag-summary", testid: "tracin-flag-summary" },
      h("strong", { text: `${fmtInt(f.n_flagged || 0)} flagged` }),
      ` of ${fmtInt(f.n_train)}`,
    );
    if (f.n_mislabelled !== undefined) {
      summary.append(
        document.createTextNode(
          f.n_flagged
            ? ` · precision ${Math.round(100 * f.precision)}% · recall ${Math.round(100 * (f.recall || 0))}% (${f.true_positives}/${f.n_mislabelled})`
            : ` · ${fmtInt(f.n_mislabelled)} mislabelled in the ground truth`,
        ),
      );
    }
    parts.push(summary);
    setChildren(el, parts);
  }

  ctx.listen("change:stats", render);
  render();
  return { el, render };
}
