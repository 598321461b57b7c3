import assert from "node:assert/strict";
import { test } from "node:test";
import { render } from "../src/index.js";
import { FakeModel, img, mount, q, row } from "./setup.mjs";

function rowsReply(id, rows, total = 120, offset = 0) {
  const buffers = [];
  const packed = rows.map((r) => {
    buffers.push(img().data);
    return { ...r, image: { buffer: buffers.length - 1, shape: [2, 2, 1] } };
  });
  return [{ kind: "rows", id, pending: false, total, offset, rows: packed }, buffers];
}

function openTable(m) {
  const { el, cleanup } = mount(render, m);
  q(el, "tracin-tab-ranking")[0].click();
  return { el, cleanup };
}

test("opening the table sends a rows request; the reply renders rows with testids and data-index", () => {
  const m = new FakeModel({
    status: "ready",
    stats: { ready: true, has_preds: true, flags: { n_flagged: 0, n_train: 120 } },
  });
  const { el, cleanup } = openTable(m);
  const req = m.lastSent("rows");
  assert.equal(req.offset, 0);
  assert.equal(req.limit, 50);
  assert.equal(req.sort, "rank");
  m.reply(...rowsReply(req.id, [row(5), row(9)]));
  assert.deepEqual(
    q(el, "tracin-table-row").map((r) => r.dataset.index),
    ["5", "9"],
  );
  assert.match(q(el, "tracin-table-page")[0].textContent, /1–50 of 120 · page 1\/3/);
  cleanup();
});

test("paging sends a request for the next window; stale replies are ignored", () => {
  const m = new FakeModel({ status: "ready", stats: { ready: true, has_preds: true, flags: {} } });
  const { el, cleanup } = openTable(m);
  const first = m.lastSent("rows");
  m.reply(...rowsReply(first.id, [row(1)]));
  q(el, "tracin-table-next")[0].click();
  const second = m.lastSent("rows");
  assert.equal(second.offset, 50);
  assert.notEqual(second.id, first.id);
  q(el, "tracin-table-next")[0].click();
  const third = m.lastSent("rows");
  assert.equal(third.offset, 100);
  m.reply(...rowsReply(third.id, [row(77)], 120, 100));
  m.reply(...rowsReply(second.id, [row(33)], 120, 50)); // late answer to an older request
  assert.deepEqual(
    q(el, "tracin-table-row").map((r) => r.dataset.index),
    ["77"],
  );
  cleanup();
});

test("sorting and class filter go into the request", () => {
  const m = new FakeModel({
    status: "ready",
    class_names: ["zero", "one", "two"],
    stats: { ready: true, has_preds: true, flags: {} },
  });
  const { el, cleanup } = openTable(m);
  q(el, "tracin-sort-score")[0].click();
  let req = m.lastSent("rows");
  assert.equal(req.sort, "score");
  assert.equal(req.descending, true);
  q(el, "tracin-sort-score")[0].click();
  assert.equal(m.lastSent("rows").descending, false);
  const sel = q(el, "tracin-class-filter")[0];
  assert.deepEqual(
    [...sel.options].map((o) => o.textContent),
    ["all classes", "zero", "one", "two"],
  );
  sel.value = "2";
  sel.dispatchEvent(new Event("change"));
  req = m.lastSent("rows");
  assert.equal(req.label, 2);
  assert.equal(req.offset, 0);
  cleanup();
});

test("row flag box writes flagged and calls save_changes", () => {
  const m = new FakeModel({ status: "ready", flagged: [3], stats: { ready: true, has_preds: true, flags: {} } });
  const { el, cleanup } = openTable(m);
  m.reply(...rowsReply(m.lastSent("rows").id, [row(3), row(8)]));
  const boxes = q(el, "tracin-row-flag");
  assert.equal(boxes[0].checked, true);
  assert.equal(boxes[1].checked, false);
  assert.ok(q(el, "tracin-table-row")[0].classList.contains("is-flagged"));
  const saves = m.saves;
  boxes[1].checked = true;
  boxes[1].dispatchEvent(new Event("change"));
  assert.deepEqual(m.get("flagged"), [3, 8]);
  assert.equal(m.saves, saves + 1);
  assert.ok(q(el, "tracin-table-row")[1].classList.contains("is-flagged"));
  cleanup();
});

test("a pending reply shows a note; status ready refetches", () => {
  const m = new FakeModel({ status: "running" });
  const { el, cleanup } = openTable(m);
  m.reply({ kind: "rows", id: m.lastSent("rows").id, pending: true, total: 0, offset: 0, rows: [] });
  const note = q(el, "tracin-table-note")[0];
  assert.equal(note.hidden, false);
  assert.match(note.textContent, /being computed/);
  const n = m.sent.length;
  m.pyset("status", "ready");
  assert.ok(m.sent.length > n);
  assert.equal(m.lastSent("rows").kind, "rows");
  cleanup();
});

test("j/k move the focused row and f flags it", () => {
  const m = new FakeModel({ status: "ready", stats: { ready: true, has_preds: true, flags: {} } });
  const { el, cleanup } = openTable(m);
  m.reply(...rowsReply(m.lastSent("rows").id, [row(3), row(8)]));
  const root = q(el, "tracin-root")[0];
  const key = (k) => root.dispatchEvent(new KeyboardEvent("keydown", { key: k, bubbles: true }));
  key("j");
  key("j");
  key("f");
  assert.deepEqual(m.get("flagged"), [8]);
  key("k");
  key("f");
  assert.deepEqual(m.get("flagged"), [3, 8]);
  cleanup();
});

test("charts: histogram bars filter the table by score range; ROC AUC and flag summary are shown", () => {
  const m = new FakeModel({
    status: "ready",
    info: { n_train: 100, n_test: 0, has_truth: true, engine: "Fake", n_classes: 3 },
    stats: {
      ready: true,
      has_preds: true,
      histogram: { counts: [5, 3, 2], edges: [0, 1, 2, 3], log: false },
      roc: { fpr: [0, 0.5, 1], tpr: [0, 0.9, 1], auc: 0.875 },
      found: { inspected: [0, 0.5, 1], found: [0, 0.8, 1] },
      flags: {
        n_flagged: 4,
        n_train: 100,
        n_mislabelled: 10,
        true_positives: 3,
        precision: 0.75,
        recall: 0.3,
        inspected: 0.04,
      },
    },
  });
  const { el, cleanup } = openTable(m);
  assert.equal(q(el, "tracin-auc")[0].textContent, "AUC 0.875");
  assert.match(q(el, "tracin-flag-summary")[0].textContent, /4 flagged of 100 · precision 75% · recall 30% \(3\/10\)/);
  assert.equal(q(el, "tracin-found-flags").length, 1);
  const hist = q(el, "tracin-histogram")[0];
  hist.querySelectorAll(".tracin-hit")[1].dispatchEvent(new Event("click"));
  assert.deepEqual(m.lastSent("rows").score_range, [1, 2]);
  assert.ok(q(el, "tracin-histogram")[0].querySelectorAll(".tracin-bar")[1].classList.contains("is-selected"));
  assert.equal(q(el, "tracin-only-filter")[0].querySelectorAll("option").length, 6); // includes "mislabelled (truth)"
  cleanup();
});
