import assert from "node:assert/strict";
import { test } from "node:test";
import { flagsCSV, flagsJSON } from "../src/export.js";
import { render } from "../src/index.js";
import { FakeModel, mount, q } from "./setup.mjs";

// What tracin_widgets/widget/_flags.dumps writes for [3, 7, 10] and for [] (explorer.export_flagged's files).
const PY_JSON = "[3, 7, 10]\n",
  PY_CSV = "index\n3\n7\n10\n";

test("file contents are those of Python's export_flagged (JSON list, CSV index column)", () => {
  assert.equal(flagsJSON([3, 7, 10]), PY_JSON);
  assert.equal(flagsCSV([3, 7, 10]), PY_CSV);
  assert.equal(flagsJSON([10, 3, 7, 3]), PY_JSON); // sorted and unique, as Python normalises flags
  assert.equal(flagsJSON([]), "[]\n");
  assert.equal(flagsCSV([]), "index\n");
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

test("export buttons download flagged.json / flagged.csv; disabled with a reason while nothing is flagged", async () => {
  const m = new FakeModel({ status: "ready", stats: { ready: true, has_preds: true, flags: {} } });
  const { el, cleanup } = mount(render, m);
  const [json] = q(el, "tracin-export-json");
  const [csv] = q(el, "tracin-export-csv");
  assert.ok(json && csv);
  assert.ok(json.disabled && csv.disabled);
  assert.match(json.title, /Nothing is flagged/);
  const cap = captureDownloads();
  try {
    json.click(); // disabled: nothing happens
    m.pyset("flagged", [3, 7, 10]);
    assert.ok(!json.disabled && !csv.disabled);
    assert.match(csv.title, /3 flagged indices as flagged\.csv/);
    json.click();
    csv.click();
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
  assert.ok(json.disabled && csv.disabled);
  cleanup();
});
