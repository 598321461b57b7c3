// The one JS <-> Python codec (mirror of tracin_widgets/widget/_payload.py).
// An image is {shape: [h, w, c]} (uint8, row-major HWC, c in 1|3|4) with its bytes either in `data` (a DataView,
// ArrayBuffer or typed array: the binary path, ipywidgets buffers) or in `b64` (a base64 string of the same bytes:
// the text path, for notebook hosts that drop binary buffers). In custom messages {buffer: i, shape} refers to the
// message's i-th buffer (resolved by resolveBuffers). A shape whose bytes never arrived is a dropped image.
import { h } from "./dom.js";

/** @param {DataView|ArrayBuffer|ArrayBufferView} data @returns {Uint8Array} */
export function toBytes(data) {
  if (data instanceof Uint8Array) return data;
  if (ArrayBuffer.isView(data)) return new Uint8Array(data.buffer, data.byteOffset, data.byteLength);
  if (data instanceof ArrayBuffer) return new Uint8Array(data);
  throw new TypeError("image data must be a DataView, ArrayBuffer or typed array");
}

/**
 * HWC uint8 (c = 1, 3 or 4) -> RGBA bytes for ImageData.
 * @returns {Uint8ClampedArray}
 */
export function toRGBA(bytes, h, w, c) {
  const n = h * w;
  if (bytes.length < n * c) throw new RangeError(`image buffer too short: ${bytes.length} < ${n * c}`);
  const out = new Uint8ClampedArray(n * 4);
  for (let i = 0; i < n; i++) {
    const o = i * 4;
    if (c === 1) {
      const v = bytes[i];
      out[o] = v;
      out[o + 1] = v;
      out[o + 2] = v;
      out[o + 3] = 255;
    } else if (c === 3) {
      const s = i * 3;
      out[o] = bytes[s];
      out[o + 1] = bytes[s + 1];
      out[o + 2] = bytes[s + 2];
      out[o + 3] = 255;
    } else {
      const s = i * 4;
      out[o] = bytes[s];
      out[o + 1] = bytes[s + 1];
      out[o + 2] = bytes[s + 2];
      out[o + 3] = bytes[s + 3];
    }
  }
  return out;
}

/**
 * How an image's bytes travel: "binary" (data), "base64" (b64), "none" (no image), or "dropped" (a shape without its
 * bytes: a host that drops binary buffers leaves the data field missing, empty or an empty object).
 * @returns {"binary"|"base64"|"none"|"dropped"}
 */
export function imageTransport(img) {
  if (!img || typeof img !== "object" || !Array.isArray(img.shape)) return "none";
  if (typeof img.b64 === "string") return "base64";
  const d = img.data;
  const binary = d instanceof ArrayBuffer || ArrayBuffer.isView(d);
  const size = img.shape.reduce((a, b) => a * b, 1);
  return binary && (d.byteLength > 0 || size === 0) ? "binary" : "dropped";
}

/** A base64 string -> its bytes. */
export function fromBase64(text) {
  const bin = atob(text);
  const out = new Uint8Array(bin.length);
  for (let i = 0; i < bin.length; i++) out[i] = bin.charCodeAt(i);
  return out;
}

/** The image's uint8 HWC bytes, from either path; null when it has none (none or dropped). */
export function imageBytes(img) {
  const how = imageTransport(img);
  if (how === "binary") return toBytes(img.data);
  if (how === "base64") return fromBase64(img.b64);
  return null;
}

/** The transports of every row image (`image` fields) inside a payload (trait value or reply). */
export function imageTransports(payload, found = new Set()) {
  if (Array.isArray(payload)) for (const v of payload) imageTransports(v, found);
  else if (payload && typeof payload === "object" && !ArrayBuffer.isView(payload)) {
    if ("image" in payload) found.add(imageTransport(payload.image));
    for (const [k, v] of Object.entries(payload)) if (k !== "image") imageTransports(v, found);
  }
  return found;
}

export const DROPPED_TEXT = "no image";
export const DROPPED_TITLE =
  "This notebook host dropped the image's binary data: the explorer asks the kernel to send images as base64 text.";

/**
 * A <canvas> showing the image (scaled by CSS, pixelated). Returns a placeholder span when img is missing, and a
 * placeholder that says so when its bytes were dropped on the way.
 * @param {{data?: any, b64?: string, shape: number[]}|null|undefined} img
 * @param {string} className
 * @param {string} label accessible label
 */
export function imageElement(img, className, label) {
  const how = imageTransport(img);
  if (how === "none") {
    return h("span", { className: `${className} tracin-img-missing`, attrs: { role: "img", "aria-label": label } });
  }
  if (how === "dropped") {
    return h("span", {
      className: `${className} tracin-img-missing tracin-img-dropped`,
      testid: "tracin-img-dropped",
      title: DROPPED_TITLE,
      text: DROPPED_TEXT,
      attrs: { role: "img", "aria-label": `${label}: ${DROPPED_TEXT} (${DROPPED_TITLE})` },
    });
  }
  const [ih, iw, ic] = img.shape;
  const canvas = h("canvas", { className, attrs: { role: "img", "aria-label": label } });
  canvas.width = iw;
  canvas.height = ih;
  // The CSS box keeps the image's aspect ratio (styles/images.css sizes .tracin-img from --tracin-ar): never stretched.
  canvas.style.setProperty("--tracin-ar", aspectRatio(ih, iw));
  let ctx = null;
  try {
    ctx = canvas.getContext?.("2d");
  } catch {
    ctx = null;
  }
  if (ctx && typeof ctx.createImageData === "function") {
    const data = ctx.createImageData(iw, ih);
    data.data.set(toRGBA(imageBytes(img), ih, iw, ic));
    ctx.putImageData(data, 0, 0);
  }
  return canvas;
}

/** width / height of an h x w image as a CSS number ("1" for a square or a degenerate shape). */
export function aspectRatio(ih, iw) {
  return ih > 0 && iw > 0 ? String(Number((iw / ih).toPrecision(6))) : "1";
}

/** Replace {buffer: i, ...} references in a custom-message payload by {data: buffers[i], ...}. */
export function resolveBuffers(obj, buffers) {
  if (Array.isArray(obj)) return obj.map((v) => resolveBuffers(v, buffers));
  if (obj && typeof obj === "object" && !ArrayBuffer.isView(obj) && !(obj instanceof ArrayBuffer)) {
    if (typeof obj.buffer === "number" && Array.isArray(obj.shape)) {
      const { buffer, ...rest } = obj;
      return { ...rest, data: buffers ? buffers[buffer] : undefined };
    }
    const out = {};
    for (const [k, v] of Object.entries(obj)) out[k] = resolveBuffers(v, buffers);
    return out;
  }
  return obj;
}
