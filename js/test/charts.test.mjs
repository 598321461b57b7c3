import assert from "node:assert/strict";
import { test } from "node:test";
import { CHAR_W, H, histogramChart, TICK_FONT, W } from "../src/charts.js";
import { render } from "../src/index.js";
import { FakeModel, mount, q } from "./setup.mjs";

/** A 100k-row histogram: 40 bins, one of 94,250 rows (the case whose first digit used to be clipped). */
function bigHistogram() {
  const counts = Array.from({ length: 40 }, (_, i) => (i === 3 ? 94_250 : i < 20 ? 287 : 0));
  counts[39] = 100_000 - counts.reduce((a, c) => a + c, 0) + counts[39];
  const edges = Array.from({ length: 41 }, (_, i) => 10 ** (-2 + i / 10));
  return { counts, edges, log: true };
}

const ticks = (root) => [...root.querySelectorAll(".tracin-tick")];

test("histogram of 100k rows: the y tick shows 94,250 in full, inside the chart and clear of the axis title", () => {
  const hist = bigHistogram();
  assert.equal(
    hist.counts.reduce((a, c) => a + c, 0),
    100_000,
  );
  const root = histogramChart(hist, null, () => {});
  const top = ticks(root).find((t) => t.textContent === "94,250");
  assert.ok(top, `tick labels: ${ticks(root).map((t) => t.textContent)}`);
  assert.equal(top.getAttribute("text-anchor"), "end");
  const right = Number(top.getAttribute("x"));
  const left = right - top.textContent.length * CHAR_W; // CHAR_W bounds a digit's width at TICK_FONT
  const title = root.querySelector('[data-testid="tracin-axis-y"]');
  const titleRight = Number(/translate\(([\d.]+),/.exec(title.getAttribute("transform"))[1]) + TICK_FONT / 2;
  assert.ok(left >= titleRight, `tick spans [${left}, ${right}], the y title ends at ${titleRight}`);
  // the axis is to the right of the tick, and the bars start at the axis
  const axisX = Number(root.querySelector(".tracin-axis").getAttribute("x1"));
  assert.ok(axisX > right);
  assert.ok(Number(root.querySelector(".tracin-bar").getAttribute("x")) >= axisX);
  assert.equal(root.querySelectorAll(".tracin-bar").length, 40);
});

test("charts name both axes; ticks render at >= 11 px in the narrowest chart box (240 px)", () => {
  const root = histogramChart(bigHistogram(), null, () => {});
  assert.equal(root.querySelector('[data-testid="tracin-axis-x"]').textContent, "self-influence (log scale)");
  assert.equal(root.querySelector('[data-testid="tracin-axis-y"]').textContent, "count");
  assert.equal(root.getAttribute("viewBox"), `0 0 ${W} ${H}`);
  assert.ok((TICK_FONT * 240) / W >= 11, `${TICK_FONT} units at 240/${W} px per unit`);
  const linear = histogramChart({ counts: [1, 2], edges: [0, 1, 2], log: false }, null, () => {});
  assert.equal(linear.querySelector('[data-testid="tracin-axis-x"]').textContent, "self-influence");
});

test("ROC and found-vs-inspected carry axis titles; your flags are a labelled point with a legend", () => {
  const m = new FakeModel({
    status: "ready",
    info: { n_train: 100, n_test: 0, has_truth: true, engine: "Fake", n_classes: 3 },
    stats: {
      ready: true,
      has_preds: true,
      histogram: { counts: [5, 3, 2], edges: [0, 1, 2, 3], log: false },
      roc: { fpr: [0, 0.5, 1], tpr: [0, 0.9, 1], auc: 0.875 },
      found: { inspected: [0, 0.5, 1], found: [0, 0.8, 1] },
      flags: { n_flagged: 4, n_train: 100, n_mislabelled: 10, true_positives: 3, precision: 0.75, recall: 0.3 },
    },
  });
  m.state.stats.flags.inspected = 0.04;
  const { el, cleanup } = mount(render, m);
  q(el, "tracin-tab-ranking")[0].click();
  const titles = (id) => ["tracin-axis-x", "tracin-axis-y"].map((t) => q(q(el, id)[0], t)[0].textContent);
  assert.deepEqual(titles("tracin-histogram"), ["self-influence", "count"]);
  assert.deepEqual(titles("tracin-roc"), ["false positive rate", "true positive rate"]);
  assert.deepEqual(titles("tracin-found"), ["fraction inspected", "mislabelled found"]);
  const pt = q(el, "tracin-found-flags")[0];
  assert.ok(Number(pt.getAttribute("r")) >= 5);
  assert.equal(q(el, "tracin-found-flags-label")[0].textContent, "your flags");
  assert.match(q(el, "tracin-found-legend")[0].textContent, /your flags: 3 of 10 found with 4 flagged/);
  // without flags: no point, the legend says how to get one
  m.pyset("stats", { ...m.get("stats"), flags: { n_flagged: 0, n_train: 100, n_mislabelled: 10 } });
  assert.equal(q(el, "tracin-found-flags").length, 0);
  assert.match(q(el, "tracin-found-legend")[0].textContent, /flag examples to place your own point/);
  cleanup();
});
