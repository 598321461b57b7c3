// Details of one training example: larger image, label, prediction, self-influence rank, flag toggle, walk on.

import { className, fmtInt, fmtProb, fmtScore, imageElement } from "./codecs.js";
import { h, setChildren } from "./dom.js";
import { isFlagged, toggleFlag } from "./flags.js";

export function createDetails(ctx) {
  const { model, rpc } = ctx;
  const body = h("div", { className: "tracin-details-body" });
  const close = h("button", {
    type: "button",
    className: "tracin-btn tracin-btn-icon",
    testid: "tracin-details-close",
    attrs: { "aria-label": "Close details" },
    text: "×",
    onClick: () => hide(),
  });
  const el = h(
    "aside",
    {
      className: "tracin-details",
      testid: "tracin-details",
      hidden: true,
      attrs: { "aria-label": "Training example details" },
    },
    h(
      "div",
      { className: "tracin-toolbar" },
      h("span", { className: "tracin-section-title", text: "Training example" }),
      h("span", { className: "tracin-spacer" }),
      close,
    ),
    body,
  );
  let index = null;

  function show(i) {
    index = i;
    el.hidden = false;
    el.dataset.index = String(i);
    setChildren(body, h("div", { className: "tracin-muted", text: `#${i} …` }));
    rpc.request("detail", { index: i });
  }

  function hide() {
    index = null;
    el.hidden = true;
    delete el.dataset.index;
  }

  rpc.on("detail", (msg) => {
    const it = msg.item;
    if (!it || it.index !== index) return;
    const names = model.get("class_names");
    const n = ctx.info().n_train;
    const flagged = isFlagged(model, it.index);
    const wrong = it.pred != null && it.pred !== it.label;
    const toggle = h(
      "button",
      {
        type: "button",
        className: `tracin-btn tracin-flag-toggle${flagged ? " is-flagged" : ""}`,
        testid: "tracin-flag-toggle",
        dataset: { index: it.index, flagItem: "" },
        attrs: { "aria-pressed": String(flagged) },
        onClick: () => toggleFlag(model, it.index),
      },
      h("span", { className: "tracin-flag-on", text: "⚑ Flagged" }),
      h("span", { className: "tracin-flag-off", text: "⚐ Flag (f)" }),
    );
    const walk = h("button", {
      type: "button",
      className: "tracin-btn tracin-btn-primary",
      testid: "tracin-walk",
      text: "Show its proponents →",
      onClick: () => ctx.walk(it.index),
    });
    const top = it.rank != null && n ? (100 * it.rank) / n : null;
    setChildren(
      body,
      imageElement(it.image, "tracin-img tracin-img-detail", `training example ${it.index}`),
      h(
        "dl",
        { className: "tracin-dl" },
        h("dt", { text: "index" }),
        h("dd", { className: "tracin-mono", text: `#${it.index}` }),
        h("dt", { text: "label" }),
        h("dd", {}, h("strong", { testid: "tracin-details-label", text: className(names, it.label) })),
        h("dt", { text: "predicted" }),
        h(
          "dd",
          { className: wrong ? "tracin-wrong" : "" },
          it.pred == null ? "…" : `${className(names, it.pred)} ${fmtProb(it.prob)}`,
        ),
        h("dt", { text: "self-influence" }),
        h(
          "dd",
          { testid: "tracin-details-rank" },
          it.rank == null
            ? "computing…"
            : `${fmtScore(it.score)} · rank ${fmtInt(it.rank)} of ${fmtInt(n)}${top !== null ? ` (top ${top < 1 ? top.toFixed(2) : Math.round(top)}%)` : ""}`,
        ),
      ),
      h("div", { className: "tracin-actions" }, toggle, walk),
    );
    ctx.setCurrent(it.index);
  });

  return {
    el,
    show,
    hide,
    get index() {
      return index;
    },
  };
}
