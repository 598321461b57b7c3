import assert from "node:assert/strict";
import { test } from "node:test";
import "./setup.mjs";
import { aspectRatio, imageElement, resolveBuffers, toBytes, toRGBA } from "../src/codecs.js";
import { className, fmtDuration, fmtScore } from "../src/format.js";
import { Rpc } from "../src/rpc.js";
import { FakeModel } from "./setup.mjs";

test("toRGBA expands gray, RGB and RGBA", () => {
  assert.deepEqual([...toRGBA(new Uint8Array([7]), 1, 1, 1)], [7, 7, 7, 255]);
  assert.deepEqual([...toRGBA(new Uint8Array([1, 2, 3]), 1, 1, 3)], [1, 2, 3, 255]);
  assert.deepEqual([...toRGBA(new Uint8Array([1, 2, 3, 4]), 1, 1, 4)], [1, 2, 3, 4]);
  assert.throws(() => toRGBA(new Uint8Array([1]), 2, 2, 1), /too short/);
});

test("imageElement: canvas of the image's own size, CSS aspect ratio = width / height (never stretched)", () => {
  for (const [h, w, want] of [
    [8, 8, 1],
    [4, 16, 4],
    [32, 8, 0.25],
    [3, 7, 7 / 3],
  ]) {
    const c = imageElement({ data: new Uint8Array(h * w), shape: [h, w, 1] }, "tracin-img tracin-img-row", "x");
    assert.equal(c.tagName, "CANVAS");
    assert.equal(c.width, w);
    assert.equal(c.height, h);
    const ar = Number(c.style.getPropertyValue("--tracin-ar"));
    assert.ok(Math.abs(ar - want) < 1e-5, `${h}x${w}: --tracin-ar ${ar}, want ${want}`);
    assert.equal(c.getAttribute("role"), "img");
  }
  assert.equal(aspectRatio(0, 5), "1");
  const missing = imageElement(null, "tracin-img", "gone");
  assert.ok(missing.classList.contains("tracin-img-missing"));
});

test("toBytes accepts DataView (with offset), ArrayBuffer and typed arrays", () => {
  const buf = new Uint8Array([9, 8, 7, 6]).buffer;
  assert.deepEqual([...toBytes(new DataView(buf, 1, 2))], [8, 7]);
  assert.deepEqual([...toBytes(buf)], [9, 8, 7, 6]);
});

test("resolveBuffers swaps {buffer: i} refs for data", () => {
  const b0 = new DataView(new ArrayBuffer(1)),
    b1 = new DataView(new ArrayBuffer(2));
  const out = resolveBuffers(
    { rows: [{ image: { buffer: 1, shape: [1, 2, 1] } }, { image: { buffer: 0, shape: [1, 1, 1] } }] },
    [b0, b1],
  );
  assert.equal(out.rows[0].image.data, b1);
  assert.equal(out.rows[1].image.data, b0);
  assert.equal(out.rows[0].image.buffer, undefined);
});

test("formatting", () => {
  assert.equal(fmtScore(1234.5678), "1230");
  assert.equal(fmtScore(0.000012), "1.20e-5");
  assert.equal(fmtScore(null), "–");
  assert.equal(fmtDuration(3725), "1:02:05");
  assert.equal(fmtDuration(42), "0:42");
  assert.equal(className(["cat"], 0), "cat");
  assert.equal(className([], 3), "3");
});

test("rpc drops stale replies and unknown kinds", () => {
  const m = new FakeModel();
  const rpc = new Rpc(m);
  const got = [];
  rpc.on("rows", (msg) => got.push(msg.id));
  const a = rpc.request("rows", {});
  const b = rpc.request("rows", {});
  m.reply({ kind: "rows", id: a });
  m.reply({ kind: "rows", id: b });
  m.reply({ kind: "nope", id: b });
  assert.deepEqual(got, [b]);
  rpc.dispose();
  assert.equal(m.count("msg:custom"), 0);
});

test("two views of one model never take each other's replies", () => {
  const m = new FakeModel();
  const a = new Rpc(m),
    b = new Rpc(m);
  const got = [];
  a.on("rows", () => got.push("a"));
  b.on("rows", () => got.push("b"));
  const ida = a.request("rows", {});
  b.request("rows", {});
  assert.notEqual(ida, m.sent[1].content.id);
  m.reply({ kind: "rows", id: ida });
  assert.deepEqual(got, ["a"]);
});
