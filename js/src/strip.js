// Test examples: a paged strip of thumbnails with true label, predicted label and probability.

import { imageElement } from "./codecs.js";
import { h, setChildren } from "./dom.js";
import { className, fmtInt, fmtProb } from "./format.js";

export function createStrip(ctx) {
  const { model } = ctx;
  let pending = null; // "first" | "last": select that end of the page when the next page arrives

  const items = h("div", {
    className: "tracin-strip-items",
    attrs: { role: "listbox", "aria-label": "Test examples" },
  });
  const mis = h("input", {
    type: "checkbox",
    testid: "tracin-misclassified-filter",
    onChange: () => {
      model.set("misclassified_only", mis.checked);
      model.set("test_page", 0);
      model.save_changes();
    },
  });
  const pageText = h("span", { className: "tracin-muted", testid: "tracin-test-page" });
  const prev = h("button", {
    type: "button",
    className: "tracin-btn tracin-btn-icon",
    testid: "tracin-test-prev",
    attrs: { "aria-label": "Previous page of test examples" },
    text: "‹",
    onClick: () => page(-1),
  });
  const next = h("button", {
    type: "button",
    className: "tracin-btn tracin-btn-icon",
    testid: "tracin-test-next",
    attrs: { "aria-label": "Next page of test examples" },
    text: "›",
    onClick: () => page(1),
  });
  const el = h(
    "section",
    { className: "tracin-strip", attrs: { "aria-label": "Test examples" } },
    h(
      "div",
      { className: "tracin-toolbar" },
      h("span", { className: "tracin-section-title", text: "Test examples" }),
      h("label", { className: "tracin-check" }, mis, "misclassified only"),
      h("span", { className: "tracin-spacer" }),
      pageText,
      prev,
      next,
    ),
    items,
  );

  // Whole tiles only: pages hold as many tiles as fit the strip's width (measured on resize, sent as test_page_size).
  const TILE_WIDTH = 76; // .tracin-test-item width (the drawn width when there is one)
  const GAP = 6; // .tracin-strip-items gap
  let resizeTimer = null;

  /** How many tiles fit a strip whose content box (without its padding) is this wide. */
  function fitting(width) {
    const tile = items.querySelector(".tracin-test-item");
    const w = tile?.offsetWidth || TILE_WIDTH;
    return Math.max(1, Math.floor((width + GAP) / (w + GAP)));
  }

  /** Ask for pages of the tiles that fit width; the selected test example stays on the page shown. */
  function fit(width) {
    if (!(width > 0)) return; // hidden (another tab, no test set)
    const size = fitting(width);
    const s = strip();
    const old = s.page_size || model.get("test_page_size") || size;
    if (size === model.get("test_page_size") && size === old) return;
    const sel = model.get("selected_test");
    const pos = (s.items || []).findIndex((it) => it.index === sel);
    const first = (s.page || 0) * old + Math.max(0, pos);
    model.set("test_page_size", size);
    model.set("test_page", Math.floor(first / size));
    model.save_changes();
  }

  const observer =
    typeof ResizeObserver === "undefined"
      ? null
      : new ResizeObserver((entries) => {
          const width = entries[entries.length - 1].contentRect.width;
          clearTimeout(resizeTimer);
          resizeTimer = setTimeout(() => fit(width), 60); // once the resize settles
        });
  observer?.observe(items);

  function strip() {
    return model.get("test_strip") || {};
  }

  function page(delta, then = null) {
    const s = strip();
    const p = (s.page || 0) + delta;
    if (p < 0 || p >= (s.n_pages || 1)) return false;
    pending = then;
    model.set("test_page", p);
    model.save_changes();
    return true;
  }

  function render() {
    const s = strip();
    const sel = model.get("selected_test");
    const names = model.get("class_names");
    mis.checked = Boolean(model.get("misclassified_only"));
    mis.disabled = !s.has_preds;
    const n = s.total || 0;
    pageText.textContent = n
      ? `page ${(s.page || 0) + 1} / ${s.n_pages || 1} · ${fmtInt(n)} ${s.filtered ? "misclassified" : "examples"}`
      : "";
    prev.disabled = !s.page;
    next.disabled = (s.page || 0) >= (s.n_pages || 1) - 1;
    const tiles = (s.items || []).map((it) => {
      const wrong = it.pred !== null && it.pred !== undefined && it.pred !== it.label;
      const lab = className(names, it.label),
        pred = it.pred === null || it.pred === undefined ? "…" : className(names, it.pred);
      const title = `test #${it.index} · label ${lab} · predicted ${pred}${it.prob != null ? ` (${fmtProb(it.prob)})` : ""}`;
      return h(
        "button",
        {
          type: "button",
          className: `tracin-test-item${wrong ? " is-wrong" : ""}${it.index === sel ? " is-selected" : ""}`,
          testid: "tracin-test-item",
          dataset: { index: it.index },
          title,
          attrs: { role: "option", "aria-selected": String(it.index === sel), "aria-label": title },
          onClick: () => ctx.selectTest(it.index),
        },
        imageElement(it.image, "tracin-img tracin-img-strip", `test example ${it.index}`),
        h("span", { className: "tracin-cap-label", title: lab, text: lab }),
        h(
          "span",
          { className: "tracin-cap-pred" },
          h("span", { className: "tracin-cap-arrow", text: wrong ? "✗ " : "✓ " }),
          h("span", { className: "tracin-cap-name", text: pred }),
          h("span", { className: "tracin-cap-prob", text: it.prob != null ? ` ${fmtProb(it.prob)}` : "" }),
        ),
      );
    });
    setChildren(
      items,
      tiles.length
        ? tiles
        : h("div", {
            className: "tracin-empty",
            text: ctx.info().n_test
              ? s.filtered
                ? "No misclassified test examples."
                : "Loading…"
              : "No test set: pick a training example in the Self-influence tab.",
          }),
    );
    if (pending && s.items?.length) {
      const it = pending === "first" ? s.items[0] : s.items[s.items.length - 1];
      pending = null;
      ctx.selectTest(it.index);
    }
  }

  function paintSelection() {
    const sel = model.get("selected_test");
    for (const b of items.querySelectorAll(".tracin-test-item")) {
      const on = Number(b.dataset.index) === sel;
      b.classList.toggle("is-selected", on);
      b.setAttribute("aria-selected", String(on));
      if (
        on &&
        ctx.root.contains(document.activeElement) &&
        document.activeElement !== b &&
        document.activeElement.classList.contains("tracin-test-item")
      )
        b.focus();
    }
  }

  /** Keyboard: move the selection by delta within the strip, flipping pages at the ends. */
  function move(delta) {
    const its = strip().items || [];
    if (!its.length) return;
    const sel = model.get("selected_test");
    const pos = its.findIndex((it) => it.index === sel);
    const to = pos < 0 ? (delta > 0 ? 0 : its.length - 1) : pos + delta;
    if (to >= 0 && to < its.length) {
      ctx.selectTest(its[to].index);
      return;
    }
    page(delta > 0 ? 1 : -1, delta > 0 ? "first" : "last");
  }

  ctx.listen("change:test_strip", render);
  ctx.listen("change:class_names", render);
  ctx.listen("change:misclassified_only", render);
  ctx.listen("change:selected_test", paintSelection);
  render();
  return {
    el,
    move,
    render,
    fit,
    dispose() {
      clearTimeout(resizeTimer);
      observer?.disconnect();
    },
  };
}
