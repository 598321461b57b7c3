// Bundles src/ into ../tracin_widgets/widget/static/{widget.js,widget.css} (gitignored build output).

import path from "node:path";
import { fileURLToPath } from "node:url";
import * as esbuild from "esbuild";

const here = path.dirname(fileURLToPath(import.meta.url));
const outdir = path.join(here, "..", "tracin_widgets", "widget", "static");
const watch = process.argv.includes("--watch");

const options = [
  {
    entryPoints: [path.join(here, "src", "index.js")],
    outfile: path.join(outdir, "widget.js"),
    bundle: true,
    format: "esm",
    target: ["es2020"],
    minify: !watch,
    sourcemap: watch ? "inline" : false,
    legalComments: "none",
    logLevel: "warning",
  },
  {
    entryPoints: [path.join(here, "src", "styles.css")],
    outfile: path.join(outdir, "widget.css"),
    bundle: true,
    minify: !watch,
    logLevel: "warning",
  },
];

if (watch) {
  for (const o of options) await (await esbuild.context(o)).watch();
  console.log(`watching js/src -> ${path.relative(process.cwd(), outdir)}`);
} else {
  await Promise.all(options.map((o) => esbuild.build(o)));
}
