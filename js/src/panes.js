// The two panes under the tabs: "test" (the test strip and the galleries; without a test set, a note that says how
// to choose a training example to explain) and "ranking" (the self-influence table and its charts).

import { h } from "./dom.js";

export function createPanes(ctx, { strip, gallery, table, charts }) {
  const { model } = ctx;
  // Without a test set the first tab explains a training example chosen in the ranking; until one is chosen it says how.
  const pickNote = h(
    "div",
    { className: "tracin-note", testid: "tracin-no-test-note", hidden: true },
    h("strong", { text: "No test set: explain a training example." }),
    " Open the ",
    h("button", {
      type: "button",
      className: "tracin-link",
      testid: "tracin-goto-ranking",
      text: "Self-influence ranking",
      onClick: () => ctx.showTab("ranking"),
    }),
    ", click a row, then “Show its proponents →”: the training examples that raised (proponents) or lowered " +
      "(opponents) its score appear here.",
  );
  const panes = {
    test: h("div", { className: "tracin-pane", testid: "tracin-pane-test" }, strip.el, pickNote, gallery.el),
    ranking: h(
      "div",
      { className: "tracin-pane tracin-pane-ranking", testid: "tracin-pane-ranking", hidden: true },
      table.el,
      charts.el,
    ),
  };

  /** Show the pane of tab ("test" | "ranking"). */
  function show(tab) {
    for (const [t, pane] of Object.entries(panes)) pane.hidden = t !== tab;
  }

  function renderPickNote() {
    const q = model.get("query") || {};
    const waiting = !ctx.hasTest() && !q.source;
    pickNote.hidden = !waiting;
    gallery.el.hidden = waiting;
  }

  /** Without a test set: no strip (nor its filter and paging), the first tab explains a training example. */
  function renderTestSet() {
    const has = ctx.hasTest();
    ctx.root.classList.toggle("has-no-test", !has);
    strip.el.hidden = !has;
    renderPickNote();
  }

  ctx.listen("change:info", renderTestSet);
  ctx.listen("change:query", renderPickNote);
  renderTestSet();
  return { els: [panes.test, panes.ranking], show };
}
