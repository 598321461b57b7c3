// The charts' frame: the viewBox geometry, the scales and the axes every chart (histogram.js, charts.js) draws on.

import { svg } from "./dom.js";

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
export const PAD_R = 10,
  PAD_T = 10,
  PAD_B = 36;

export function frame(testid, label) {
  return svg("svg", { class: "tracin-chart", viewBox: `0 0 ${W} ${H}`, role: "img", "aria-label": label, testid });
}

/** Left margin for y tick labels of these texts: title band + the longest label + a gap. */
export function leftPad(yTicks) {
  const chars = Math.max(1, ...yTicks.map((t) => String(t).length));
  return Math.ceil(TITLE_BAND + chars * CHAR_W + 6);
}

export function scales(padL, inset = 0) {
  return {
    l: padL,
    x: (x, x0, x1) => padL + inset + ((x - x0) / (x1 - x0 || 1)) * (W - padL - PAD_R - inset),
    y: (y, y0, y1) => H - PAD_B - inset - ((y - y0) / (y1 - y0 || 1)) * (H - PAD_T - PAD_B - inset),
  };
}

/** Axis lines, end ticks of both axes and the two axis titles. */
export function axes(root, padL, { xl, xr, yt, yb, xtitle, ytitle }) {
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
