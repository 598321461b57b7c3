import assert from "node:assert/strict";
import { test } from "node:test";
import { fmtTop } from "../src/details.js";
import widget, { render } from "../src/index.js";
import { FakeModel, img, mount, q, row } from "./setup.mjs";

function strip(items, extra = {}) {
  return { page: 0, n_pages: 2, total: 48, page_size: 24, filtered: false, has_preds: true, items, ...extra };
}

test("default export has render", () => {
  assert.equal(typeof widget.render, "function");
});

test("test strip renders items with data-testid and data-index; click selects", () => {
  const m = new FakeModel({ test_strip: strip([row(4), row(7, { pred: 2, label: 1 })]) });
  const { el, cleanup } = mount(render, m);
  const items = q(el, "tracin-test-item");
  assert.deepEqual(
    items.map((b) => b.dataset.index),
    ["4", "7"],
  );
  assert.ok(items[1].classList.contains("is-wrong"));
  items[1].click();
  assert.equal(m.get("selected_test"), 7);
  assert.deepEqual(m.get("query"), { source: "test", index: 7 });
  assert.ok(m.saves >= 1);
  assert.ok(q(el, "tracin-test-item")[1].classList.contains("is-selected"));
  cleanup();
});

test("arrow keys move the test selection and flip pages at the end", () => {
  const m = new FakeModel({ test_strip: strip([row(4), row(7)]), selected_test: 4 });
  const { el, cleanup } = mount(render, m);
  const root = q(el, "tracin-root")[0];
  root.dispatchEvent(new KeyboardEvent("keydown", { key: "ArrowRight", bubbles: true }));
  assert.equal(m.get("selected_test"), 7);
  root.dispatchEvent(new KeyboardEvent("keydown", { key: "ArrowRight", bubbles: true }));
  assert.equal(m.get("test_page"), 1); // next page requested
  m.pyset("test_strip", strip([row(9), row(11)], { page: 1 }));
  assert.equal(m.get("selected_test"), 9); // first item of the new page selected
  cleanup();
});

test("galleries render proponents/opponents with testids, data-index and badges", () => {
  const q0 = { source: "test", index: 3 };
  const m = new FakeModel({
    query: q0,
    gallery: {
      query: q0,
      k: 10,
      item: row(3),
      proponents: [row(10), row(11, { badge: "label differs from the prediction" })],
      opponents: [row(20)],
      error: null,
    },
  });
  const { el, cleanup } = mount(render, m);
  assert.deepEqual(
    q(el, "tracin-proponent").map((t) => t.dataset.index),
    ["10", "11"],
  );
  assert.deepEqual(
    q(el, "tracin-opponent").map((t) => t.dataset.index),
    ["20"],
  );
  assert.equal(q(el, "tracin-badge").length, 1);
  assert.ok(q(el, "tracin-proponent")[1].contains(q(el, "tracin-badge")[0]));
  cleanup();
});

test("a gallery for another query is shown as stale, not as the answer", () => {
  const m = new FakeModel({
    query: { source: "test", index: 5 },
    gallery: {
      query: { source: "test", index: 3 },
      k: 10,
      item: row(3),
      proponents: [row(10)],
      opponents: [],
      error: null,
    },
  });
  const { el, cleanup } = mount(render, m);
  assert.ok(el.querySelector(".tracin-gallery").classList.contains("is-stale"));
  assert.match(q(el, "tracin-gallery-status")[0].textContent, /computing influence for test #5/);
  cleanup();
});

test("clicking a tile opens details; flag toggle writes flagged and saves; walk sets a train query", () => {
  const q0 = { source: "test", index: 3 };
  const m = new FakeModel({
    query: q0,
    gallery: { query: q0, k: 10, item: row(3), proponents: [row(10)], opponents: [], error: null },
  });
  const { el, cleanup } = mount(render, m);
  q(el, "tracin-proponent")[0].click();
  const req = m.lastSent("detail");
  assert.equal(req.index, 10);
  m.reply({ kind: "detail", id: req.id, item: { ...row(10), image: { buffer: 0, shape: [2, 2, 1] } } }, [img().data]);
  const details = q(el, "tracin-details")[0];
  assert.equal(details.hidden, false);
  const toggle = q(el, "tracin-flag-toggle")[0];
  assert.equal(toggle.dataset.index, "10");
  const saves = m.saves;
  toggle.click();
  assert.deepEqual(m.get("flagged"), [10]);
  assert.equal(m.saves, saves + 1);
  assert.ok(q(el, "tracin-flag-toggle")[0].classList.contains("is-flagged"));
  assert.ok(q(el, "tracin-proponent")[0].classList.contains("is-flagged"));
  q(el, "tracin-walk")[0].click();
  assert.deepEqual(m.get("query"), { source: "train", index: 10 });
  assert.equal(q(el, "tracin-back")[0].hidden, false);
  q(el, "tracin-back")[0].click();
  assert.deepEqual(m.get("query"), q0);
  cleanup();
});

test("keys: f flags the current item, u sends undo, ? toggles help", () => {
  const q0 = { source: "test", index: 3 };
  const m = new FakeModel({
    flagged: [1],
    query: q0,
    gallery: { query: q0, k: 10, item: row(3), proponents: [row(10)], opponents: [], error: null },
  });
  const { el, cleanup } = mount(render, m);
  const root = q(el, "tracin-root")[0];
  const key = (k) => root.dispatchEvent(new KeyboardEvent("keydown", { key: k, bubbles: true }));
  q(el, "tracin-proponent")[0].dispatchEvent(new FocusEvent("focus"));
  key("f");
  assert.deepEqual(m.get("flagged"), [1, 10]);
  key("u");
  assert.equal(m.lastSent("undo").kind, "undo");
  assert.equal(q(el, "tracin-help")[0].hidden, true);
  key("?");
  assert.equal(q(el, "tracin-help")[0].hidden, false);
  assert.match(q(el, "tracin-flag-count")[0].textContent, /2 flagged/);
  cleanup();
});

test("text is inserted as text: a class name with HTML shows literally", () => {
  const evil = "<img src=x onerror=alert(1)>";
  const q0 = { source: "test", index: 3 };
  const m = new FakeModel({
    class_names: [evil, "b", "c"],
    error: "<b>boom</b>",
    test_strip: strip([row(0)]),
    query: q0,
    gallery: { query: q0, k: 10, item: row(3), proponents: [row(0)], opponents: [], error: null },
  });
  const { el, cleanup } = mount(render, m);
  assert.equal(el.querySelectorAll("img").length, 0);
  assert.equal(el.querySelectorAll("b").length, 0);
  assert.ok(q(el, "tracin-proponent")[0].textContent.includes(evil));
  assert.ok(q(el, "tracin-test-item")[0].textContent.includes(evil));
  assert.equal(q(el, "tracin-error-text")[0].textContent, "<b>boom</b>");
  cleanup();
});

test("progress bar shows phase, counts and ETA; cancel sends a cancel message", () => {
  const m = new FakeModel({
    status: "running",
    progress: 0.25,
    progress_info: {
      phase: "Training factors",
      done: 250,
      total: 1000,
      fraction: 0.25,
      eta_s: 42,
      step: 2,
      steps: 4,
      run: 3,
    },
  });
  const { el, cleanup } = mount(render, m);
  const p = q(el, "tracin-progress")[0];
  assert.equal(p.hidden, false);
  assert.equal(q(el, "tracin-progress-text")[0].textContent, "Step 2/4 · Training factors · 250 / 1,000 · ETA 0:42");
  q(el, "tracin-cancel")[0].click();
  assert.equal(m.lastSent("cancel").kind, "cancel");
  assert.equal(m.lastSent("cancel").run, 3); // cancels only the run on screen, never a later one
  m.pyset("status", "ready");
  assert.equal(p.hidden, true);
  cleanup();
});

test("errors appear in a banner; dismiss clears the error trait", () => {
  const m = new FakeModel();
  const { el, cleanup } = mount(render, m);
  const banner = q(el, "tracin-error")[0];
  assert.equal(banner.hidden, true);
  m.pyset("error", "ValueError: bad checkpoint");
  assert.equal(banner.hidden, false);
  assert.match(banner.textContent, /bad checkpoint/);
  q(el, "tracin-error-dismiss")[0].click();
  assert.equal(m.get("error"), "");
  assert.equal(banner.hidden, true);
  cleanup();
});

test("cleanup empties el and removes every model listener", () => {
  const m = new FakeModel({ test_strip: strip([row(1)]) });
  const { el, cleanup } = mount(render, m);
  assert.ok(el.children.length > 0);
  assert.ok(m.count("change:flagged") > 0);
  cleanup();
  assert.equal(el.children.length, 0);
  assert.equal(el.innerHTML, "");
  for (const [ev, set] of m.listeners) assert.equal(set.size, 0, ev);
});

function misclassifiedGallery(extra = {}) {
  const q0 = { source: "test", index: 3 };
  return {
    query: q0,
    gallery: {
      query: q0,
      k: 10,
      request: 1,
      item: row(3, { label: 2, pred: 1 }),
      proponents: [row(10), row(11, { badge: "its label 2 differs from the model's prediction for it (1)" })],
      opponents: [row(20, { score: -4 })],
      error: null,
      explain: "label",
      explained_label: 2,
      same_label: false,
      ...extra,
    },
  };
}

test("the label choice sets explain; captions name the label or the prediction", () => {
  const m = new FakeModel({ class_names: ["a", "b", "cat"], ...misclassifiedGallery() });
  const { el, cleanup } = mount(render, m);
  const choice = q(el, "tracin-label-choice")[0];
  assert.equal(choice.value, "label");
  assert.equal(q(el, "tracin-proponents-caption")[0].textContent, " · raised the score of label 2 (cat)");
  assert.equal(q(el, "tracin-opponents-caption")[0].textContent, " · lowered the score of label 2 (cat)");
  assert.equal(q(el, "tracin-label-note")[0].textContent, "");
  choice.value = "prediction";
  choice.dispatchEvent(new Event("change"));
  assert.equal(m.get("explain"), "prediction");
  assert.ok(m.saves >= 1);
  assert.ok(el.querySelector(".tracin-gallery").classList.contains("is-stale")); // until Python answers for it
  m.pyset("gallery", { ...m.get("gallery"), request: 2, explain: "prediction", explained_label: 1 });
  assert.ok(!el.querySelector(".tracin-gallery").classList.contains("is-stale"));
  assert.equal(q(el, "tracin-proponents-caption")[0].textContent, " · raised the score of the prediction 1 (b)");
  m.pyset("gallery", { ...m.get("gallery"), request: 3, explained_label: 2, same_label: true });
  assert.equal(q(el, "tracin-label-note")[0].textContent, "label = prediction (2 (cat))");
  cleanup();
});

test("a badge's tooltip is the badge text Python sends (what was measured)", () => {
  const m = new FakeModel(misclassifiedGallery());
  const { el, cleanup } = mount(render, m);
  const badges = q(el, "tracin-badge");
  assert.equal(badges.length, 1);
  assert.equal(badges[0].title, "its label 2 differs from the model's prediction for it (1)");
  assert.ok(q(el, "tracin-proponent")[1].contains(badges[0]));
  cleanup();
});

test("the details panel shows the rank with a share that never reads 0.00%", () => {
  assert.equal(fmtTop(1, 1797), "top 0.056%");
  assert.equal(fmtTop(1, 400), "top 0.25%");
  assert.equal(fmtTop(2, 400), "top 0.5%");
  assert.equal(fmtTop(1, 400000), "top 0.00025%");
  assert.equal(fmtTop(5, 400), "top 1.3%");
  assert.equal(fmtTop(90, 1797), "top 5%");
  assert.equal(fmtTop(1797, 1797), "top 100%");
  const m = new FakeModel({ ...misclassifiedGallery(), info: { n_train: 1797, n_test: 3, engine: "Fake" } });
  const { el, cleanup } = mount(render, m);
  q(el, "tracin-proponent")[0].click();
  const req = m.lastSent("detail");
  m.reply({ kind: "detail", id: req.id, item: { ...row(10, { rank: 1, score: 2.5 }), image: null } });
  assert.equal(q(el, "tracin-details-rank")[0].textContent, "2.5 · rank 1 of 1,797 (top 0.056%)");
  cleanup();
});

test("the details panel asks for the pair's breakdown and draws one labelled bar per checkpoint", () => {
  const m = new FakeModel({ class_names: ["a", "b", "cat"], ...misclassifiedGallery() });
  const { el, cleanup } = mount(render, m);
  q(el, "tracin-opponent")[0].click();
  const req = m.lastSent("contributions");
  assert.deepEqual(
    { query: req.query, label: req.label, index: req.index },
    { query: { source: "test", index: 3 }, label: 2, index: 20 },
  );
  const terms = [
    { checkpoint: "checkpoint-0.pt", lr: 1, contribution: -5 },
    { checkpoint: "checkpoint-1.pt", lr: 1, contribution: 1.5 },
    { checkpoint: "checkpoint-2.pt", lr: 0.5, contribution: -0.5 },
  ];
  const reply = {
    kind: "contributions",
    id: req.id,
    query: req.query,
    label: 2,
    index: 20,
    checkpoints: terms,
    total: -4,
    error: null,
  };
  m.reply(reply);
  const bars = q(el, "tracin-checkpoint-bar");
  assert.equal(bars.length, 3);
  assert.deepEqual(
    bars.map((b) => b.textContent),
    ["checkpoint-0.pt−5", "checkpoint-1.pt+1.5", "checkpoint-2.pt−0.5"],
  );
  assert.deepEqual(
    bars.map((b) => [...b.classList].find((c) => c.startsWith("is-"))),
    ["is-neg", "is-pos", "is-neg"],
  );
  assert.match(bars[0].title, /checkpoint-0\.pt: lowered the score by 5 \(learning rate 1\)/);
  assert.equal(bars[0].querySelector(".tracin-cbar-fill").style.width, "50.00%"); // the largest term: half the track
  assert.match(
    q(el, "tracin-breakdown")[0].textContent,
    /Influence on test #3 \(score of label 2 \(cat\)\), by checkpoint/,
  );
  assert.equal(q(el, "tracin-breakdown-sum")[0].textContent, "sum -4 = the score in the gallery");
  // the label choice changes the pair: asked again, for the prediction
  m.pyset("gallery", { ...m.get("gallery"), request: 2, explain: "prediction", explained_label: 1 });
  assert.equal(m.lastSent("contributions").label, 1);
  // an engine that cannot split its scores: the panel says why
  const again = m.lastSent("contributions");
  m.reply({
    ...reply,
    id: again.id,
    label: 1,
    checkpoints: [],
    total: null,
    error: "FakeEngine cannot split its scores by checkpoint",
  });
  assert.equal(q(el, "tracin-checkpoint-bar").length, 0);
  assert.match(q(el, "tracin-breakdown-error")[0].textContent, /cannot split its scores by checkpoint/);
  cleanup();
});

test("the engine's notes show above the views, as text, only when there are some", () => {
  const m = new FakeModel({ info: { n_train: 10, n_test: 2, engine: "TracInCPFast", notes: [] } });
  const { el, cleanup } = mount(render, m);
  assert.equal(q(el, "tracin-notes")[0].hidden, true);
  const note = "final_fc_layer 'fc2' (Linear) is not the model's final linear layer <b>";
  m.pyset("info", { ...m.get("info"), notes: [note, "cache_dir '/x' cannot be written"] });
  assert.equal(q(el, "tracin-notes")[0].hidden, false);
  assert.deepEqual(
    q(el, "tracin-note").map((li) => li.textContent),
    [note, "cache_dir '/x' cannot be written"],
  );
  assert.equal(q(el, "tracin-notes")[0].querySelector("b"), null); // text, never HTML
  m.pyset("info", { ...m.get("info"), notes: [] });
  assert.equal(q(el, "tracin-notes")[0].hidden, true);
  cleanup();
});
