// tracin_widgets InfluenceExplorer front end (anywidget ES module).
// Python owns the data (traits + replies to custom messages); this module only renders and sends intents.

import { createCharts } from "./charts.js";
import { fmtDuration, fmtInt } from "./codecs.js";
import { createDetails } from "./details.js";
import { h, setChildren } from "./dom.js";
import { paintFlags, toggleFlag } from "./flags.js";
import { createGallery } from "./gallery.js";
import { Rpc } from "./rpc.js";
import { createStrip } from "./strip.js";
import { createTable } from "./table.js";

// The keys of each view; every key is listed once per list with one meaning (j / k: next / previous everywhere).
const KEYS = {
  test: [
    ["← →", "previous / next test example (focus in the strip)"],
    ["← → ↑ ↓", "move between proponent or opponent tiles (focus on a tile)"],
  ],
  ranking: [
    ["↑ ↓", "previous / next row"],
    ["← →", "previous / next page"],
  ],
  all: [
    ["j k", "next / previous item of the focused list (test examples, tiles or rows)"],
    ["Enter", "open the focused tile or row in the details panel"],
    ["f", "flag / unflag the focused tile or row (else the example in the details panel)"],
    ["u", "undo the last flag change"],
    ["Esc", "close details / help"],
    ["?", "show / hide this help"],
  ],
};
const NEXT = { ArrowRight: 1, ArrowDown: 1, j: 1, ArrowLeft: -1, ArrowUp: -1, k: -1 };
const TILE_COLUMNS = 5; // .tracin-grid: five tiles a row

function isTyping(target) {
  return target?.matches?.("input:not([type=checkbox]), select, textarea, [contenteditable]");
}

/** Render one view of the explorer into el; returns the cleanup function. */
export function render({ model, el }) {
  const disposers = [];
  const listen = (event, fn) => {
    model.on(event, fn);
    disposers.push(() => model.off(event, fn));
  };
  const rpc = new Rpc(model);
  disposers.push(() => rpc.dispose());

  const root = h("div", {
    className: "tracin-root",
    testid: "tracin-root",
    tabIndex: 0,
    attrs: { role: "application", "aria-label": "TracIn influence explorer" },
  });
  const state = { tab: "explore", current: null, history: [] };

  const ctx = {
    model,
    rpc,
    root,
    state,
    listen,
    info: () => model.get("info") || {},
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
      showTab("explore");
    },
    back() {
      const q = state.history.pop();
      if (q) ctx.setQuery(q, false);
    },
    canGoBack: () => state.history.length > 0,
    openDetails(i) {
      state.current = i;
      details.show(i);
    },
    announce(text) {
      live.textContent = text;
    },
  };

  // ---- header: title, tabs, flag count, help ------------------------------------------------------------------
  const subtitle = h("span", { className: "tracin-muted tracin-subtitle" });
  const flagCount = h("span", { className: "tracin-flag-count", testid: "tracin-flag-count" });
  // The tabs: tracin-tab-test / tracin-tab-ranking (role="tab", aria-selected); their labels keep the older testids.
  const tabLabelExplore = h("span", { testid: "tracin-tab-explore", text: "Test predictions" });
  const tabExplore = h(
    "button",
    {
      type: "button",
      className: "tracin-tab",
      testid: "tracin-tab-test",
      attrs: { role: "tab", "aria-selected": "false" },
      onClick: () => showTab("explore"),
    },
    tabLabelExplore,
  );
  const tabTable = h(
    "button",
    {
      type: "button",
      className: "tracin-tab",
      testid: "tracin-tab-ranking",
      attrs: { role: "tab", "aria-selected": "false" },
      onClick: () => showTab("table"),
    },
    h("span", { testid: "tracin-tab-table", text: "Self-influence" }),
  );
  const helpBtn = h("button", {
    type: "button",
    className: "tracin-btn tracin-btn-icon",
    testid: "tracin-help-button",
    attrs: { "aria-label": "Keyboard shortcuts" },
    text: "?",
    onClick: () => toggleHelp(),
  });
  const header = h(
    "header",
    { className: "tracin-header" },
    h(
      "div",
      { className: "tracin-brand" },
      h("span", { className: "tracin-title", text: "TracIn explorer" }),
      subtitle,
    ),
    h("div", { className: "tracin-tabs", attrs: { role: "tablist" } }, tabExplore, tabTable),
    h("span", { className: "tracin-spacer" }),
    flagCount,
    helpBtn,
  );

  // ---- progress (running / cancelled) ------------------------------------------------------------------------
  const progText = h("span", { className: "tracin-progress-text", testid: "tracin-progress-text" });
  const progFill = h("div", { className: "tracin-progress-fill" });
  const progBar = h(
    "div",
    { className: "tracin-progress-bar", attrs: { role: "progressbar", "aria-valuemin": "0", "aria-valuemax": "100" } },
    progFill,
  );
  const cancelBtn = h("button", {
    type: "button",
    className: "tracin-btn",
    testid: "tracin-cancel",
    text: "Cancel",
    onClick: () => rpc.action("cancel", { run: model.get("progress_info")?.run }),
  }); // only the run shown
  const resumeBtn = h("button", {
    type: "button",
    className: "tracin-btn tracin-btn-primary",
    testid: "tracin-resume",
    text: "Resume",
    onClick: () => rpc.action("start"),
  });
  const progress = h(
    "div",
    { className: "tracin-progress", testid: "tracin-progress", attrs: { "aria-live": "polite" } },
    progText,
    progBar,
    cancelBtn,
    resumeBtn,
  );

  // ---- error banner -------------------------------------------------------------------------------------------
  const errText = h("span", { className: "tracin-error-text", testid: "tracin-error-text" });
  const retryBtn = h("button", {
    type: "button",
    className: "tracin-btn",
    testid: "tracin-retry",
    text: "Retry",
    onClick: () => rpc.action("start"),
  });
  const errBanner = h(
    "div",
    { className: "tracin-error", testid: "tracin-error", attrs: { role: "alert" }, hidden: true },
    h("strong", { text: "Error: " }),
    errText,
    h("span", { className: "tracin-spacer" }),
    retryBtn,
    h("button", {
      type: "button",
      className: "tracin-btn tracin-btn-icon",
      testid: "tracin-error-dismiss",
      attrs: { "aria-label": "Dismiss error" },
      text: "×",
      onClick: () => {
        errBanner.hidden = true;
        if (model.get("error")) {
          model.set("error", "");
          model.save_changes();
        }
      },
    }),
  );
  // ---- notes: the engine's warnings (what the scores are not, what was not saved) ---------------------------
  const notesList = h("ul", { className: "tracin-notes-list" });
  const notesBox = h(
    "div",
    { className: "tracin-notes", testid: "tracin-notes", attrs: { role: "status" }, hidden: true },
    h("strong", { text: "Engine notes" }),
    notesList,
  );
  function renderNotes() {
    const notes = ctx.info().notes || [];
    setChildren(
      notesList,
      notes.map((n) => h("li", { testid: "tracin-note", text: String(n) })),
    );
    notesBox.hidden = notes.length === 0;
  }

  rpc.onError = (msg) => showError(msg.message);
  function showError(text) {
    errText.textContent = String(text || "");
    errBanner.hidden = !text;
  }

  // ---- help overlay: the keys of each view ----------------------------------------------------------------------
  const helpSections = [
    ["test", "Test predictions"],
    ["ranking", "Self-influence ranking"],
    ["all", "Both views"],
  ].map(([view, title]) => {
    const rows = KEYS[view].map(([k, d]) => {
      const pair = [h("span", {}, h("kbd", { text: k })), h("span", { text: d })];
      return { k, pair };
    });
    const heading = h("div", { className: "tracin-keys-title", text: title });
    const el = h(
      "section",
      { testid: `tracin-help-${view}`, attrs: { "aria-label": title } },
      heading,
      h(
        "div",
        { className: "tracin-kv tracin-keys" },
        rows.map((r) => r.pair),
      ),
    );
    return { view, el, heading, rows };
  });
  const help = h(
    "div",
    {
      className: "tracin-help",
      testid: "tracin-help",
      hidden: true,
      attrs: { role: "dialog", "aria-label": "Keyboard shortcuts" },
    },
    h(
      "div",
      { className: "tracin-toolbar" },
      h("span", { className: "tracin-section-title", text: "Keyboard shortcuts" }),
      h("span", { className: "tracin-spacer" }),
      h("button", {
        type: "button",
        className: "tracin-btn tracin-btn-icon",
        attrs: { "aria-label": "Close help" },
        text: "×",
        onClick: () => toggleHelp(false),
      }),
    ),
    helpSections.map((sec) => sec.el),
    h("p", {
      className: "tracin-muted",
      text: "Click inside the explorer first so that it receives the keys. Flags are shared by all views and live in explorer.flagged.",
    }),
  );
  function toggleHelp(on) {
    help.hidden = on === undefined ? !help.hidden : !on;
  }

  // ---- views --------------------------------------------------------------------------------------------------
  const live = h("div", { className: "tracin-sr-only", testid: "tracin-live", attrs: { "aria-live": "polite" } });
  const details = createDetails(ctx);
  const strip = createStrip(ctx);
  disposers.push(() => strip.dispose());
  const gallery = createGallery(ctx);
  const table = createTable(ctx);
  ctx.table = table;
  const charts = createCharts(ctx);
  ctx.charts = charts;
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
      onClick: () => showTab("table"),
    }),
    ", click a row, then “Show its proponents →”: the training examples that raised (proponents) or lowered " +
      "(opponents) its score appear here.",
  );
  const explore = h("div", { className: "tracin-pane", testid: "tracin-pane-explore" }, strip.el, pickNote, gallery.el);
  const tablePane = h(
    "div",
    { className: "tracin-pane tracin-pane-table", testid: "tracin-pane-table", hidden: true },
    table.el,
    charts.el,
  );
  const body = h(
    "div",
    { className: "tracin-body" },
    h("div", { className: "tracin-main" }, explore, tablePane),
    details.el,
  );
  root.append(header, progress, errBanner, notesBox, help, body, live);

  const hasTest = () => Boolean(ctx.info().n_test);

  /** Show a tab ("explore" | "table"); write = also tell Python (the view trait), unless it came from there. */
  function showTab(tab, write = true) {
    state.tab = tab;
    explore.hidden = tab !== "explore";
    tablePane.hidden = tab !== "table";
    for (const [b, t] of [
      [tabExplore, "explore"],
      [tabTable, "table"],
    ]) {
      b.classList.toggle("is-active", t === tab);
      b.setAttribute("aria-selected", String(t === tab));
    }
    const view = tab === "table" ? "ranking" : "test";
    if (write && model.get("view") !== view) {
      model.set("view", view);
      model.save_changes();
    }
    if (tab === "table") table.fetch();
  }

  /** Without a test set: no strip (nor its filter and paging), the first tab explains a training example. */
  function renderTestSet() {
    const has = hasTest();
    root.classList.toggle("has-no-test", !has);
    strip.el.hidden = !has;
    tabLabelExplore.textContent = has ? "Test predictions" : "Explain an example";
    tabExplore.title = has ? "" : "Proponents and opponents of a training example chosen in the Self-influence ranking";
    helpSections[0].heading.textContent = has ? "Test predictions" : "Explain an example";
    for (const r of helpSections[0].rows) for (const el of r.pair) el.hidden = !has && r.k === "← →";
    renderPickNote();
  }

  function renderPickNote() {
    const q = model.get("query") || {};
    const waiting = !hasTest() && !q.source;
    pickNote.hidden = !waiting;
    gallery.el.hidden = waiting;
  }

  function renderHeader() {
    const info = ctx.info();
    subtitle.textContent = `${info.engine || ""} · ${fmtInt(info.n_train)} training · ${fmtInt(info.n_test)} test`;
    const n = (model.get("flagged") || []).length;
    flagCount.textContent = `⚑ ${fmtInt(n)} flagged`;
    flagCount.classList.toggle("is-active", n > 0);
  }

  function renderProgress() {
    const status = model.get("status");
    const p = model.get("progress_info") || {};
    progress.hidden = status !== "running" && status !== "cancelled";
    progress.dataset.status = status;
    cancelBtn.hidden = status !== "running";
    resumeBtn.hidden = status !== "cancelled";
    progBar.hidden = status !== "running";
    const frac = Math.max(0, Math.min(1, model.get("progress") || 0));
    progFill.style.width = `${(100 * frac).toFixed(1)}%`;
    progBar.setAttribute("aria-valuenow", String(Math.round(100 * frac)));
    if (status === "cancelled") {
      progText.textContent = "Computation cancelled.";
      return;
    }
    const step = p.steps ? `Step ${p.step}/${p.steps} · ` : "";
    const counts = p.total > 0 ? ` · ${fmtInt(p.done)} / ${fmtInt(p.total)}` : "";
    const eta = p.eta_s != null && p.total > 0 && p.done < p.total ? ` · ETA ${fmtDuration(p.eta_s)}` : "";
    progText.textContent = `${step}${p.phase || "Starting"}${counts}${eta}`;
  }

  function renderError() {
    const e = model.get("error");
    showError(e);
    retryBtn.hidden = model.get("status") !== "error";
  }

  // ---- keyboard: keys act on the focused tile or row, else on the current tab --------------------------------------
  /** Move the focus from gallery tile t by delta within its grid (← → and j k by one, ↑ ↓ by a row). */
  function moveTile(t, delta) {
    const tiles = [...t.parentElement.querySelectorAll(".tracin-tile")];
    const to = tiles[tiles.indexOf(t) + delta];
    if (to) to.focus();
  }

  function flagKey(target) {
    const holder = target?.closest?.(".tracin-tile, .tracin-table-row, .tracin-flag-toggle");
    if (!holder && target?.closest?.(".tracin-test-item")) {
      ctx.announce("Test examples are not flagged: flag their proponents or opponents.");
      return true;
    }
    const i = holder ? Number(holder.dataset.index) : (details.index ?? state.current);
    if (i === null || i === undefined || Number.isNaN(i)) return false;
    const on = toggleFlag(model, i);
    ctx.announce(`${on ? "Flagged" : "Unflagged"} training example ${i}`);
    return true;
  }

  function onKey(e) {
    if (e.ctrlKey || e.metaKey || e.altKey) return;
    if (e.key === "Escape") {
      if (!help.hidden) toggleHelp(false);
      else details.hide();
      return;
    }
    if (isTyping(e.target)) return;
    let handled = true;
    const k = e.key;
    const step = NEXT[k];
    const tile = e.target?.closest?.(".tracin-tile");
    const tr = e.target?.closest?.(".tracin-table-row");
    const testItem = e.target?.closest?.(".tracin-test-item");
    if (k === "?") toggleHelp();
    else if (k === "f" || k === "F") handled = flagKey(e.target);
    else if (k === "u" || k === "U") {
      rpc.action("undo");
      ctx.announce("Undo");
    } else if (step && tile) moveTile(tile, k === "ArrowUp" || k === "ArrowDown" ? step * TILE_COLUMNS : step);
    else if (step && tr) {
      if (k === "ArrowRight" || k === "ArrowLeft") table.page(step);
      else table.move(step, tr);
    } else if (step && testItem) strip.move(step);
    else if (state.tab === "explore" && step && hasTest()) strip.move(step);
    else if (state.tab === "table" && (k === "ArrowDown" || k === "j")) table.move(1);
    else if (state.tab === "table" && (k === "ArrowUp" || k === "k")) table.move(-1);
    else if (state.tab === "table" && k === "ArrowRight") table.page(1);
    else if (state.tab === "table" && k === "ArrowLeft") table.page(-1);
    else if (state.tab === "table" && k === "Enter" && e.target?.matches?.("tr, .tracin-root")) table.openFocused();
    else handled = false;
    if (handled) {
      e.preventDefault();
      e.stopPropagation();
    }
  }
  // Listened for on the window, in the capture phase: the host's shortcuts (Lumino's, e.g. Notebook 7's arrow keys)
  // otherwise stop some keys before they reach the widget. Only keys aimed inside this view are handled.
  const win = root.ownerDocument.defaultView || window;
  const onWindowKey = (e) => {
    if (root.contains(e.target)) onKey(e);
  };
  win.addEventListener("keydown", onWindowKey, true);

  const repaintFlags = () => {
    paintFlags(root, model);
    renderHeader();
  };
  listen("change:flagged", repaintFlags);
  listen("change:info", renderHeader);
  listen("change:info", renderNotes);
  listen("change:status", () => {
    renderProgress();
    renderError();
  });
  listen("change:progress", renderProgress);
  listen("change:progress_info", renderProgress);
  listen("change:error", renderError);

  listen("change:view", () => showTab(model.get("view") === "ranking" ? "table" : "explore", false));
  listen("change:info", renderTestSet);
  listen("change:query", renderPickNote);

  renderTestSet();
  showTab(
    model.get("view") === "ranking" || (model.get("view") === undefined && !hasTest()) ? "table" : "explore",
    false,
  );
  renderHeader();
  renderNotes();
  renderProgress();
  renderError();
  el.append(root);

  return () => {
    win.removeEventListener("keydown", onWindowKey, true);
    for (const d of disposers.splice(0)) d();
    setChildren(el);
  };
}

export default { render };
