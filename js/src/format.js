// Numbers, durations and class names as the views show them (text only; no DOM).

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
