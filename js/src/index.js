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

const KEYS = [
  ["← → / j k", "previous / next test example (Test predictions tab)"],
  ["↑ ↓ / j k", "previous / next row (Self-influence tab)"],
  ["← →", "previous / next page (Self-influence tab)"],
  ["Enter", "open the focused row or tile"],
  ["f", "flag / unflag the current training example"],
  ["u", "undo the last flag change"],
  ["Esc", "close details / help"],
  ["?", "show / hide this help"],
];

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
  const tabExplore = h("button", {
    type: "button",
    className: "tracin-tab",
    testid: "tracin-tab-explore",
    text: "Test predictions",
    attrs: { role: "tab" },
    onClick: () => showTab("explore"),
  });
  const tabTable = h("button", {
    type: "button",
    className: "tracin-tab",
    testid: "tracin-tab-table",
    text: "Self-influence",
    attrs: { role: "tab" },
    onClick: () => showTab("table"),
  });
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
  rpc.onError = (msg) => showError(msg.message);
  function showError(text) {
    errText.textContent = String(text || "");
    errBanner.hidden = !text;
  }

  // ---- help overlay -------------------------------------------------------------------------------------------
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
    h(
      "div",
      { className: "tracin-kv tracin-keys" },
      KEYS.map(([k, d]) => [h("span", {}, h("kbd", { text: k })), h("span", { text: d })]),
    ),
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
  const gallery = createGallery(ctx);
  const table = createTable(ctx);
  ctx.table = table;
  const charts = createCharts(ctx);
  ctx.charts = charts;
  const explore = h("div", { className: "tracin-pane", testid: "tracin-pane-explore" }, strip.el, gallery.el);
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
  root.append(header, progress, errBanner, help, body, live);

  function showTab(tab) {
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
    if (tab === "table") table.fetch();
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

  // ---- keyboard -----------------------------------------------------------------------------------------------
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
    if (k === "?") toggleHelp();
    else if (k === "f" || k === "F") {
      const i = details.index ?? state.current;
      if (i === null || i === undefined) handled = false;
      else {
        const on = toggleFlag(model, i);
        ctx.announce(`${on ? "Flagged" : "Unflagged"} training example ${i}`);
      }
    } else if (k === "u" || k === "U") {
      rpc.action("undo");
      ctx.announce("Undo");
    } else if (state.tab === "explore" && (k === "ArrowRight" || k === "ArrowDown" || k === "j")) strip.move(1);
    else if (state.tab === "explore" && (k === "ArrowLeft" || k === "ArrowUp" || k === "k")) strip.move(-1);
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
  root.addEventListener("keydown", onKey);

  const repaintFlags = () => {
    paintFlags(root, model);
    renderHeader();
  };
  listen("change:flagged", repaintFlags);
  listen("change:info", renderHeader);
  listen("change:status", () => {
    renderProgress();
    renderError();
  });
  listen("change:progress", renderProgress);
  listen("change:progress_info", renderProgress);
  listen("change:error", renderError);

  showTab("explore");
  renderHeader();
  renderProgress();
  renderError();
  el.append(root);

  return () => {
    root.removeEventListener("keydown", onKey);
    for (const d of disposers.splice(0)) d();
    setChildren(el);
  };
}

export default { render };
