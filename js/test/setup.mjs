// Test helpers: a happy-dom global document and a FakeModel with the anywidget model API.
import { GlobalRegistrator } from "@happy-dom/global-registrator";

if (!globalThis.document) GlobalRegistrator.register({ url: "http://localhost/" });

export class FakeModel {
  constructor(state = {}) {
    this.state = { ...defaults(), ...state };
    this.listeners = new Map();
    this.sent = [];
    this.saves = 0;
  }
  get(k) {
    return this.state[k];
  }
  set(k, v) {
    const old = this.state[k];
    this.state[k] = v;
    if (old !== v) this.emit(`change:${k}`);
  }
  save_changes() {
    this.saves++;
  }
  on(ev, cb) {
    if (!this.listeners.has(ev)) this.listeners.set(ev, new Set());
    this.listeners.get(ev).add(cb);
  }
  off(ev, cb) {
    if (ev === null || ev === undefined) {
      this.listeners.clear();
      return;
    }
    if (!cb) this.listeners.delete(ev);
    else this.listeners.get(ev)?.delete(cb);
  }
  send(content, _callbacks, buffers) {
    this.sent.push({ content, buffers });
  }
  emit(ev, ...args) {
    for (const cb of [...(this.listeners.get(ev) || [])]) cb(...args);
  }
  /** Simulate Python: a trait update. */
  pyset(k, v) {
    this.set(k, v);
  }
  /** Simulate Python: a custom message. */
  reply(content, buffers = []) {
    this.emit("msg:custom", content, buffers);
  }
  count(ev) {
    return this.listeners.get(ev)?.size || 0;
  }
  lastSent(kind) {
    return [...this.sent].reverse().find((m) => m.content.kind === kind)?.content;
  }
}

export function defaults() {
  return {
    flagged: [],
    relabels: {},
    estimated_mislabelled: null,
    k: 10,
    selected_test: -1,
    query: {},
    test_page: 0,
    test_page_size: 24,
    misclassified_only: false,
    explain: "label",
    view: "test",
    error: "",
    class_names: [],
    status: "idle",
    progress: 0,
    progress_info: {},
    info: { n_train: 100, n_test: 3, has_truth: false, engine: "Fake", n_classes: 3 },
    test_strip: {},
    gallery: {},
    stats: {},
  };
}

/** A 2x2 grayscale image payload. */
export function img() {
  return { data: new DataView(new Uint8Array([0, 64, 128, 255]).buffer), shape: [2, 2, 1] };
}

export function row(index, extra = {}) {
  return {
    index,
    label: index % 3,
    pred: index % 3,
    prob: 0.9,
    score: 1.5 * index,
    rank: index + 1,
    badge: null,
    image: img(),
    ...extra,
  };
}

export function mount(render, model) {
  const el = document.createElement("div");
  document.body.append(el);
  const cleanup = render({ model, el });
  return { el, cleanup };
}

export function q(el, testid) {
  return [...el.querySelectorAll(`[data-testid="${testid}"]`)];
}

/** A rows reply to request id (images as buffers, as Python sends them). */
export function rowsReply(id, rows, total = 120, offset = 0) {
  const buffers = [];
  const packed = rows.map((r) => {
    buffers.push(img().data);
    return { ...r, image: { buffer: buffers.length - 1, shape: [2, 2, 1] } };
  });
  return [{ kind: "rows", id, pending: false, total, offset, rows: packed }, buffers];
}
