// The details panel in the review: the suggested label, the relabel select (the `relabels` trait, string keys),
// "accept the suggestion" (button and `a`), the evidence by checkpoint (never an influence on a test example the
// user never chose in the ranking), the drawer at the clicked element's height, the help under its "?".
import assert from "node:assert/strict";
import { test } from "node:test";
import { statusLine } from "../src/gallery.js";
import { render } from "../src/index.js";
import { Rpc } from "../src/rpc.js";
import { FakeModel, mount, q, row, rowsReply } from "./setup.mjs";

const NAMES = ["benign", "malignant", "unknown"];
const BADGE = "the checkpoints' average prediction is malignant (p̄ 0.71), not its label benign (p̄ 0.12)";
const EVIDENCE = {
  checkpoints: ["checkpoint-0.pt", "checkpoint-1.pt", "checkpoint-2.pt"],
  given: [0.4, 0.2, 0.1],
  suggested: [0.5, 0.7, 0.85],
  self_influence: [3.5, 1.25, 0.5],
};

function ranking(extra = {}) {
  return {
    status: "ready",
    view: "ranking",
    class_names: NAMES,
    info: { n_train: 120, n_test: 4, has_truth: false, engine: "Fake", n_classes: 3 },
    stats: { ready: true, has_preds: true, flags: { n_flagged: 0, n_train: 120 } },
    ...extra,
  };
}

const suspect = (extra = {}) => row(5, { label: 0, pred: 1, suggested: 1, badge: BADGE, ...extra });

/** The ranking with rows, the first one's details open (its detail reply fed). */
function openDetails(m, item = suspect({ evidence: EVIDENCE })) {
  const mounted = mount(render, m);
  m.reply(...rowsReply(m.lastSent("rows").id, [suspect(), row(6, { suggested: null })]));
  q(mounted.el, "tracin-table-row")
    .find((tr) => Number(tr.dataset.index) === item.index)
    .click();
  m.reply({ kind: "detail", id: m.lastSent("detail").id, item: { ...item, image: null } });
  return mounted;
}

const key = (target, k) => target.dispatchEvent(new KeyboardEvent("keydown", { key: k, bubbles: true }));

test("details show the suggested label with what was measured, and a relabel select of the class names", () => {
  const m = new FakeModel(ranking());
  const { el, cleanup } = openDetails(m);
  const details = q(el, "tracin-details")[0];
  const sugg = details.querySelector('[data-testid="tracin-suggested-label"]');
  assert.equal(sugg.textContent, "malignant");
  assert.equal(sugg.title, BADGE);
  assert.equal(q(el, "tracin-details-badge")[0].textContent, BADGE);
  const select = q(el, "tracin-relabel")[0];
  assert.deepEqual(
    [...select.options].map((o) => [o.value, o.textContent]),
    [
      ["", "keep benign"],
      ["1", "malignant (suggested)"],
      ["2", "unknown"],
    ],
  );
  assert.equal(select.value, "");
  const saves = m.saves;
  select.value = "2";
  select.dispatchEvent(new Event("change"));
  assert.deepEqual(m.get("relabels"), { 5: 2 });
  assert.deepEqual(Object.keys(m.get("relabels")), ["5"]); // string keys, as JSON carries them
  assert.equal(m.saves, saves + 1);
  assert.equal(q(el, "tracin-relabel")[0].value, "2"); // re-rendered from the trait
  assert.equal(details.querySelector(".tracin-new-label").textContent, "unknown");
  // the table shows it too
  assert.equal(q(el, "tracin-table-row")[0].querySelector(".tracin-col-label").textContent, "benign → unknown");
  const again = q(el, "tracin-relabel")[0];
  again.value = "";
  again.dispatchEvent(new Event("change")); // keep the label: the relabel goes
  assert.deepEqual(m.get("relabels"), {});
  cleanup();
});

test("accept the suggestion: the button, `a` in the details, `a` on a focused row", () => {
  const m = new FakeModel(ranking({ relabels: { 9: 0 } }));
  const { el, cleanup } = openDetails(m);
  const accept = q(el, "tracin-accept-suggestion")[0];
  assert.equal(accept.textContent, "Accept malignant (a)");
  accept.click();
  assert.deepEqual(m.get("relabels"), { 5: 1, 9: 0 });
  assert.equal(q(el, "tracin-accept-suggestion")[0].disabled, true);
  assert.match(q(el, "tracin-live")[0].textContent, /Relabelled training example 5 as malignant/);
  m.pyset("relabels", { 9: 0 }); // undone in Python
  const root = q(el, "tracin-root")[0];
  key(root, "a"); // no focused row: the example in the details
  assert.deepEqual(m.get("relabels"), { 5: 1, 9: 0 });
  m.pyset("relabels", {});
  const tr = q(el, "tracin-table-row")[0];
  tr.focus();
  key(tr, "a");
  assert.deepEqual(m.get("relabels"), { 5: 1 });
  const other = q(el, "tracin-table-row")[1]; // no suggestion: nothing written, the live region says so
  other.focus();
  key(other, "a");
  assert.deepEqual(m.get("relabels"), { 5: 1 });
  assert.match(q(el, "tracin-live")[0].textContent, /6 has no suggested label/);
  cleanup();
});

test("ranking details show the row's own evidence by checkpoint, never an influence on a test example", () => {
  const q0 = { source: "test", index: 0 };
  const gallery = {
    query: q0,
    k: 10,
    request: 1,
    item: row(0),
    proponents: [row(5)],
    opponents: [],
    error: null,
    explain: "label",
    explained_label: 0,
    same_label: true,
  };
  const m = new FakeModel(ranking({ query: q0, gallery }));
  const { el, cleanup } = openDetails(m);
  assert.equal(m.lastSent("contributions"), undefined);
  assert.doesNotMatch(q(el, "tracin-details")[0].textContent, /Influence on test/);
  const ev = q(el, "tracin-evidence")[0];
  assert.match(ev.textContent, /When was it memorised\? Self-influence by checkpoint/);
  const bars = q(el, "tracin-evidence-self");
  assert.deepEqual(
    bars.map((b) => [b.dataset.checkpoint, Number(b.dataset.value)]),
    EVIDENCE.checkpoints.map((c, i) => [c, EVIDENCE.self_influence[i]]),
  );
  assert.equal(bars[0].querySelector(".tracin-ebar-fill").style.width, "100.00%"); // scaled to the largest
  const probs = q(el, "tracin-evidence-prob");
  assert.deepEqual(
    probs.map((p) => [Number(p.dataset.given), Number(p.dataset.suggested)]),
    EVIDENCE.given.map((g, i) => [g, EVIDENCE.suggested[i]]),
  );
  assert.match(probs[2].title, /p\(benign\) 10%, p\(malignant\) 85%/);
  // on the test tab the breakdown on the galleries' query comes back
  q(el, "tracin-tab-test")[0].click();
  assert.equal(m.lastSent("contributions").index, 5);
  q(el, "tracin-tab-ranking")[0].click();
  assert.equal(q(el, "tracin-breakdown")[0].children.length, 0);
  cleanup();
});

test("no evidence (a test row, unknown): no evidence section; no suggestion: 'none' and no accept button", () => {
  const m = new FakeModel(ranking());
  const { el, cleanup } = openDetails(m, row(6, { suggested: null, badge: null }));
  assert.equal(q(el, "tracin-evidence").length, 0);
  const sugg = q(el, "tracin-details")[0].querySelector('[data-testid="tracin-suggested-label"]');
  assert.equal(sugg.textContent, "none");
  assert.equal(q(el, "tracin-accept-suggestion").length, 0);
  cleanup();
});

test("a narrow widget's details drawer opens at the height of the row clicked", () => {
  const style = document.createElement("style");
  style.textContent = ".tracin-details { position: absolute; }"; // what the container query gives narrow widgets
  document.head.append(style);
  try {
    const m = new FakeModel(ranking());
    const { el, cleanup } = mount(render, m);
    m.reply(...rowsReply(m.lastSent("rows").id, [suspect(), row(6)]));
    const body = el.querySelector(".tracin-body");
    const main = el.querySelector(".tracin-main");
    const tr = q(el, "tracin-table-row")[1];
    body.getBoundingClientRect = () => ({ top: 100, bottom: 1100, left: 0, right: 600, height: 1000, width: 600 });
    tr.getBoundingClientRect = () => ({ top: 520, bottom: 540, left: 0, right: 600, height: 20, width: 600 });
    Object.defineProperty(main, "offsetHeight", { value: 1000 });
    const details = q(el, "tracin-details")[0];
    Object.defineProperty(details, "offsetHeight", { value: 300 });
    tr.click();
    assert.equal(details.style.getPropertyValue("--tracin-drawer-top"), "420px");
    assert.equal(body.style.getPropertyValue("--tracin-drawer-bottom"), "720px");
    // near the bottom: it stays within the content beside it
    tr.getBoundingClientRect = () => ({ top: 1000, bottom: 1020, left: 0, right: 600, height: 20, width: 600 });
    tr.click();
    assert.equal(details.style.getPropertyValue("--tracin-drawer-top"), "700px");
    assert.ok(!details.classList.contains("is-left")); // a row: the drawer at the right edge
    // a click on the right-hand side (the last opponent): the drawer docks left, the tile stays in sight
    tr.getBoundingClientRect = () => ({ top: 520, bottom: 540, left: 500, right: 580, height: 20, width: 80 });
    tr.click();
    assert.ok(details.classList.contains("is-left"));
    cleanup();
  } finally {
    style.remove();
  }
});

test("the help opens under its ? button, never over it", () => {
  const m = new FakeModel(ranking());
  const { el, cleanup } = mount(render, m);
  const root = q(el, "tracin-root")[0];
  const button = q(el, "tracin-help-button")[0];
  root.getBoundingClientRect = () => ({ top: 50, bottom: 900, left: 0, right: 600, height: 850, width: 600 });
  button.getBoundingClientRect = () => ({ top: 120, bottom: 144, left: 560, right: 584, height: 24, width: 24 });
  button.click();
  const help = q(el, "tracin-help")[0];
  assert.equal(help.hidden, false);
  assert.equal(help.style.top, "100px"); // 144 - 50 + 6
  assert.ok(help.textContent.includes("accept the suggested label"));
  cleanup();
});

test("the galleries' status line cannot be read as a label; badge tooltips are the badge text", () => {
  assert.equal(statusLine("test #0", [row(1), row(2)]), "test #0");
  assert.equal(
    statusLine("test #0", [row(1, { badge: BADGE }), row(2), row(3, { badge: BADGE })]),
    "test #0 · 2 of 3 tiles: ! a suggested label",
  );
  const q0 = { source: "test", index: 0 };
  const m = new FakeModel({
    class_names: NAMES,
    relabels: { 11: 2 },
    query: q0,
    gallery: {
      query: q0,
      k: 10,
      request: 1,
      item: row(0),
      proponents: [row(10), row(11, { label: 0, suggested: 1, badge: BADGE })],
      opponents: [],
      error: null,
      explain: "label",
      explained_label: 0,
      same_label: true,
    },
  });
  const { el, cleanup } = mount(render, m);
  assert.equal(q(el, "tracin-gallery-status")[0].textContent, "test #0 · 1 of 2 tiles: ! a suggested label");
  assert.equal(q(el, "tracin-badge")[0].title, BADGE);
  const tile = q(el, "tracin-proponent")[1];
  const label = tile.querySelector(".tracin-tile-label");
  assert.equal(label.textContent, "benign→unknown"); // the tile shows the relabel
  assert.equal(label.title, "benign → unknown");
  tile.focus();
  key(tile, "a"); // accept on a focused tile
  assert.deepEqual(m.get("relabels"), { 11: 1 });
  cleanup();
});

test("Rpc.call: a one-off request whose reply never reaches the kind's handler nor makes its newest request stale", async () => {
  const m = new FakeModel();
  const rpc = new Rpc(m);
  const seen = [];
  rpc.on("rows", (msg) => seen.push(msg.id));
  const id = rpc.request("rows", {});
  const done = rpc.call("rows", { only: "flagged" });
  const callId = m.lastSent("rows").id;
  assert.notEqual(callId, id);
  m.reply({ kind: "rows", id: callId, rows: [1] });
  assert.deepEqual((await done).rows, [1]);
  m.reply({ kind: "rows", id, rows: [] });
  assert.deepEqual(seen, [id]); // the table's own request is still the newest
  const failed = rpc.call("rows", {});
  m.reply({ kind: "error", id: m.lastSent("rows").id, request: "rows", message: "boom" });
  await assert.rejects(failed, /boom/);
  rpc.dispose();
});
