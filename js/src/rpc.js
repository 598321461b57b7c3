// Request/response over custom messages (quak pattern): every request carries an id; a reply is delivered only
// if it answers the newest request of its kind, so a stale response never overwrites a newer one.
import { resolveBuffers } from "./codecs.js";

export class Rpc {
  /** @param {any} model anywidget model */
  constructor(model) {
    this.model = model;
    // ids are unique per view: replies are broadcast to every view of the model, each keeps only its own
    this.prefix = `v${Math.random().toString(36).slice(2, 10)}-`;
    this.nextId = 1;
    /** @type {Record<string, string>} newest request id per kind */
    this.latest = {};
    /** @type {Record<string, (msg: any) => void>} */
    this.handlers = {};
    /** @type {(msg: any) => void} */
    this.onError = () => {};
    /** @type {((msg: any) => void)[]} see watch() */
    this.watchers = [];
    /** @type {Record<string, {resolve: (msg: any) => void, reject: (err: Error) => void}>} see call() */
    this.calls = {};
    this.onMessage = (msg, buffers) => this.receive(msg, buffers);
    model.on("msg:custom", this.onMessage);
  }

  /** Send {kind, id, ...payload}; returns the id. */
  request(kind, payload = {}) {
    const id = `${this.prefix}${this.nextId++}`;
    this.latest[kind] = id;
    this.model.send({ kind, id, ...payload });
    return id;
  }

  /**
   * A one-off request whose reply goes to the returned promise only (never to the kind's handler, and it does not
   * make the kind's newest request stale): rejects with the error reply's message.
   */
  call(kind, payload = {}) {
    const id = `${this.prefix}${this.nextId++}`;
    const done = new Promise((resolve, reject) => {
      this.calls[id] = { resolve, reject };
    });
    this.model.send({ kind, id, ...payload });
    return done;
  }

  /** Fire-and-forget action (cancel, start, undo), with optional extra fields. */
  action(kind, payload = {}) {
    this.model.send({ kind, ...payload });
  }

  /** Register the handler of reply kind `kind`. */
  on(kind, fn) {
    this.handlers[kind] = fn;
  }

  /** Also call fn(msg) with every reply delivered to its handler (buffers resolved), after the handler. */
  watch(fn) {
    this.watchers.push(fn);
  }

  /** True when id is the newest request of kind. */
  isLatest(kind, id) {
    return this.latest[kind] === id;
  }

  receive(msg, buffers) {
    if (!msg || typeof msg !== "object") return;
    const call = msg.id !== undefined && msg.id !== null ? this.calls[msg.id] : undefined;
    if (call) {
      delete this.calls[msg.id];
      if (msg.kind === "error") call.reject(new Error(msg.message));
      else call.resolve(resolveBuffers(msg, buffers || []));
      return;
    }
    if (msg.kind === "error") {
      const kind = msg.request;
      if (msg.id !== undefined && msg.id !== null && kind && !this.isLatest(kind, msg.id)) return;
      this.onError(msg);
      return;
    }
    const fn = this.handlers[msg.kind];
    if (!fn) return;
    if (msg.id !== undefined && msg.id !== null && !this.isLatest(msg.kind, msg.id)) return; // stale
    const resolved = resolveBuffers(msg, buffers || []); // a host that drops buffers passes none
    fn(resolved);
    for (const w of this.watchers) w(resolved);
  }

  dispose() {
    this.model.off("msg:custom", this.onMessage);
  }
}
