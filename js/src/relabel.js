// Relabelling from the details panel: the suggested label (with what was measured), a select of the class names
// that writes the `relabels` trait, and "accept the suggestion" (the button, or the `a` key: keys.js).

import { h } from "./dom.js";
import { newLabel, setRelabel } from "./flags.js";
import { className } from "./format.js";

/** The number of classes: the class names, else info.n_classes, else one past the largest label seen. */
export function classCount(ctx, ...labels) {
  const names = ctx.model.get("class_names") || [];
  const seen = labels.filter((v) => v !== null && v !== undefined).map((v) => Number(v) + 1);
  return Math.max(names.length, ctx.info().n_classes || 0, ...seen, 0);
}

/** Accept the suggestion for training index i (given label `given`): relabels[i] = suggested. */
export function acceptSuggestion(ctx, i, suggested, given) {
  if (suggested === null || suggested === undefined) {
    ctx.announce(`Training example ${i} has no suggested label`);
    return false;
  }
  setRelabel(ctx.model, i, suggested, given);
  ctx.announce(`Relabelled training example ${i} as ${className(ctx.model.get("class_names"), suggested)}`);
  return true;
}

/** The suggested label, in words, with the measurement in its title (item: a Row). */
export function suggestedLine(names, item) {
  const has = item.suggested !== null && item.suggested !== undefined;
  return h("span", {
    className: `tracin-name${has ? " tracin-suggested" : " tracin-muted"}`,
    testid: "tracin-suggested-label",
    dataset: { suggested: has ? item.suggested : "" },
    title: item.badge || (has ? className(names, item.suggested) : "the checkpoints' average prediction is its label"),
    text: has ? className(names, item.suggested) : "none",
  });
}

/** The relabel select and the accept button for row `item`. */
export function relabelControls(ctx, item) {
  const { model } = ctx;
  const names = model.get("class_names");
  const current = newLabel(model, item.index);
  const n = classCount(ctx, item.label, item.suggested, current);
  const select = h(
    "select",
    {
      className: "tracin-select tracin-relabel",
      testid: "tracin-relabel",
      attrs: { "aria-label": `New label of training example ${item.index}` },
      onChange: () => {
        const v = select.value === "" ? null : Number(select.value);
        const got = setRelabel(model, item.index, v, item.label);
        ctx.announce(
          got === null
            ? `Training example ${item.index} keeps its label`
            : `Relabelled training example ${item.index} as ${className(names, got)}`,
        );
      },
    },
    h("option", { value: "", text: `keep ${className(names, item.label)}` }),
    Array.from({ length: n }, (_, c) =>
      c === item.label
        ? null
        : h("option", {
            value: String(c),
            text: `${className(names, c)}${c === item.suggested ? " (suggested)" : ""}`,
            selected: c === current,
          }),
    ),
  );
  select.value = current === null ? "" : String(current);
  const has = item.suggested !== null && item.suggested !== undefined;
  const accept = has
    ? h("button", {
        type: "button",
        className: "tracin-btn",
        testid: "tracin-accept-suggestion",
        disabled: current === item.suggested,
        text: current === item.suggested ? "✓ suggestion accepted" : `Accept ${className(names, item.suggested)} (a)`,
        title: item.badge || "",
        onClick: () => acceptSuggestion(ctx, item.index, item.suggested, item.label),
      })
    : null;
  return h(
    "div",
    { className: "tracin-relabel-row" },
    h("label", { className: "tracin-inline" }, "relabel ", select),
    accept,
  );
}
