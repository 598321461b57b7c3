// A scripted session of the front end for tests/widget/test_protocol.py (not a node test itself).
// Renders the views under happy-dom with a FakeModel, presses every control that sends a custom message and prints
// {requests, rendered} as JSON: `requests` are the messages model.send() got (checked in Python against
// tracin_widgets/widget/_protocols.py, the wire format's source of truth, and handled by a real explorer).
// With a file argument ({info, rows, detail, error}: the explorer's info trait and replies the Python controller really sent, buffers as byte lists),
// each reply is fed back as the answer to the newest request of its kind and `rendered` says what the views show.
import { readFileSync } from "node:fs";
import { GlobalRegistrator } from "@happy-dom/global-registrator";
import { render } from "../src/index.js";
import { FakeModel, mount, q, row } from "./setup.mjs";

const replies = process.argv[2] ? JSON.parse(readFileSync(process.argv[2], "utf8")) : null;
const detailIndex = replies ? replies.detail.content.item.index : 10;

function feed(m, reply) {
  const id = m.lastSent(reply.content.kind === "error" ? reply.content.request : reply.content.kind).id;
  m.reply(
    { ...reply.content, id },
    reply.buffers.map((b) => new DataView(new Uint8Array(b).buffer)),
  );
}

const q0 = { source: "test", index: 3 };
const m = new FakeModel({
  status: "running",
  class_names: ["a", "b", "c"],
  progress_info: { phase: "Self-influence", done: 1, total: 4, fraction: 0.25, eta_s: 3, step: 3, steps: 4, run: 3 },
  info: replies ? replies.info : { n_train: 120, n_test: 12, has_truth: true, engine: "Fake", n_classes: 3 },
  stats: {
    ready: true,
    has_preds: true,
    histogram: { counts: [5, 3, 2], edges: [0, 1, 2, 3], log: false },
    flags: { n_flagged: 0, n_train: 120 },
  },
  query: q0,
  gallery: {
    query: q0,
    k: 10,
    request: 1,
    item: row(3),
    proponents: [row(detailIndex)],
    opponents: [row(20)],
    error: null,
    explain: "label",
    explained_label: 0,
    same_label: true,
  },
});
const { el, cleanup } = mount(render, m);
const root = q(el, "tracin-root")[0];
const key = (k) => root.dispatchEvent(new KeyboardEvent("keydown", { key: k, bubbles: true }));
const rendered = {};

q(el, "tracin-cancel")[0].click(); // the run on screen
m.pyset("progress_info", {});
q(el, "tracin-cancel")[0].click(); // no run shown yet
q(el, "tracin-resume")[0].click();
q(el, "tracin-retry")[0].click();
key("u");
q(el, "tracin-proponent")[0].click(); // details of a training example, and its per-checkpoint breakdown
if (replies) {
  feed(m, replies.detail);
  const details = q(el, "tracin-details")[0];
  rendered.details_index = Number(details.dataset.index);
  rendered.details_label = q(el, "tracin-details-label")[0]?.textContent ?? null;
  rendered.details_rank = q(el, "tracin-details-rank")[0]?.textContent ?? null;
}
m.pyset("status", "ready");
q(el, "tracin-tab-ranking")[0].click(); // the first page
q(el, "tracin-sort-score")[0].click();
const classes = q(el, "tracin-class-filter")[0];
classes.value = "2";
classes.dispatchEvent(new Event("change"));
const only = q(el, "tracin-only-filter")[0];
only.value = "mislabelled";
only.dispatchEvent(new Event("change"));
q(el, "tracin-histogram")[0].querySelectorAll(".tracin-hit")[1].dispatchEvent(new Event("click"));
if (replies) feed(m, replies.rows);
else m.reply({ kind: "rows", id: m.lastSent("rows").id, pending: false, total: 1, offset: 0, rows: [row(1)] });
q(el, "tracin-bulk-flag")[0].click(); // every row under the filter
q(el, "tracin-bulk-flag-page")[0].click(); // one page
// a host that drops binary buffers: a gallery image arrives without its bytes, so the page asks for base64
m.pyset("gallery", { ...m.get("gallery"), proponents: [{ ...row(detailIndex), image: { shape: [2, 2, 1] } }] });
if (replies) {
  rendered.table_rows = q(el, "tracin-table-row").map((r) => Number(r.dataset.index));
  rendered.table_page = q(el, "tracin-table-page")[0].textContent;
  q(el, "tracin-table-next")[0].click();
  feed(m, replies.error);
  rendered.error_text = q(el, "tracin-error-text")[0].textContent;
}
cleanup();

// JSON drops what model.send would not carry (undefined fields), as the kernel would
const requests = JSON.parse(JSON.stringify(m.sent.map((s) => s.content)));
process.stdout.write(JSON.stringify({ requests, rendered }), () => {
  GlobalRegistrator.unregister().finally(() => process.exit(0));
});
