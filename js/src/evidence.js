// The evidence behind a suggested label, in the details panel (DetailReply.item.evidence): the example's own
// self-influence per checkpoint (when was it memorised?) and, per checkpoint, the model's probability of its given
// label against the suggested one.

import { h } from "./dom.js";
import { className, fmtScore } from "./format.js";

const pct = (p) => (p === null || p === undefined || !Number.isFinite(p) ? "–" : `${Math.round(100 * p)}%`);

function bar(fraction, cls) {
  const w = Math.max(0, Math.min(1, fraction || 0));
  return h(
    "span",
    { className: `tracin-ebar-track ${cls}` },
    h("span", { className: "tracin-ebar-fill", style: `width:${(100 * w).toFixed(2)}%` }),
  );
}

/** Self-influence lr_c |grad_c|^2 per checkpoint, as bars scaled to the largest term. */
export function selfInfluenceBars(ev) {
  const values = ev.self_influence || [];
  const max = Math.max(0, ...values.map((v) => Math.abs(v)));
  return values.map((v, c) => {
    const name = ev.checkpoints?.[c] ?? `checkpoint ${c + 1}`;
    const words = `${name}: self-influence ${fmtScore(v)}`;
    return h(
      "div",
      {
        className: "tracin-ebar",
        testid: "tracin-evidence-self",
        dataset: { checkpoint: name, value: String(v) },
        title: words,
        attrs: { role: "listitem", "aria-label": words },
      },
      h("span", { className: "tracin-ebar-name", text: name }),
      h("span", { className: "tracin-ebar-value tracin-mono", text: fmtScore(v) }),
      bar(max > 0 ? Math.abs(v) / max : 0, "is-self"),
    );
  });
}

/** P(given label) and P(suggested label) per checkpoint, two bars each. */
export function probabilityRows(ev, names, given, suggested) {
  const g = ev.given || [];
  const s = ev.suggested || null;
  return g.map((pg, c) => {
    const name = ev.checkpoints?.[c] ?? `checkpoint ${c + 1}`;
    const ps = s ? s[c] : null;
    const words = `${name}: p(${className(names, given)}) ${pct(pg)}${s ? `, p(${className(names, suggested)}) ${pct(ps)}` : ""}`;
    return h(
      "div",
      {
        className: "tracin-eprob",
        testid: "tracin-evidence-prob",
        dataset: { checkpoint: name, given: String(pg), ...(s ? { suggested: String(ps) } : {}) },
        title: words,
        attrs: { role: "listitem", "aria-label": words },
      },
      h("span", { className: "tracin-ebar-name", text: name }),
      h("span", { className: "tracin-eprob-key is-given", text: "label" }),
      bar(pg, "is-given"),
      h("span", { className: "tracin-ebar-value tracin-mono is-given", text: pct(pg) }),
      s ? h("span", { className: "tracin-eprob-key is-suggested", text: "suggested" }) : null,
      s ? bar(ps, "is-suggested") : null,
      s ? h("span", { className: "tracin-ebar-value tracin-mono is-suggested", text: pct(ps) }) : null,
    );
  });
}

/** The evidence section of a training row (null when Python sent none). */
export function evidenceSection(item, names) {
  const ev = item?.evidence;
  if (!ev) return null;
  const has = item.suggested !== null && item.suggested !== undefined;
  const given = className(names, item.label);
  const probTitle = has
    ? `The model's probability of its label (${given}) and of the suggestion (${className(names, item.suggested)}), by checkpoint`
    : `The model's probability of its label (${given}), by checkpoint`;
  return h(
    "section",
    { className: "tracin-evidence", testid: "tracin-evidence", attrs: { "aria-label": "Evidence by checkpoint" } },
    h("div", { className: "tracin-breakdown-title", text: "When was it memorised? Self-influence by checkpoint" }),
    h("div", { className: "tracin-cbars", attrs: { role: "list" } }, selfInfluenceBars(ev)),
    h("div", { className: "tracin-breakdown-title", text: probTitle }),
    h(
      "div",
      { className: "tracin-cbars", attrs: { role: "list" } },
      probabilityRows(ev, names, item.label, item.suggested),
    ),
  );
}
