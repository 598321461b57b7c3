// Flags: one `flagged` trait (sorted list of training indices) shared by every view.

/** @returns {Set<number>} */
export function flaggedSet(model) {
  return new Set(model.get("flagged") || []);
}

/** Whether training index i is flagged. */
export function isFlagged(model, i) {
  return (model.get("flagged") || []).includes(i);
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
  model.set(
    "flagged",
    [...s].sort((a, b) => a - b),
  );
  model.save_changes();
  return next;
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
