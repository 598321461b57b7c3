// Download the review from the page (JSON or CSV): one record per flagged or relabelled training row, in exactly the
// text of Python's explorer.export_flagged (tracin_widgets/widget/_flags.py dumps_records): the columns
// EXPORT_COLUMNS, JSON as Python's json.dumps (", " and ": " separators, floats as Python's repr, null for none),
// CSV as its csv.writer (a header, empty for none, true/false). The rows' labels, suggestions and self-influence
// come from Python through one-off rows requests (only "flagged", then "relabelled", by index).

import { h } from "./dom.js";
import { fmtInt } from "./format.js";

export const EXPORT_COLUMNS = ["index", "given_label", "suggested_label", "new_label", "flagged", "self_influence"];
const PAGE = 500; // the most rows one rows request returns

/** A float as Python's repr writes it: "12.0", "0.25", "1e-05", "1.5e+16" (the shortest round-trip digits). */
export function pyFloat(x) {
  if (Number.isNaN(x)) return "NaN";
  if (!Number.isFinite(x)) return x > 0 ? "Infinity" : "-Infinity";
  if (x === 0) return Object.is(x, -0) ? "-0.0" : "0.0";
  const [mant, exp] = x.toExponential().split("e"); // the shortest digits that read back as x
  const e = Number(exp);
  const neg = mant.startsWith("-");
  const digits = mant.replace("-", "").replace(".", "");
  if (e < -4 || e >= 16) {
    const m = digits.length > 1 ? `${digits[0]}.${digits.slice(1)}` : digits;
    return `${neg ? "-" : ""}${m}e${e < 0 ? "-" : "+"}${String(Math.abs(e)).padStart(2, "0")}`;
  }
  let text;
  if (e < 0) text = `0.${"0".repeat(-e - 1)}${digits}`;
  else if (digits.length <= e + 1) text = `${digits}${"0".repeat(e + 1 - digits.length)}.0`;
  else text = `${digits.slice(0, e + 1)}.${digits.slice(e + 1)}`;
  return `${neg ? "-" : ""}${text}`;
}

function jsonValue(v) {
  if (v === null || v === undefined) return "null";
  if (typeof v === "boolean") return v ? "true" : "false";
  if (typeof v === "number") return Number.isInteger(v) ? String(v) : pyFloat(v);
  return JSON.stringify(v);
}

/** A float field (self_influence) stays a float even when it is whole ("12.0"), as in Python. */
const FLOATS = new Set(["self_influence"]);

function field(c, v) {
  if (FLOATS.has(c) && typeof v === "number") return pyFloat(v);
  return jsonValue(v);
}

/** Python's json.dumps([{column: value, ...}, ...]) + "\n". */
export function recordsJSON(records) {
  const objs = records.map((r) => `{${EXPORT_COLUMNS.map((c) => `"${c}": ${field(c, r[c])}`).join(", ")}}`);
  return `[${objs.join(", ")}]\n`;
}

/** Python's csv.writer(lineterminator="\n") of the header and the records (empty for none, true/false). */
export function recordsCSV(records) {
  const cell = (c, v) => {
    if (v === null || v === undefined) return "";
    if (typeof v === "boolean") return v ? "true" : "false";
    return FLOATS.has(c) && typeof v === "number" ? pyFloat(v) : String(v);
  };
  const lines = records.map((r) => EXPORT_COLUMNS.map((c) => cell(c, r[c])).join(","));
  return `${[EXPORT_COLUMNS.join(","), ...lines].map((l) => `${l}\n`).join("")}`;
}

export const FORMATS = {
  json: { file: "flagged.json", mime: "application/json", dump: recordsJSON },
  csv: { file: "flagged.csv", mime: "text/csv", dump: recordsCSV },
};

/** The training indices under review: flagged or relabelled, sorted. */
export function reviewed(model) {
  const set = new Set((model.get("flagged") || []).map(Number));
  for (const k of Object.keys(model.get("relabels") || {})) set.add(Number(k));
  return [...set].sort((a, b) => a - b);
}

/** Every row of the table under `only` (pages of PAGE rows, by index), through one-off requests. */
async function rowsOf(rpc, only) {
  const out = [];
  for (let offset = 0; ; ) {
    const msg = await rpc.call("rows", {
      offset,
      limit: PAGE,
      sort: "index",
      descending: false,
      label: null,
      only,
      score_range: null,
    });
    if (msg.pending) throw new Error("self-influence is still being computed: export once it is done");
    out.push(...(msg.rows || []));
    offset += (msg.rows || []).length;
    if (!(msg.rows || []).length || offset >= msg.total) return out;
  }
}

/** The export's records, as Python's export_records builds them (rows fetched from Python). */
export async function exportRecords(ctx) {
  const { model, rpc } = ctx;
  const flagged = new Set((model.get("flagged") || []).map(Number));
  const relabels = model.get("relabels") || {};
  const rows = new Map();
  if (flagged.size) for (const r of await rowsOf(rpc, "flagged")) rows.set(r.index, r);
  if (Object.keys(relabels).length) for (const r of await rowsOf(rpc, "relabelled")) rows.set(r.index, r);
  return reviewed(model).map((i) => {
    const r = rows.get(i) || {};
    const nl = relabels[String(i)];
    return {
      index: i,
      given_label: r.label ?? null,
      suggested_label: r.suggested ?? null,
      new_label: nl === undefined ? null : Number(nl),
      flagged: flagged.has(i),
      self_influence: r.score ?? null,
    };
  });
}

/** A browser download of `text` as `filename` (Blob + <a download>; no server round trip). */
export function download(filename, text, mime) {
  const url = URL.createObjectURL(new Blob([text], { type: `${mime};charset=utf-8` }));
  const a = h("a", { href: url, download: filename, hidden: true });
  document.body.append(a);
  try {
    a.click();
  } finally {
    a.remove();
    setTimeout(() => URL.revokeObjectURL(url), 1000); // after the browser has started reading it
  }
}

/** The two export buttons (disabled, with the reason in the title, while nothing is flagged or relabelled). */
export function createExport(ctx) {
  const { model } = ctx;
  const buttons = Object.entries(FORMATS).map(([fmt, f]) => {
    const b = h("button", {
      type: "button",
      className: "tracin-btn",
      testid: `tracin-export-${fmt}`,
      text: `⤓ ${fmt.toUpperCase()}`,
      onClick: async () => {
        if (!reviewed(model).length) return;
        b.disabled = true;
        try {
          const records = await exportRecords(ctx);
          download(f.file, f.dump(records), f.mime);
          ctx.announce?.(`Downloaded ${records.length} reviewed rows as ${f.file}`);
        } catch (err) {
          ctx.announce?.(`Export failed: ${err.message}`);
        } finally {
          update();
        }
      },
    });
    return b;
  });
  const el = h("span", { className: "tracin-export", attrs: { role: "group", "aria-label": "Export flags" } }, buttons);

  function update() {
    const n = reviewed(model).length;
    buttons.forEach((b, i) => {
      const f = Object.values(FORMATS)[i];
      b.disabled = n === 0;
      b.title = n
        ? `Download the ${fmtInt(n)} flagged or relabelled rows as ${f.file} (index, given, suggested and new label, flagged, self-influence: the file explorer.export_flagged writes)`
        : "Nothing is flagged or relabelled yet: flag training examples (f, or the Flag box) or relabel them to export them";
    });
  }
  ctx.listen("change:flagged", update);
  ctx.listen("change:relabels", update);
  update();
  return { el, update };
}
