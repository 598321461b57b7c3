// The header: title and sizes, the two tabs (named as the `view` trait: "test" | "ranking"), the flag count, and the
// keyboard help (its button here, its dialog listing keys.js's KEYS).

import { h } from "./dom.js";
import { fmtInt } from "./format.js";
import { KEYS } from "./keys.js";

const TEST_TITLE = "Proponents and opponents of a training example chosen in the Self-influence ranking";

/** The keyboard help dialog: one section per view; the "test" one follows whether there is a test set. */
function createHelp() {
  const sections = [
    ["test", "Test predictions"],
    ["ranking", "Self-influence ranking"],
    ["all", "Both views"],
  ].map(([view, title]) => {
    const rows = KEYS[view].map(([k, d]) => ({
      k,
      pair: [h("span", {}, h("kbd", { text: k })), h("span", { text: d })],
    }));
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
    return { el, heading, rows };
  });
  const el = h(
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
        onClick: () => toggle(false),
      }),
    ),
    sections.map((s) => s.el),
    h("p", {
      className: "tracin-muted",
      text:
        "Click inside the explorer first so that it receives the keys. Flags and relabels are shared by all views and " +
        "live in explorer.flagged and explorer.relabels.",
    }),
  );
  let anchor = null; // the "?" button: the dialog opens under it, never over it
  /** Show (on), hide (!on) or flip (on undefined) the dialog. */
  function toggle(on) {
    el.hidden = on === undefined ? !el.hidden : !on;
    const parent = el.offsetParent || el.parentElement;
    if (!el.hidden && anchor && parent) {
      const below = anchor.getBoundingClientRect().bottom - parent.getBoundingClientRect().top;
      el.style.top = `${Math.max(0, Math.round(below + 6))}px`;
    }
  }
  function renderTestSet(has) {
    sections[0].heading.textContent = has ? "Test predictions" : "Explain an example";
    for (const r of sections[0].rows) for (const cell of r.pair) cell.hidden = !has && r.k === "← →";
  }
  return {
    el,
    toggle,
    renderTestSet,
    setAnchor(button) {
      anchor = button;
    },
    get hidden() {
      return el.hidden;
    },
  };
}

function tabButton(ctx, tab, testid, label) {
  return h(
    "button",
    {
      type: "button",
      className: "tracin-tab",
      testid,
      attrs: { role: "tab", "aria-selected": "false" },
      onClick: () => ctx.showTab(tab),
    },
    label,
  );
}

export function createHeader(ctx) {
  const { model } = ctx;
  const help = createHelp();
  const subtitle = h("span", { className: "tracin-muted tracin-subtitle" });
  const flagCount = h("span", { className: "tracin-flag-count", testid: "tracin-flag-count" });
  const testLabel = h("span", { text: "Test predictions" });
  const tabs = {
    test: tabButton(ctx, "test", "tracin-tab-test", testLabel),
    ranking: tabButton(ctx, "ranking", "tracin-tab-ranking", h("span", { text: "Self-influence" })),
  };
  const helpButton = h("button", {
    type: "button",
    className: "tracin-btn tracin-btn-icon",
    testid: "tracin-help-button",
    attrs: { "aria-label": "Keyboard shortcuts" },
    text: "?",
    onClick: () => help.toggle(),
  });
  const el = h(
    "header",
    { className: "tracin-header" },
    h(
      "div",
      { className: "tracin-brand" },
      h("span", { className: "tracin-title", text: "TracIn explorer" }),
      subtitle,
    ),
    h("div", { className: "tracin-tabs", attrs: { role: "tablist" } }, tabs.test, tabs.ranking),
    h("span", { className: "tracin-spacer" }),
    flagCount,
    helpButton,
  );
  help.setAnchor(helpButton);

  /** Mark tab ("test" | "ranking") as the selected one. */
  function setTab(tab) {
    for (const [t, b] of Object.entries(tabs)) {
      b.classList.toggle("is-active", t === tab);
      b.setAttribute("aria-selected", String(t === tab));
    }
  }

  /** Without a test set the "test" tab explains a training example chosen in the ranking. */
  function renderTestSet() {
    const has = ctx.hasTest();
    testLabel.textContent = has ? "Test predictions" : "Explain an example";
    tabs.test.title = has ? "" : TEST_TITLE;
    help.renderTestSet(has);
  }

  function render() {
    const info = ctx.info();
    subtitle.textContent = `${info.engine || ""} · ${fmtInt(info.n_train)} training · ${fmtInt(info.n_test)} test`;
    const n = (model.get("flagged") || []).length;
    const r = Object.keys(model.get("relabels") || {}).length;
    flagCount.textContent = `⚑ ${fmtInt(n)} flagged${r ? ` · ${fmtInt(r)} relabelled` : ""}`;
    flagCount.classList.toggle("is-active", n > 0 || r > 0);
  }

  ctx.listen("change:flagged", render);
  ctx.listen("change:relabels", render);
  ctx.listen("change:info", render);
  ctx.listen("change:info", renderTestSet);
  return { el, help, setTab, render, renderTestSet };
}
