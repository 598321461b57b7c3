// The review loop in the ranking: the suggested-label column, relabels in the table, bulk flags ("flag all shown",
// this page, shift-click ranges), the histogram brush and the "where to stop" divider and marker.
import assert from "node:assert/strict";
import { test } from "node:test";
import { rangeIndices, shiftRange } from "../src/bulk.js";
import { binSelected, binsRange } from "../src/histogram.js";
import { render } from "../src/index.js";
import { dividerAt, dividerText } from "../src/tablerows.js";
import { FakeModel, mount, q, row, rowsReply } from "./setup.mjs";

const NAMES = ["benign", "malignant", "unknown"];
const BADGE = "the checkpoints' average prediction is malignant (p̄ 0.71), not its label benign (p̄ 0.12)";

function ready(extra = {}) {
  return {
    status: "ready",
    view: "ranking",
    class_names: NAMES,
    info: { n_train: 120, n_test: 0, has_truth: false, engine: "Fake", n_classes: 3 },
    stats: {
      ready: true,
      has_preds: true,
      histogram: { counts: [5, 3, 2, 1, 4], edges: [0, 1, 2, 4, 8, 16], log: false },
      flags: { n_flagged: 0, n_train: 120 },
    },
    ...extra,
  };
}

/** The ranking with rows (ranks 1..n by default) on screen. */
function openWith(m, rows, total = 120, offset = 0) {
  const mounted = mount(render, m);
  m.reply(...rowsReply(m.lastSent("rows").id, rows, total, offset));
  return mounted;
}

const ranked = (n, from = 0) => Array.from({ length: n }, (_, i) => row(from + i, { rank: from + i + 1 }));
const click = (el, opts = {}) => el.dispatchEvent(new MouseEvent("click", { bubbles: true, ...opts }));

test("the table shows the suggested label (title: the badge text) and the relabel as given → new", () => {
  const m = new FakeModel(ready({ relabels: { 7: 2 } }));
  const { el, cleanup } = openWith(m, [
    row(5, { label: 0, suggested: 1, badge: BADGE }),
    row(7, { label: 1, suggested: null, new_label: 2 }),
  ]);
  const cells = q(el, "tracin-suggested-label");
  assert.equal(cells.length, 2);
  assert.equal(cells[0].textContent, "malignant");
  assert.equal(cells[0].dataset.suggested, "1");
  assert.equal(cells[0].querySelector(".tracin-name").title, BADGE);
  assert.equal(cells[1].textContent, "");
  assert.equal(cells[1].dataset.suggested, "");
  const rows = q(el, "tracin-table-row");
  assert.equal(rows[1].querySelector(".tracin-col-label").textContent, "malignant → unknown");
  assert.equal(q(el, "tracin-new-label").length, 1);
  // class names never wrap mid-word: one line, ellipsis, full name in the title
  const name = rows[0].querySelector(".tracin-col-label .tracin-name");
  assert.equal(name.title, "benign");
  m.pyset("relabels", {}); // undone in Python: the table follows
  assert.equal(q(el, "tracin-new-label").length, 0);
  cleanup();
});

test("the suggested column sorts; the filter offers rows with a suggestion and relabelled rows", () => {
  const m = new FakeModel(ready());
  const { el, cleanup } = openWith(m, ranked(3));
  q(el, "tracin-sort-suggested")[0].click();
  assert.equal(m.lastSent("rows").sort, "suggested");
  const only = q(el, "tracin-only-filter")[0];
  const values = [...only.options].map((o) => o.value);
  assert.ok(values.includes("suggested") && values.includes("relabelled"), values);
  only.value = "suggested";
  only.dispatchEvent(new Event("change"));
  assert.equal(m.lastSent("rows").only, "suggested");
  only.value = "relabelled";
  only.dispatchEvent(new Event("change"));
  const n = m.sent.length;
  m.pyset("relabels", { 3: 1 }); // a relabel changes which rows the "relabelled" filter shows
  assert.equal(m.sent.length, n + 1);
  assert.equal(m.lastSent("rows").only, "relabelled");
  cleanup();
});

test("flag all shown sends bulk_flag with the table's filter and no window; this page sends its window", () => {
  const m = new FakeModel(ready());
  const { el, cleanup } = openWith(m, ranked(50), 120);
  const only = q(el, "tracin-only-filter")[0];
  only.value = "disagree";
  only.dispatchEvent(new Event("change"));
  m.reply(...rowsReply(m.lastSent("rows").id, ranked(50), 77));
  const all = q(el, "tracin-bulk-flag")[0];
  assert.match(all.textContent, /Flag all 77 shown/);
  all.click();
  const req = m.lastSent("bulk_flag");
  assert.deepEqual(req.filter, { sort: "rank", descending: false, label: null, only: "disagree", score_range: null });
  assert.equal(req.offset, null);
  assert.equal(req.limit, null);
  assert.equal(req.flag, true);
  assert.ok(req.id);
  q(el, "tracin-table-next")[0].click();
  m.reply(...rowsReply(m.lastSent("rows").id, ranked(27, 50), 77, 50));
  q(el, "tracin-bulk-flag-page")[0].click();
  const page = m.lastSent("bulk_flag");
  assert.equal(page.offset, 50);
  assert.equal(page.limit, 50);
  m.reply({ kind: "bulk_flag", id: page.id, count: 27 });
  assert.match(q(el, "tracin-live")[0].textContent, /Flagged 27 training examples/);
  cleanup();
});

test("with the flagged filter the bulk buttons unflag; no rows: disabled", () => {
  const m = new FakeModel(ready({ flagged: [1, 2] }));
  const { el, cleanup } = openWith(m, ranked(2));
  const only = q(el, "tracin-only-filter")[0];
  only.value = "flagged";
  only.dispatchEvent(new Event("change"));
  m.reply(...rowsReply(m.lastSent("rows").id, [], 0));
  assert.equal(q(el, "tracin-bulk-flag")[0].disabled, true);
  m.reply(...rowsReply(m.lastSent("rows").id, ranked(2, 1), 2));
  const all = q(el, "tracin-bulk-flag")[0];
  assert.match(all.textContent, /Unflag all 2 shown/);
  all.click();
  assert.equal(m.lastSent("bulk_flag").flag, false);
  assert.equal(m.lastSent("bulk_flag").filter.only, "flagged");
  cleanup();
});

test("shift-click flags the rows from the last one clicked, in one flagged write; again: unflags them", () => {
  assert.deepEqual(rangeIndices([{ index: 4 }, { index: 9 }, { index: 2 }], 2, 0), [4, 9, 2]);
  const m = new FakeModel(ready());
  const { el, cleanup } = openWith(m, ranked(8));
  const rows = () => q(el, "tracin-table-row");
  click(rows()[1]); // the anchor (opens its details)
  assert.equal(m.lastSent("detail").index, 1);
  const saves = m.saves;
  const details = m.sent.length;
  click(rows()[4], { shiftKey: true });
  assert.deepEqual(m.get("flagged"), [1, 2, 3, 4]);
  assert.equal(m.saves, saves + 1); // one write
  assert.equal(m.sent.length, details); // a range click opens nothing
  assert.ok(rows()[3].classList.contains("is-flagged"));
  click(rows()[4], { shiftKey: true }); // every row of the range flagged: the range is unflagged
  assert.deepEqual(m.get("flagged"), []);
  assert.deepEqual(shiftRange(m, ranked(8), 6, 2).indices, [2, 3, 4, 5, 6]);
  assert.deepEqual(shiftRange(m, ranked(8), 99, 2).indices, [2]); // an anchor off this page: the row alone
  cleanup();
});

test("shift-click on a flag box gives the range that box's new state", () => {
  const m = new FakeModel(ready({ flagged: [2, 3, 4] }));
  const { el, cleanup } = openWith(m, ranked(6));
  const boxes = () => q(el, "tracin-row-flag");
  boxes()[1].click(); // the anchor: flags row 1 alone
  assert.deepEqual(m.get("flagged"), [1, 2, 3, 4]);
  const saves = m.saves;
  boxes()[5].click(); // not shift: row 5 alone
  assert.deepEqual(m.get("flagged"), [1, 2, 3, 4, 5]);
  boxes()[3].dispatchEvent(new MouseEvent("click", { bubbles: true, shiftKey: true })); // checked -> unchecked
  assert.deepEqual(m.get("flagged"), [1, 2]); // rows 3..5 take the box's state (unflagged), in one write
  assert.equal(m.saves, saves + 2);
  cleanup();
});

test("the histogram brush: drag across bars → the table asks for exactly that score range; a chip clears it", () => {
  assert.deepEqual(binsRange([0, 1, 2, 4], 2, 0), [0, 4]);
  assert.ok(binSelected([0, 1, 2, 4], 1, [1, 4]));
  assert.ok(!binSelected([0, 1, 2, 4], 0, [1, 4]));
  const m = new FakeModel(ready());
  const { el, cleanup } = openWith(m, ranked(3));
  const hits = () => q(el, "tracin-histogram")[0].querySelectorAll(".tracin-hit");
  const fire = (node, type) => node.dispatchEvent(new Event(type, { bubbles: true }));
  fire(hits()[1], "pointerdown");
  fire(hits()[2], "pointermove");
  fire(hits()[3], "pointermove");
  const bars = q(el, "tracin-histogram")[0].querySelectorAll(".tracin-bar");
  assert.deepEqual(
    [...bars].map((b) => b.classList.contains("is-selected")),
    [false, true, true, true, false],
  ); // drawn while dragging
  fire(hits()[3], "pointerup");
  fire(hits()[3], "click"); // the click that ends a drag picks nothing more
  const req = m.lastSent("rows");
  assert.deepEqual(req.score_range, [1, 8]);
  assert.equal(req.offset, 0);
  const selected = [...q(el, "tracin-histogram")[0].querySelectorAll(".tracin-bar")].map((b) =>
    b.classList.contains("is-selected"),
  );
  assert.deepEqual(selected, [false, true, true, true, false]);
  assert.equal(q(el, "tracin-brush")[0].getAttribute("visibility"), "visible");
  m.reply(...rowsReply(req.id, ranked(3), 6));
  const chip = q(el, "tracin-table-range")[0];
  assert.ok(!chip.hidden);
  assert.equal(chip.textContent, "self-influence 1–8 ×");
  assert.match(q(el, "tracin-range-clear")[0].textContent, /1–8/);
  // flag all shown sends the brushed range
  q(el, "tracin-bulk-flag")[0].click();
  assert.deepEqual(m.lastSent("bulk_flag").filter.score_range, [1, 8]);
  chip.click();
  assert.equal(m.lastSent("rows").score_range, null);
  assert.equal(q(el, "tracin-range-clear").length, 0);
  // a click on one bar picks its bin; on it again clears
  hits()[0].dispatchEvent(new Event("click"));
  assert.deepEqual(m.lastSent("rows").score_range, [0, 1]);
  hits()[0].dispatchEvent(new Event("click"));
  assert.equal(m.lastSent("rows").score_range, null);
  cleanup();
});

test("where to stop: a divider row at the estimated rank, in rank order only", () => {
  assert.equal(dividerText(1437), "≈ 1,437 labels estimated wrong above this line");
  const r = (ranks) => ranks.map((k) => ({ rank: k }));
  assert.equal(dividerAt(r([1, 2, 3, 4]), 2, "rank", false), 2);
  assert.equal(dividerAt(r([1, 2, 3, 4]), 2, "score", true), 2);
  assert.equal(dividerAt(r([1, 2, 3, 4]), 2, "index", false), -1);
  assert.equal(dividerAt(r([1, 2, 3, 4]), 2, "rank", true), -1);
  assert.equal(dividerAt(r([51, 52]), 50, "rank", false), 0); // the page right after the line
  assert.equal(dividerAt(r([61, 62]), 50, "rank", false), -1);
  assert.equal(dividerAt(r([1, 2]), 9, "rank", false), -1);
  assert.equal(dividerAt(r([1, 2]), 0, "rank", false), -1);

  const m = new FakeModel(ready({ stats: { ...ready().stats, estimated_mislabelled: 3 } }));
  const { el, cleanup } = openWith(m, ranked(6));
  const tbody = el.querySelector(".tracin-table tbody");
  const divider = q(el, "tracin-estimate-divider");
  assert.equal(divider.length, 1);
  assert.equal(divider[0].textContent, "≈ 3 labels estimated wrong above this line");
  assert.equal([...tbody.children].indexOf(divider[0]), 3); // after ranks 1, 2, 3
  assert.equal(q(el, "tracin-table-row").length, 6); // the divider is not a row: keys and shift-click skip it
  q(el, "tracin-sort-index")[0].click();
  m.reply(...rowsReply(m.lastSent("rows").id, ranked(6)));
  assert.equal(q(el, "tracin-estimate-divider").length, 0);
  // the charts say it too, and "show the line" goes to its page in rank order, every filter off
  assert.match(q(el, "tracin-estimate")[0].textContent, /≈ 3 labels estimated wrong/);
  m.pyset("stats", { ...m.get("stats"), estimated_mislabelled: 75 });
  q(el, "tracin-goto-estimate")[0].click();
  const req = m.lastSent("rows");
  assert.equal(req.sort, "rank");
  assert.equal(req.descending, false);
  assert.equal(req.offset, 50);
  assert.equal(req.only, "all");
  m.reply(...rowsReply(req.id, ranked(50, 50), 120, 50));
  assert.equal([...tbody.children].indexOf(q(el, "tracin-estimate-divider")[0]), 25);
  cleanup();
});

test("the found-vs-inspected chart marks the estimate; the flags point sits off the axes", () => {
  const stats = {
    ...ready().stats,
    estimated_mislabelled: 30,
    found: { inspected: [0, 0.5, 1], found: [0, 0.9, 1] },
    flags: { n_flagged: 1, n_train: 120, n_mislabelled: 12, true_positives: 0, precision: 0, recall: 0, inspected: 0 },
  };
  const m = new FakeModel(ready({ info: { ...ready().info, has_truth: true }, stats }));
  const { el, cleanup } = openWith(m, ranked(3));
  const marker = q(el, "tracin-found-estimate")[0];
  assert.equal(Number(marker.getAttribute("data-x")), 0.25);
  assert.equal(q(el, "tracin-found-estimate-label")[0].textContent, "≈ 30 wrong");
  // the flags at (0, 0): the dot keeps clear of both axis lines
  const svg = q(el, "tracin-found")[0];
  const dot = q(el, "tracin-found-flags")[0];
  const [yAxis, xAxis] = [...svg.querySelectorAll(".tracin-axis")].sort(
    (a, b) => Number(a.getAttribute("x2")) - Number(b.getAttribute("x2")),
  );
  const cx = Number(dot.getAttribute("cx")),
    cy = Number(dot.getAttribute("cy")),
    r = Number(dot.getAttribute("r"));
  assert.ok(cx - r > Number(yAxis.getAttribute("x1")), "off the y axis");
  assert.ok(cy + r < Number(xAxis.getAttribute("y1")), "off the x axis");
  cleanup();
});
