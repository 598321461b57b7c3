// Tabs and the view trait, the explorer without a test set, the strip's page size, keys on the focused tile or row.
import assert from "node:assert/strict";
import { test } from "node:test";
import { render } from "../src/index.js";
import { FakeModel, img, mount, q, row } from "./setup.mjs";

const NO_TEST = { n_train: 100, n_test: 0, has_truth: false, engine: "Fake", n_classes: 3 };

function strip(items, extra = {}) {
  return { page: 0, n_pages: 4, total: 48, page_size: 12, filtered: false, has_preds: true, items, ...extra };
}

function rowsReply(id, rows, total = 120, offset = 0) {
  const buffers = [];
  const packed = rows.map((r) => {
    buffers.push(img().data);
    return { ...r, image: { buffer: buffers.length - 1, shape: [2, 2, 1] } };
  });
  return [{ kind: "rows", id, pending: false, total, offset, rows: packed }, buffers];
}

const key = (target, k) => target.dispatchEvent(new KeyboardEvent("keydown", { key: k, bubbles: true }));
const shown = (el) => !el.hidden && !el.closest("[hidden]");

test("tabs: role=tab with aria-selected and testids tracin-tab-test / -ranking, the one set of tab names", () => {
  const m = new FakeModel();
  const { el, cleanup } = mount(render, m);
  const [tabTest] = q(el, "tracin-tab-test");
  const [tabRanking] = q(el, "tracin-tab-ranking");
  assert.equal(tabTest.getAttribute("role"), "tab");
  assert.equal(tabRanking.getAttribute("role"), "tab");
  for (const old of ["tracin-tab-explore", "tracin-tab-table", "tracin-pane-explore", "tracin-pane-table"]) {
    assert.equal(q(el, old).length, 0, old);
  }
  assert.equal(tabTest.getAttribute("aria-selected"), "true");
  assert.equal(tabRanking.getAttribute("aria-selected"), "false");
  const saves = m.saves;
  tabRanking.querySelector("span").click(); // the label: the click reaches its tab
  assert.equal(tabRanking.getAttribute("aria-selected"), "true");
  assert.equal(tabTest.getAttribute("aria-selected"), "false");
  assert.equal(m.get("view"), "ranking");
  assert.equal(m.saves, saves + 1);
  assert.ok(shown(q(el, "tracin-pane-ranking")[0]));
  m.pyset("view", "test"); // Python switches the tab
  assert.equal(tabTest.getAttribute("aria-selected"), "true");
  assert.ok(shown(q(el, "tracin-pane-test")[0]));
  assert.ok(!shown(q(el, "tracin-pane-ranking")[0]));
  cleanup();
});

test("view='ranking' opens on the ranking", () => {
  const m = new FakeModel({ view: "ranking", test_strip: strip([row(1)]) });
  const { el, cleanup } = mount(render, m);
  assert.equal(q(el, "tracin-tab-ranking")[0].getAttribute("aria-selected"), "true");
  assert.ok(shown(q(el, "tracin-pane-ranking")[0]));
  assert.ok(m.lastSent("rows"), "the ranking asks for its rows");
  cleanup();
});

test("no test set: ranking first, no strip or misclassified filter, a note says how to explain a training example", () => {
  const m = new FakeModel({ info: NO_TEST, view: "ranking", test_strip: strip([], { total: 0, n_pages: 1 }) });
  const { el, cleanup } = mount(render, m);
  assert.equal(q(el, "tracin-tab-ranking")[0].getAttribute("aria-selected"), "true");
  q(el, "tracin-tab-test")[0].click();
  assert.equal(m.get("view"), "test");
  assert.ok(!shown(q(el, "tracin-misclassified-filter")[0]));
  assert.ok(!shown(q(el, "tracin-test-prev")[0]));
  assert.ok(!shown(el.querySelector(".tracin-strip")));
  assert.ok(!shown(el.querySelector(".tracin-gallery")));
  const note = q(el, "tracin-no-test-note")[0];
  assert.ok(shown(note));
  assert.match(note.textContent, /No test set/);
  assert.match(note.textContent, /Show its proponents/);
  assert.doesNotMatch(q(el, "tracin-tab-test")[0].textContent, /Test predictions/);
  q(el, "tracin-goto-ranking")[0].click();
  assert.equal(q(el, "tracin-tab-ranking")[0].getAttribute("aria-selected"), "true");

  // The path: a row -> its details -> "Show its proponents" -> the galleries of that training example.
  const req = m.lastSent("rows");
  m.reply(...rowsReply(req.id, [row(5), row(9)]));
  q(el, "tracin-table-row")[1].click();
  const d = m.lastSent("detail");
  assert.equal(d.index, 9);
  m.reply({ kind: "detail", id: d.id, item: { ...row(9), image: { buffer: 0, shape: [2, 2, 1] } } }, [img().data]);
  q(el, "tracin-walk")[0].click();
  assert.deepEqual(m.get("query"), { source: "train", index: 9 });
  assert.equal(m.get("view"), "test");
  assert.equal(q(el, "tracin-tab-test")[0].getAttribute("aria-selected"), "true");
  assert.ok(shown(el.querySelector(".tracin-gallery")));
  assert.ok(!shown(note));
  assert.match(q(el, "tracin-query")[0].textContent, /Training #9/);
  cleanup();
});

test("the strip asks for as many tiles as fit its width, keeping the selected test example on the page", async () => {
  const observers = [];
  const saved = globalThis.ResizeObserver;
  globalThis.ResizeObserver = class {
    constructor(cb) {
      this.cb = cb;
      this.disconnected = false;
      observers.push(this);
    }
    observe(target) {
      this.target = target;
    }
    disconnect() {
      this.disconnected = true;
    }
  };
  try {
    // 24 per page, page 1, the selected one is the 4th of that page: position 27 overall
    const items = [20, 21, 22, 23].map((i) => row(i));
    const m = new FakeModel({
      test_page_size: 24,
      test_page: 1,
      selected_test: 23,
      test_strip: strip(items, { page: 1, n_pages: 2, page_size: 24 }),
    });
    const { cleanup } = mount(render, m);
    assert.equal(observers.length, 1);
    assert.ok(observers[0].target.classList.contains("tracin-strip-items"));
    const resize = (width) => observers[0].cb([{ contentRect: { width } }]);
    resize(0); // hidden: nothing asked
    await new Promise((r) => setTimeout(r, 100));
    assert.equal(m.get("test_page_size"), 24);
    resize(900); // 76 px tiles, 6 px gaps: (900 + 6) / 82 -> 11 whole tiles
    await new Promise((r) => setTimeout(r, 100));
    assert.equal(m.get("test_page_size"), 11);
    assert.equal(m.get("test_page"), 2); // position 27 is on page 2 of 11-tile pages
    cleanup();
    assert.ok(observers[0].disconnected);
  } finally {
    globalThis.ResizeObserver = saved;
  }
});

test("f flags the focused tile, not the example open in the details panel", () => {
  const q0 = { source: "test", index: 3 };
  const m = new FakeModel({
    query: q0,
    gallery: { query: q0, k: 10, item: row(3), proponents: [row(10), row(11)], opponents: [], error: null },
  });
  const { el, cleanup } = mount(render, m);
  q(el, "tracin-proponent")[0].click(); // details of 10 open
  assert.equal(m.lastSent("detail").index, 10);
  const second = q(el, "tracin-proponent")[1];
  second.focus();
  key(second, "f");
  assert.deepEqual(m.get("flagged"), [11]);
  key(second, "u");
  assert.equal(m.lastSent("undo").kind, "undo");
  cleanup();
});

test("arrows on a focused gallery tile move between tiles, never the test selection", () => {
  const q0 = { source: "test", index: 3 };
  const pros = [10, 11, 12, 13, 14, 15, 16].map((i) => row(i));
  const m = new FakeModel({
    selected_test: 3,
    test_strip: strip([row(3), row(4)]),
    query: q0,
    gallery: { query: q0, k: 10, item: row(3), proponents: pros, opponents: [row(20)], error: null },
  });
  const { el, cleanup } = mount(render, m);
  const tiles = q(el, "tracin-proponent");
  tiles[0].focus();
  key(tiles[0], "ArrowRight");
  assert.equal(document.activeElement, tiles[1]);
  key(tiles[1], "ArrowDown"); // one row of five down
  assert.equal(document.activeElement, tiles[6]);
  key(tiles[6], "k");
  assert.equal(document.activeElement, tiles[5]);
  key(tiles[5], "ArrowDown"); // no tile below: stays
  assert.equal(document.activeElement, tiles[5]);
  assert.equal(m.get("selected_test"), 3);
  const items = q(el, "tracin-test-item");
  items[0].focus();
  key(items[0], "ArrowRight"); // on the strip the arrows move the test selection
  assert.equal(m.get("selected_test"), 4);
  cleanup();
});

test("keys on a focused table row: arrows move rows, f flags that row", () => {
  const m = new FakeModel({ view: "ranking", status: "ready", stats: { ready: true, has_preds: true, flags: {} } });
  const { el, cleanup } = mount(render, m);
  const req = m.lastSent("rows");
  m.reply(...rowsReply(req.id, [row(5), row(9), row(13)]));
  const rows = q(el, "tracin-table-row");
  rows[2].focus(); // e.g. focused by a click or the tab key; the table's own focus is still the first row
  key(rows[2], "ArrowUp");
  assert.equal(document.activeElement, q(el, "tracin-table-row")[1]);
  key(document.activeElement, "f");
  assert.deepEqual(m.get("flagged"), [9]);
  cleanup();
});

test("the help lists the keys of each view; j / k once, with one meaning", () => {
  const m = new FakeModel();
  const { el, cleanup } = mount(render, m);
  const help = q(el, "tracin-help")[0];
  const keys = [...help.querySelectorAll("kbd")].map((k) => k.textContent);
  assert.equal(keys.filter((k) => /\bj\b/.test(k)).length, 1);
  assert.equal(keys.filter((k) => /\bk\b/.test(k)).length, 1);
  for (const v of ["test", "ranking", "all"]) assert.equal(q(el, `tracin-help-${v}`).length, 1);
  assert.match(q(el, "tracin-help-ranking")[0].textContent, /previous \/ next row/);
  assert.match(q(el, "tracin-help-test")[0].textContent, /test example/);
  assert.match(q(el, "tracin-help-all")[0].textContent, /focused tile or row/);
  cleanup();
});
