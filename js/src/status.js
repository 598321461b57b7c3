// Status above the views: the background computation's progress (with Cancel / Resume), the error banner (with
// Retry and dismiss), and the engine's notes (info.notes: what the scores are not, what was not saved).

import { h, setChildren } from "./dom.js";
import { fmtDuration, fmtInt } from "./format.js";

function createProgress(ctx) {
  const { model, rpc } = ctx;
  const text = h("span", { className: "tracin-progress-text", testid: "tracin-progress-text" });
  const fill = h("div", { className: "tracin-progress-fill" });
  const bar = h(
    "div",
    { className: "tracin-progress-bar", attrs: { role: "progressbar", "aria-valuemin": "0", "aria-valuemax": "100" } },
    fill,
  );
  const cancel = h("button", {
    type: "button",
    className: "tracin-btn",
    testid: "tracin-cancel",
    text: "Cancel",
    onClick: () => rpc.action("cancel", { run: model.get("progress_info")?.run }),
  }); // only the run shown
  const resume = h("button", {
    type: "button",
    className: "tracin-btn tracin-btn-primary",
    testid: "tracin-resume",
    text: "Resume",
    onClick: () => rpc.action("start"),
  });
  const el = h(
    "div",
    { className: "tracin-progress", testid: "tracin-progress", attrs: { "aria-live": "polite" } },
    text,
    bar,
    cancel,
    resume,
  );

  function render() {
    const status = model.get("status");
    const p = model.get("progress_info") || {};
    el.hidden = status !== "running" && status !== "cancelled";
    el.dataset.status = status;
    cancel.hidden = status !== "running";
    resume.hidden = status !== "cancelled";
    bar.hidden = status !== "running";
    const frac = Math.max(0, Math.min(1, model.get("progress") || 0));
    fill.style.width = `${(100 * frac).toFixed(1)}%`;
    bar.setAttribute("aria-valuenow", String(Math.round(100 * frac)));
    if (status === "cancelled") {
      text.textContent = "Computation cancelled.";
      return;
    }
    const step = p.steps ? `Step ${p.step}/${p.steps} · ` : "";
    const counts = p.total > 0 ? ` · ${fmtInt(p.done)} / ${fmtInt(p.total)}` : "";
    const eta = p.eta_s != null && p.total > 0 && p.done < p.total ? ` · ETA ${fmtDuration(p.eta_s)}` : "";
    text.textContent = `${step}${p.phase || "Starting"}${counts}${eta}`;
  }

  ctx.listen("change:status", render);
  ctx.listen("change:progress", render);
  ctx.listen("change:progress_info", render);
  render();
  return el;
}

function createError(ctx) {
  const { model, rpc } = ctx;
  const text = h("span", { className: "tracin-error-text", testid: "tracin-error-text" });
  const retry = h("button", {
    type: "button",
    className: "tracin-btn",
    testid: "tracin-retry",
    text: "Retry",
    onClick: () => rpc.action("start"),
  });
  const el = h(
    "div",
    { className: "tracin-error", testid: "tracin-error", attrs: { role: "alert" }, hidden: true },
    h("strong", { text: "Error: " }),
    text,
    h("span", { className: "tracin-spacer" }),
    retry,
    h("button", {
      type: "button",
      className: "tracin-btn tracin-btn-icon",
      testid: "tracin-error-dismiss",
      attrs: { "aria-label": "Dismiss error" },
      text: "×",
      onClick: () => {
        el.hidden = true;
        if (model.get("error")) {
          model.set("error", "");
          model.save_changes();
        }
      },
    }),
  );

  function show(message) {
    text.textContent = String(message || "");
    el.hidden = !message;
  }

  function render() {
    show(model.get("error"));
    retry.hidden = model.get("status") !== "error";
  }

  rpc.onError = (msg) => show(msg.message);
  ctx.listen("change:status", render);
  ctx.listen("change:error", render);
  render();
  return el;
}

function createNotes(ctx) {
  const list = h("ul", { className: "tracin-notes-list" });
  const el = h(
    "div",
    { className: "tracin-notes", testid: "tracin-notes", attrs: { role: "status" }, hidden: true },
    h("strong", { text: "Engine notes" }),
    list,
  );

  function render() {
    const notes = ctx.info().notes || [];
    setChildren(
      list,
      notes.map((n) => h("li", { testid: "tracin-note", text: String(n) })),
    );
    el.hidden = notes.length === 0;
  }

  ctx.listen("change:info", render);
  render();
  return el;
}

/** The progress bar, the error banner and the engine notes, in this order. */
export function createStatus(ctx) {
  return { els: [createProgress(ctx), createError(ctx), createNotes(ctx)] };
}
