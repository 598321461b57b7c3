// Small SVG charts: self-influence histogram (click a bar to filter the table), ROC with AUC,
// found-vs-inspected curve with the user's flags as a point.

import { fmtInt, fmtScore } from "./codecs.js";
import { h, setChildren, svg } from "./dom.js";

const W = 260,
  H = 120,
  PAD = { l: 30, r: 8, t: 8, b: 20 };

function frame(testid, label) {
  return svg("svg", { class: "tracin-chart", viewBox: `0 0 ${W} ${H}`, role: "img", "aria-label": label, testid });
}

function sx(x, x0, x1) {
  return PAD.l + ((x - x0) / (x1 - x0 || 1)) * (W - PAD.l - PAD.r);
}
function sy(y, y0, y1) {
  return H - PAD.b - ((y - y0) / (y1 - y0 || 1)) * (H - PAD.t - PAD.b);
}

function axes(root, xl, xr, yt, yb, xlabel) {
  root.append(
    svg("line", { class: "tracin-axis", x1: PAD.l, y1: H - PAD.b, x2: W - PAD.r, y2: H - PAD.b }),
    svg("line", { class: "tracin-axis", x1: PAD.l, y1: PAD.t, x2: PAD.l, y2: H - PAD.b }),
    svg("text", { class: "tracin-tick", x: PAD.l, y: H - 6, "text-anchor": "start", text: xl }),
    svg("text", { class: "tracin-tick", x: W - PAD.r, y: H - 6, "text-anchor": "end", text: xr }),
    svg("text", { class: "tracin-tick", x: PAD.l - 3, y: PAD.t + 8, "text-anchor": "end", text: yt }),
    svg("text", { class: "tracin-tick", x: PAD.l - 3, y: H - PAD.b, "text-anchor": "end", text: yb }),
    xlabel
      ? svg("text", { class: "tracin-tick", x: (W + PAD.l) / 2, y: H - 6, "text-anchor": "middle", text: xlabel })
      : null,
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
  const max = Math.max(...counts, 1);
  const bw = (W - PAD.l - PAD.r) / counts.length;
  counts.forEach((c, i) => {
    const lo = edges[i],
      hi = edges[i + 1];
    const on = selected && selected[0] === lo && selected[1] === hi;
    const y = sy(c, 0, max);
    const bar = svg("rect", {
      class: `tracin-bar${on ? " is-selected" : ""}`,
      x: PAD.l + i * bw + 0.5,
      y: Math.min(y, H - PAD.b - (c ? 1 : 0)),
      width: Math.max(1, bw - 1),
      height: Math.max(c ? 1 : 0, H - PAD.b - y),
      "data-bin": i,
      onClick: () => onPick(on ? null : [lo, hi]),
    });
    bar.append(svg("title", { text: `${fmtScore(lo)} – ${fmtScore(hi)}: ${fmtInt(c)} examples (click to filter)` }));
    // a transparent full-height hit area makes thin bars clickable
    const hit = svg("rect", {
      class: "tracin-hit",
      x: PAD.l + i * bw,
      y: PAD.t,
      width: bw,
      height: H - PAD.t - PAD.b,
      onClick: () => onPick(on ? null : [lo, hi]),
    });
    hit.append(svg("title", { text: `${fmtScore(lo)} – ${fmtScore(hi)}: ${fmtInt(c)} examples (click to filter)` }));
    root.append(bar, hit);
  });
  axes(root, fmtScore(edges[0]), fmtScore(edges[edges.length - 1]), fmtInt(max), "0", log ? "log scale" : "");
  return root;
}

function curve(testid, label, xs, ys, { point = null, diagonal = true } = {}) {
  const root = frame(testid, label);
  if (diagonal)
    root.append(
      svg("line", { class: "tracin-diag", x1: sx(0, 0, 1), y1: sy(0, 0, 1), x2: sx(1, 0, 1), y2: sy(1, 0, 1) }),
    );
  const d = xs.map((x, i) => `${i ? "L" : "M"}${sx(x, 0, 1).toFixed(1)},${sy(ys[i], 0, 1).toFixed(1)}`).join("");
  root.append(svg("path", { class: "tracin-line", d }));
  if (point) {
    const c = svg("circle", {
      class: "tracin-point",
      cx: sx(point[0], 0, 1),
      cy: sy(point[1], 0, 1),
      r: 3.5,
      testid: `${testid}-flags`,
    });
    c.append(svg("title", { text: point[2] }));
    root.append(c);
  }
  axes(root, "0", "1", "1", "0", "");
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
    const range = ctx.table ? ctx.table.state.score_range : null;
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
                onClick: () => ctx.table.setRange(null),
              })
            : null,
        ),
        histogramChart(st.histogram, range, (r) => ctx.table?.setRange(r)),
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
            { point: pt },
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
