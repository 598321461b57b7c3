// tracin_widgets InfluenceExplorer front end (anywidget ES module).
// Python owns the data (traits + replies to custom messages); this module only renders and sends intents.
// render() mounts one view: one context shared by every part, the parts (header.js, status.js, the views, panes.js,
// keys.js, transport.js), and the cleanup. Tabs are named as the `view` trait: "test" | "ranking".

import { createCharts } from "./charts.js";
import { createDetails } from "./details.js";
import { h, setChildren } from "./dom.js";
import { paintFlags } from "./flags.js";
import { createGallery } from "./gallery.js";
import { createHeader } from "./header.js";
import { listenKeys } from "./keys.js";
import { createPanes } from "./panes.js";
import { Rpc } from "./rpc.js";
import { createStatus } from "./status.js";
import { createStrip } from "./strip.js";
import { createTable } from "./table.js";
import { watchImages } from "./transport.js";

/** Render one view of the explorer into el; returns the cleanup function. */
export function render({ model, el }) {
  const disposers = [];
  const rpc = new Rpc(model);
  disposers.push(() => rpc.dispose());
  const root = h("div", {
    className: "tracin-root",
    testid: "tracin-root",
    tabIndex: 0,
    attrs: { role: "application", "aria-label": "TracIn influence explorer" },
  });
  const live = h("div", { className: "tracin-sr-only", testid: "tracin-live", attrs: { "aria-live": "polite" } });
  const state = { tab: "test", current: null, history: [] };

  // What every part may use; the parts below are reached only through these functions.
  const ctx = {
    model,
    rpc,
    root,
    state,
    listen(event, fn) {
      model.on(event, fn);
      disposers.push(() => model.off(event, fn));
    },
    info: () => model.get("info") || {},
    hasTest: () => Boolean(ctx.info().n_test),
    setCurrent(i) {
      state.current = i;
    },
    selectTest(i) {
      state.history = [];
      model.set("selected_test", i);
      model.set("query", { source: "test", index: i });
      model.save_changes();
    },
    setQuery(q, push = true) {
      const cur = model.get("query");
      if (push && cur?.source) state.history.push(cur);
      model.set("query", q);
      if (q.source === "test") model.set("selected_test", q.index);
      model.save_changes();
    },
    walk(i) {
      ctx.setQuery({ source: "train", index: i });
      showTab("test");
    },
    back() {
      const q = state.history.pop();
      if (q) ctx.setQuery(q, false);
    },
    canGoBack: () => state.history.length > 0,
    /** Open training example i in the details panel; anchor: the element clicked (the drawer opens beside it). */
    openDetails(i, anchor = null) {
      state.current = i;
      details.show(i, anchor);
    },
    announce(text) {
      live.textContent = text;
    },
    showTab: (tab) => showTab(tab),
    scoreRange: () => table.state.score_range,
    setScoreRange(range) {
      table.setRange(range);
      charts.render();
    },
    gotoEstimate(n) {
      table.gotoRank(n);
      charts.render();
    },
  };

  const header = createHeader(ctx);
  const status = createStatus(ctx);
  const details = createDetails(ctx);
  const strip = createStrip(ctx);
  disposers.push(() => strip.dispose());
  const gallery = createGallery(ctx);
  const table = createTable(ctx);
  const charts = createCharts(ctx);
  const panes = createPanes(ctx, { strip, gallery, table, charts });
  const transportNote = watchImages(ctx, () => {
    if (table.rows.length) table.fetch();
    if (details.index !== null) details.show(details.index);
  });
  disposers.push(listenKeys(ctx, { help: header.help, details, strip, table }));
  const body = h("div", { className: "tracin-body" }, h("div", { className: "tracin-main" }, panes.els), details.el);
  root.append(header.el, ...status.els, transportNote, header.help.el, body, live);

  /** Show tab ("test" | "ranking"); write = also tell Python (the view trait), unless it came from there. */
  function showTab(tab, write = true) {
    state.tab = tab;
    panes.show(tab);
    header.setTab(tab);
    details.retab();
    if (write && model.get("view") !== tab) {
      model.set("view", tab);
      model.save_changes();
    }
    if (tab === "ranking") table.fetch();
  }

  ctx.listen("change:flagged", () => paintFlags(root, model));
  ctx.listen("change:view", () => showTab(model.get("view") === "ranking" ? "ranking" : "test", false));
  header.renderTestSet();
  const view = model.get("view");
  showTab(view === "ranking" || (view === undefined && !ctx.hasTest()) ? "ranking" : "test", false);
  header.render();
  el.append(root);

  return () => {
    for (const d of disposers.splice(0)) d();
    setChildren(el);
  };
}

export default { render };
