// The one JS <-> Python codec (mirror of tracin_widgets/widget/_payload.py).
// An image is {data: DataView | ArrayBuffer | Uint8Array, shape: [h, w, c]} (uint8, row-major HWC, c in 1|3|4);
// in custom messages {buffer: i, shape} refers to the message's i-th buffer (resolved by resolveBuffers).
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
 * A <canvas> showing the image (scaled by CSS, pixelated). Returns a placeholder span when img is missing.
 * @param {{data: any, shape: number[]}|null|undefined} img
 * @param {string} className
 * @param {string} label accessible label
 */
export function imageElement(img, className, label) {
  if (!img?.shape || img.data == null) {
    return h("span", { className: `${className} tracin-img-missing`, attrs: { role: "img", "aria-label": label } });
  }
  const [ih, iw, ic] = img.shape;
  const canvas = h("canvas", { className, attrs: { role: "img", "aria-label": label } });
  canvas.width = iw;
  canvas.height = ih;
  // The CSS box keeps the image's aspect ratio (styles.css sizes .tracin-img from --tracin-ar): never stretched.
  canvas.style.setProperty("--tracin-ar", aspectRatio(ih, iw));
  let ctx = null;
  try {
    ctx = canvas.getContext?.("2d");
  } catch {
    ctx = null;
  }
  if (ctx && typeof ctx.createImageData === "function") {
    const data = ctx.createImageData(iw, ih);
    data.data.set(toRGBA(toBytes(img.data), ih, iw, ic));
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

// ---- formatting -------------------------------------------------------------------------------------------------
const nf = new Intl.NumberFormat("en-US");

/** 12345 -> "12,345". */
export function fmtInt(n) {
  return n === null || n === undefined ? "–" : nf.format(n);
}

/** A score with 3 significant digits; exponent for very large / small magnitudes. */
export function fmtScore(x) {
  if (x === null || x === undefined || !Number.isFinite(x)) return "–";
  const a = Math.abs(x);
  if (a !== 0 && (a >= 1e5 || a < 1e-3)) return x.toExponential(2);
  return Number(x.toPrecision(3)).toString();
}

/** 0.873 -> "87%". */
export function fmtProb(p) {
  return p === null || p === undefined ? "" : `${Math.round(p * 100)}%`;
}

/** Seconds -> "0:42" / "1:02:03". */
export function fmtDuration(s) {
  if (s === null || s === undefined || !Number.isFinite(s)) return "";
  s = Math.max(0, Math.round(s));
  const hh = Math.floor(s / 3600),
    mm = Math.floor((s % 3600) / 60),
    ss = s % 60;
  const pad = (v) => String(v).padStart(2, "0");
  return hh ? `${hh}:${pad(mm)}:${pad(ss)}` : `${mm}:${pad(ss)}`;
}

/** The display name of class `label` (class_names when given, else the number). */
export function className(names, label) {
  if (label === null || label === undefined) return "?";
  return names && names[label] !== undefined ? String(names[label]) : String(label);
}
