import assert from "node:assert/strict";
import { test } from "node:test";
import { pyFloat, recordsCSV, recordsJSON } from "../src/export.js";
import { render } from "../src/index.js";
import { FakeModel, mount, q, row } from "./setup.mjs";

// What tracin_widgets/widget/_flags.dumps_records writes for these records (explorer.export_flagged's files),
// printed by Python's json / csv modules.
const RECORDS = [
  { index: 3, given_label: 1, suggested_label: 2, new_label: null, flagged: true, self_influence: 12.0 },
  { index: 7, given_label: 0, suggested_label: null, new_label: 2, flagged: false, self_influence: 1e-5 },
  { index: 10, given_label: 2, suggested_label: 0, new_label: 0, flagged: true, self_influence: 0.1 + 0.2 },
];
const PY_JSON =
  '[{"index": 3, "given_label": 1, "suggested_label": 2, "new_label": null, "flagged": true, "self_influence": 12.0}, ' +
  '{"index": 7, "given_label": 0, "suggested_label": null, "new_label": 2, "flagged": false, "self_influence": 1e-05}, ' +
  '{"index": 10, "given_label": 2, "suggested_label": 0, "new_label": 0, "flagged": true, "self_influence": 0.30000000000000004}]\n';
const PY_CSV =
  "index,given_label,suggested_label,new_label,flagged,self_influence\n3,1,2,,true,12.0\n7,0,,2,false,1e-05\n" +
  "10,2,0,0,true,0.30000000000000004\n";

test("file contents are those of Python's export_flagged (JSON records, CSV columns)", () => {
  assert.equal(recordsJSON(RECORDS), PY_JSON);
  assert.equal(recordsCSV(RECORDS), PY_CSV);
  assert.equal(recordsJSON([]), "[]\n");
  assert.equal(recordsCSV([]), "index,given_label,suggested_label,new_label,flagged,self_influence\n");
  // Python's repr of floats (python3 -c "print(repr(x))")
  const cases = [
    [12, "12.0"],
    [0.25, "0.25"],
    [1e-5, "1e-05"],
    [1.5e16, "1.5e+16"],
    [1e16, "1e+16"],
    [123456789012345.6, "123456789012345.6"],
    [0.0001, "0.0001"],
    [1e22, "1e+22"],
    [5e-324, "5e-324"],
    [-2.5, "-2.5"],
    [12345678000000, "12345678000000.0"],
  ];
  for (const [x, py] of cases) assert.equal(pyFloat(x), py, String(x));
});

/** Capture downloads: the Blob given to URL.createObjectURL and the clicked <a download>. */
function captureDownloads() {
  const got = [];
  const blobs = new Map();
  const orig = { create: URL.createObjectURL, revoke: URL.revokeObjectURL, click: HTMLAnchorElement.prototype.click };
  URL.createObjectURL = (blob) => {
    const url = `blob:test/${blobs.size}`;
    blobs.set(url, blob);
    return url;
  };
  URL.revokeObjectURL = () => {};
  HTMLAnchorElement.prototype.click = function () {
    got.push({ name: this.getAttribute("download"), blob: blobs.get(this.getAttribute("href")) });
  };
  const restore = () => {
    URL.createObjectURL = orig.create;
    URL.revokeObjectURL = orig.revoke;
    HTMLAnchorElement.prototype.click = orig.click;
  };
  return { got, restore };
}

/** Answer the export's one-off rows requests as Python would: the rows under `only`, by index. */
function answerRows(m, rowsOf) {
  const answered = new Set();
  return () => {
    for (const { content } of m.sent) {
      if (content.kind !== "rows" || answered.has(content.id) || content.sort !== "index") continue;
      answered.add(content.id);
      const rows = rowsOf(content.only);
      m.reply({ kind: "rows", id: content.id, pending: false, total: rows.length, offset: 0, rows });
    }
  };
}

test("export buttons download flagged.json / flagged.csv with the reviewed rows; disabled while none", async () => {
  const m = new FakeModel({ status: "ready", stats: { ready: true, has_preds: true, flags: {} } });
  const { el, cleanup } = mount(render, m);
  const [json] = q(el, "tracin-export-json");
  const [csv] = q(el, "tracin-export-csv");
  assert.ok(json && csv);
  assert.ok(json.disabled && csv.disabled);
  assert.match(json.title, /Nothing is flagged or relabelled/);
  const table = {
    3: row(3, { label: 1, suggested: 2, score: 12.0 }),
    7: row(7, { label: 0, suggested: null, new_label: 2, score: 1e-5 }),
    10: row(10, { label: 2, suggested: 0, new_label: 0, score: 0.1 + 0.2 }),
  };
  const cap = captureDownloads();
  const answer = answerRows(m, (only) =>
    only === "flagged" ? [table[3], table[10]] : only === "relabelled" ? [table[7], table[10]] : [],
  );
  const tick = () => new Promise((r) => setTimeout(r, 0));
  try {
    json.click(); // disabled: nothing happens
    m.pyset("flagged", [3, 10]);
    m.pyset("relabels", { 7: 2, 10: 0 });
    assert.ok(!json.disabled && !csv.disabled);
    assert.match(csv.title, /3 flagged or relabelled rows as flagged\.csv/);
    for (const b of [json, csv]) {
      b.click();
      for (let i = 0; i < 4; i++) {
        answer();
        await tick();
      }
    }
  } finally {
    cap.restore();
  }
  assert.deepEqual(
    cap.got.map((d) => d.name),
    ["flagged.json", "flagged.csv"],
  );
  assert.equal(await cap.got[0].blob.text(), PY_JSON);
  assert.equal(await cap.got[1].blob.text(), PY_CSV);
  assert.match(cap.got[0].blob.type, /^application\/json/);
  m.pyset("flagged", []);
  m.pyset("relabels", {});
  assert.ok(json.disabled && csv.disabled);
  cleanup();
});
