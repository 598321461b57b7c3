// Download the flagged training indices from the page (JSON or CSV), in exactly the format of Python's
// explorer.export_flagged (tracin_widgets/widget/_flags.py dumps): JSON `[1, 5, 9]\n`, CSV `index\n1\n5\n9\n`.

import { h } from "./dom.js";

/** Sorted, unique indices (what the `flagged` trait holds; normalised again in case a view sent it unsorted). */
function normalise(flagged) {
  return [...new Set((flagged || []).map(Number))].sort((a, b) => a - b);
}

/** Python's json.dumps(list) + "\n". */
export function flagsJSON(flagged) {
  return `[${normalise(flagged).join(", ")}]\n`;
}

/** Python's csv.writer(lineterminator="\n"): an `index` header, one index a row. */
export function flagsCSV(flagged) {
  return `index\n${normalise(flagged)
    .map((i) => `${i}\n`)
    .join("")}`;
}

export const FORMATS = {
  json: { file: "flagged.json", mime: "application/json", dump: flagsJSON },
  csv: { file: "flagged.csv", mime: "text/csv", dump: flagsCSV },
};

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

/** The two export buttons (disabled, with the reason in the title, while nothing is flagged). */
export function createExport(ctx) {
  const { model } = ctx;
  const buttons = Object.entries(FORMATS).map(([fmt, f]) =>
    h("button", {
      type: "button",
      className: "tracin-btn",
      testid: `tracin-export-${fmt}`,
      text: `⤓ ${fmt.toUpperCase()}`,
      onClick: () => {
        const flagged = model.get("flagged") || [];
        if (!flagged.length) return;
        download(f.file, f.dump(flagged), f.mime);
        ctx.announce?.(`Downloaded ${flagged.length} flagged indices as ${f.file}`);
      },
    }),
  );
  const el = h("span", { className: "tracin-export", attrs: { role: "group", "aria-label": "Export flags" } }, buttons);

  function update() {
    const n = (model.get("flagged") || []).length;
    buttons.forEach((b, i) => {
      const f = Object.values(FORMATS)[i];
      b.disabled = n === 0;
      b.title = n
        ? `Download the ${n} flagged indices as ${f.file} (the format of explorer.export_flagged)`
        : "Nothing is flagged yet: flag training examples (f, or the Flag box) to export them";
    });
  }
  ctx.listen("change:flagged", update);
  update();
  return { el, update };
}
