// Images over both paths: binary buffers (DataView), and base64 text for notebook hosts that drop binary buffers
// (their shapes arrive without bytes: the view shows a placeholder and asks the kernel, once, for base64).
import assert from "node:assert/strict";
import { test } from "node:test";
import "./setup.mjs";
import { DROPPED_TEXT, fromBase64, imageBytes, imageElement, imageTransport, imageTransports } from "../src/codecs.js";
import { render } from "../src/index.js";
import { FakeModel, img, mount, q, row } from "./setup.mjs";

const PIXELS = [0, 64, 128, 255]; // setup.mjs img(): 2x2 grayscale
const B64 = Buffer.from(PIXELS).toString("base64"); // what Python's base64.b64encode(img.tobytes()) sends
const b64img = () => ({ b64: B64, shape: [2, 2, 1] });
const dropped = () => ({ shape: [2, 2, 1] }); // ipywidgets removed `data` for a buffer the host never delivered

function strip(items) {
  return { page: 0, n_pages: 1, total: items.length, page_size: 24, filtered: false, has_preds: true, items };
}

/** Draw canvases through a fake 2d context (happy-dom has none): the RGBA pixels each canvas received. */
function withCanvas(fn) {
  const proto = HTMLCanvasElement.prototype;
  const original = proto.getContext;
  const drawn = new Map();
  proto.getContext = function getContext() {
    return {
      createImageData: (w, h) => ({ data: new Uint8ClampedArray(w * h * 4) }),
      putImageData: (data) => drawn.set(this, [...data.data]),
    };
  };
  try {
    fn(drawn);
  } finally {
    proto.getContext = original;
  }
}

test("imageTransport tells binary, base64, no image and a dropped buffer apart", () => {
  const bytes = new Uint8Array(PIXELS);
  assert.equal(imageTransport(img()), "binary"); // DataView
  assert.equal(imageTransport({ data: bytes.buffer, shape: [2, 2, 1] }), "binary"); // ArrayBuffer
  assert.equal(imageTransport({ data: bytes, shape: [2, 2, 1] }), "binary"); // typed array
  assert.equal(imageTransport(b64img()), "base64");
  assert.equal(imageTransport(null), "none");
  assert.equal(imageTransport(undefined), "none");
  assert.equal(imageTransport(dropped()), "dropped"); // the key removed
  assert.equal(imageTransport({ data: {}, shape: [2, 2, 1] }), "dropped"); // a DataView serialised as JSON
  assert.equal(imageTransport({ data: null, shape: [2, 2, 1] }), "dropped");
  assert.equal(imageTransport({ data: new DataView(new ArrayBuffer(0)), shape: [2, 2, 1] }), "dropped");
  assert.deepEqual([...imageTransports({ items: [{ image: img() }, { image: dropped() }, { image: null }] })].sort(), [
    "binary",
    "dropped",
    "none",
  ]);
});

test("both paths decode to the same bytes and draw the same pixels", () => {
  assert.deepEqual([...fromBase64(B64)], PIXELS);
  assert.deepEqual([...imageBytes(b64img())], [...imageBytes(img())]);
  assert.equal(imageBytes(dropped()), null);
  withCanvas((drawn) => {
    const binary = imageElement(img(), "tracin-img", "binary");
    const text = imageElement(b64img(), "tracin-img", "base64");
    for (const c of [binary, text]) {
      assert.equal(c.tagName, "CANVAS");
      assert.equal(c.width, 2);
      assert.equal(c.height, 2);
    }
    assert.deepEqual(drawn.get(text), drawn.get(binary));
    assert.deepEqual(drawn.get(binary), [0, 0, 0, 255, 64, 64, 64, 255, 128, 128, 128, 255, 255, 255, 255, 255]);
  });
});

test("a dropped image is a placeholder that says so in text; no image stays an empty placeholder", () => {
  const p = imageElement(dropped(), "tracin-img tracin-img-tile", "training example 4");
  assert.equal(p.tagName, "SPAN");
  assert.equal(p.dataset.testid, "tracin-img-dropped");
  assert.ok(p.classList.contains("tracin-img-missing") && p.classList.contains("tracin-img-dropped"));
  assert.equal(p.textContent, DROPPED_TEXT);
  assert.match(p.title, /dropped the image's binary data.*base64/);
  assert.match(p.getAttribute("aria-label"), /^training example 4: no image/);
  const none = imageElement(null, "tracin-img", "x");
  assert.equal(none.textContent, "");
  assert.ok(!none.classList.contains("tracin-img-dropped"));
});

test("binary path: images draw, no note, nothing asked", () => {
  const m = new FakeModel({ test_strip: strip([row(4), row(7)]) });
  const { el, cleanup } = mount(render, m);
  assert.equal(q(el, "tracin-test-item")[0].querySelector("canvas").tagName, "CANVAS");
  assert.equal(q(el, "tracin-img-dropped").length, 0);
  assert.equal(q(el, "tracin-transport-note")[0].hidden, true);
  assert.equal(m.lastSent("image_transport"), undefined);
  cleanup();
});

test("dropped buffers in a trait: placeholders, a note, one request for base64; base64 images then draw", () => {
  const m = new FakeModel({ test_strip: strip([row(4, { image: dropped() }), row(7, { image: dropped() })]) });
  const { el, cleanup } = mount(render, m);
  assert.equal(q(el, "tracin-img-dropped").length, 2);
  assert.match(q(el, "tracin-img-dropped")[0].textContent, /no image/);
  const note = q(el, "tracin-transport-note")[0];
  assert.equal(note.hidden, false);
  assert.match(note.textContent, /drops binary data.*base64/);
  assert.deepEqual(m.lastSent("image_transport"), { kind: "image_transport", transport: "base64" });
  const q0 = { source: "test", index: 4 };
  m.pyset("query", q0);
  m.pyset("gallery", { query: q0, k: 10, item: row(4, { image: dropped() }), proponents: [], opponents: [] });
  assert.equal(m.sent.filter((s) => s.content.kind === "image_transport").length, 1); // asked once
  m.pyset("test_strip", strip([row(4, { image: b64img() }), row(7, { image: b64img() })])); // Python, in base64
  assert.equal(q(el, "tracin-test-item").filter((t) => t.querySelector("canvas")).length, 2);
  assert.equal(note.hidden, true);
  cleanup();
});

test("dropped buffers in a reply: the request for base64, then the page asked again and drawn from base64", () => {
  const m = new FakeModel({ view: "ranking" });
  const { el, cleanup } = mount(render, m);
  const first = m.lastSent("rows");
  const refs = [row(5), row(9)].map((r, i) => ({ ...r, image: { buffer: i, shape: [2, 2, 1] } }));
  m.reply({ kind: "rows", id: first.id, pending: false, total: 2, offset: 0, rows: refs }, undefined); // no buffers
  assert.equal(q(el, "tracin-table-row").length, 2);
  assert.equal(q(el, "tracin-img-dropped").length, 2);
  const kinds = m.sent.map((s) => s.content.kind);
  assert.deepEqual(kinds.slice(kinds.indexOf("image_transport")), ["image_transport", "rows"]); // then the page again
  const again = m.lastSent("rows");
  assert.notEqual(again.id, first.id);
  assert.equal(again.offset, first.offset);
  const rows = [row(5), row(9)].map((r) => ({ ...r, image: b64img() }));
  m.reply({ kind: "rows", id: again.id, pending: false, total: 2, offset: 0, rows });
  assert.equal(q(el, "tracin-img-dropped").length, 0);
  assert.equal(el.querySelectorAll(".tracin-table-row canvas").length, 2);
  assert.equal(q(el, "tracin-transport-note")[0].hidden, true);
  cleanup();
});
