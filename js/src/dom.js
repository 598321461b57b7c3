// Tiny DOM helpers. Text is always inserted as text (textContent / text nodes), never as HTML.

/**
 * Create an element.
 * @param {string} tag
 * @param {Record<string, any>} [props] className, testid, dataset, attrs, text, style, on{Event} handlers,
 *   or any other DOM property (e.g. type, disabled, tabIndex, value).
 * @param {...(Node|string|number|null|undefined|false)} children strings become text nodes
 * @returns {HTMLElement}
 */
export function h(tag, props = {}, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(props || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k === "className") el.className = v;
    else if (k === "testid") el.setAttribute("data-testid", v);
    else if (k === "text") el.textContent = String(v);
    else if (k === "dataset") for (const [dk, dv] of Object.entries(v)) el.dataset[dk] = String(dv);
    else if (k === "attrs")
      for (const [ak, av] of Object.entries(v)) {
        if (av !== null && av !== undefined && av !== false) el.setAttribute(ak, String(av));
      }
    else if (k === "style") el.setAttribute("style", v);
    else if (k.startsWith("on") && typeof v === "function") el.addEventListener(k.slice(2).toLowerCase(), v);
    else el[k] = v;
  }
  append(el, children);
  return el;
}

/** Append children (strings as text nodes). */
export function append(el, children) {
  for (const c of children.flat(Infinity)) {
    if (c === null || c === undefined || c === false) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return el;
}

const SVG_NS = "http://www.w3.org/2000/svg";

/** Create an SVG element with attributes. */
export function svg(tag, attrs = {}, ...children) {
  const el = document.createElementNS(SVG_NS, tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === undefined || v === null) continue;
    if (k === "text") el.textContent = String(v);
    else if (k === "testid") el.setAttribute("data-testid", v);
    else if (k.startsWith("on") && typeof v === "function") el.addEventListener(k.slice(2).toLowerCase(), v);
    else el.setAttribute(k, String(v));
  }
  for (const c of children.flat(Infinity)) if (c) el.append(c);
  return el;
}

/** Replace all children of el. */
export function setChildren(el, ...children) {
  el.replaceChildren();
  return append(el, children);
}

/** Toggle a class. */
export function cls(el, name, on) {
  el.classList.toggle(name, Boolean(on));
  return el;
}
