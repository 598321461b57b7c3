// Flags and relabels: the `flagged` trait (sorted list of training indices) and the `relabels` trait
// ({"<training index>": new label}, string keys as JSON carries them) shared by every view.

/** @returns {Set<number>} */
export function flaggedSet(model) {
  return new Set(model.get("flagged") || []);
}

/** Whether training index i is flagged. */
export function isFlagged(model, i) {
  return (model.get("flagged") || []).includes(i);
}

function writeFlags(model, s) {
  model.set(
    "flagged",
    [...s].sort((a, b) => a - b),
  );
  model.save_changes();
}

/**
 * Toggle (or force with `on`) the flag of training index i; writes `flagged` and calls save_changes.
 * @returns {boolean} the new state
 */
export function toggleFlag(model, i, on) {
  const s = flaggedSet(model);
  const next = on === undefined ? !s.has(i) : Boolean(on);
  if (next) s.add(i);
  else s.delete(i);
  writeFlags(model, s);
  return next;
}

/** Flag (on) or unflag every index of `indices` in one `flagged` write; returns how many changed. */
export function setFlags(model, indices, on) {
  const s = flaggedSet(model);
  let changed = 0;
  for (const i of indices) {
    if (s.has(i) === Boolean(on)) continue;
    if (on) s.add(i);
    else s.delete(i);
    changed++;
  }
  if (changed) writeFlags(model, s);
  return changed;
}

/** Reflect flag state on every element carrying data-flag-item + data-index inside root. */
export function paintFlags(root, model) {
  const s = flaggedSet(model);
  for (const el of root.querySelectorAll("[data-flag-item]")) {
    const on = s.has(Number(el.dataset.index));
    el.classList.toggle("is-flagged", on);
    if (el.matches("input[type=checkbox]")) el.checked = on;
    if (el.hasAttribute("aria-pressed")) el.setAttribute("aria-pressed", String(on));
  }
}

/** The new label of training index i (null: not relabelled), from the `relabels` trait. */
export function newLabel(model, i) {
  const v = model.get("relabels")?.[String(i)];
  return v === undefined || v === null ? null : Number(v);
}

/**
 * Relabel training index i as `label` (null, or its given label, removes the relabel); writes `relabels` (a new
 * object, string keys) and calls save_changes. Returns the new label (null: none).
 */
export function setRelabel(model, i, label, given = null) {
  const next = { ...(model.get("relabels") || {}) };
  const key = String(i);
  const keep = label === null || label === undefined || Number(label) === given;
  if (keep) delete next[key];
  else next[key] = Number(label);
  model.set("relabels", next);
  model.save_changes();
  return keep ? null : Number(label);
}
