// The ranking's charts: the self-influence histogram (histogram.js: brush a range to filter the table), ROC with
// AUC, found-vs-inspected with the user's flags as a point and the estimated number of wrong labels as a marker.

import { axes, frame, H, leftPad, PAD_B, PAD_T, scales, W } from "./chartframe.js";
import { h, setChildren, svg } from "./dom.js";
import { fmtInt, fmtScore } from "./format.js";
import { histogramChart } from "./histogram.js";

export { CHAR_W, H, TICK_FONT, W } from "./chartframe.js";
export { histogramChart };

// The curves' data sit this far inside their axes: a point at (0, 0) or on an edge stays off the axis lines.
export const INSET = 9;

/** The "where to stop" marker: a dashed vertical line at fraction x, labelled with `text` near the top. */
function estimateMarker(testid, s, padL, x, text, title) {
  const cx = s.x(Math.max(0, Math.min(1, x)), 0, 1);
  const left = cx > (W + padL) / 2;
  const line = svg("line", {
    class: "tracin-estimate",
    x1: cx,
    x2: cx,
    y1: PAD_T,
    y2: H - PAD_B,
    testid: `${testid}-estimate`,
    "data-x": x,
  });
  line.append(svg("title", { text: title }));
  const label = svg("text", {
    class: "tracin-point-label tracin-estimate-label",
    x: left ? cx - 4 : cx + 4,
    y: PAD_T + 11,
    "text-anchor": left ? "end" : "start",
    testid: `${testid}-estimate-label`,
    text,
  });
  return [line, label];
}

function curve(testid, label, xs, ys, { point = null, estimate = null, diagonal = true, xtitle, ytitle } = {}) {
  const root = frame(testid, label);
  const padL = leftPad(["0", "1"]);
  const s = scales(padL, INSET);
  if (diagonal)
    root.append(
      svg("line", { class: "tracin-diag", x1: s.x(0, 0, 1), y1: s.y(0, 0, 1), x2: s.x(1, 0, 1), y2: s.y(1, 0, 1) }),
    );
  const d = xs.map((x, i) => `${i ? "L" : "M"}${s.x(x, 0, 1).toFixed(1)},${s.y(ys[i], 0, 1).toFixed(1)}`).join("");
  root.append(svg("path", { class: "tracin-line", d }));
  axes(root, padL, { xl: "0", xr: "1", yt: "1", yb: "0", xtitle, ytitle });
  if (estimate) root.append(...estimateMarker(testid, s, padL, estimate.x, estimate.text, estimate.title));
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
            ? null
            : h("span", { className: "tracin-muted tracin-hint", text: "drag across bars to filter the table" }),
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
    const est = st.estimated_mislabelled ?? model.get("estimated_mislabelled");
    const known = est !== null && est !== undefined;
    const nTrain = f.n_train || ctx.info().n_train;
    const marker =
      known && nTrain
        ? {
            x: est / nTrain,
            text: `≈ ${fmtInt(est)} wrong`,
            title: `where to stop: ≈ ${fmtInt(est)} labels estimated wrong (the rows whose suggested label differs), inspect the top ${fmtInt(est)}`,
          }
        : null;
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
            { point: pt, estimate: marker, xtitle: "fraction inspected", ytitle: "mislabelled found" },
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
    if (known) {
      parts.push(
        h(
          "div",
          { className: "tracin-estimate-summary", testid: "tracin-estimate" },
          h("strong", { text: `≈ ${fmtInt(est)} labels estimated wrong` }),
          " (the checkpoints' average prediction differs from the label) · ",
          h("button", {
            type: "button",
            className: "tracin-link",
            testid: "tracin-goto-estimate",
            text: "show the line in the table",
            onClick: () => ctx.gotoEstimate(est),
          }),
        ),
      );
    }
    setChildren(el, parts);
  }

  ctx.listen("change:stats", render);
  ctx.listen("change:estimated_mislabelled", render);
  render();
  return { el, render };
}
