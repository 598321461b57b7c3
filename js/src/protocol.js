// The wire format between the Python controller (tracin_widgets/widget/_widget.py) and this front end.
// Documentation only (JSDoc types); nothing here runs. The source of truth is the TypedDicts of
// tracin_widgets/widget/_protocols.py: tests/widget/test_protocol.py drives these views under node
// (js/test/protocol_session.mjs), checks every request they send against those TypedDicts and feeds them the replies
// Python really sends, so a change on either side that the other does not follow fails there.

/**
 * Traits (model.get / model.set). "both" = written by JS and Python.
 * @typedef {Object} Model
 * @property {number[]} flagged            both: sorted unique training indices
 * @property {Record<string, number>} relabels  both: {"<training index>": new label} (string keys, as JSON carries
 *   them; Python converts), mirrored in each row's new_label
 * @property {number|null} estimated_mislabelled  Python: how many labels are estimated wrong (the rows with a
 *   suggested label; null until computed): the table's divider and the found chart's marker
 * @property {number} k                    both: gallery size
 * @property {number} selected_test        both: dataset index of the selected test example (-1: none)
 * @property {{source?: "test"|"train", index?: number}} query  both: what the galleries explain
 * @property {number} test_page            both
 * @property {number} test_page_size       both
 * @property {boolean} misclassified_only  both
 * @property {"label"|"prediction"} explain  both: which label's score the galleries explain
 * @property {"test"|"ranking"} view      both: the tab shown (the tabs' own names: header.js, panes.js)
 * @property {string} error                both: last error text ("" = none; JS clears it on dismiss)
 * @property {string[]} class_names        Python
 * @property {"idle"|"running"|"ready"|"cancelled"|"error"} status  Python
 * @property {number} progress             Python: fraction of the current phase
 * @property {{phase: string, done: number, total: number, fraction: number, eta_s: number|null, step: number, steps: number, run: number}} progress_info
 * @property {{n_train: number, n_test: number, has_truth: boolean, engine: string, n_classes: number|null,
 *   notes: string[]}} info  Python (notes: the engine's warnings so far, shown above the views as text)
 * @property {{page: number, n_pages: number, total: number, page_size: number, filtered: boolean, has_preds: boolean, items: Row[]}} test_strip  (_protocols.StripPage)
 * @property {{query: object, k: number, request: number, item: Row|null, proponents: Row[], opponents: Row[], error: string|null,
 *   explain: "label"|"prediction", explained_label: number|null, same_label: boolean}} gallery  (_protocols.Gallery)
 * @property {{ready: boolean, has_preds: boolean, histogram?: {counts: number[], edges: number[], log: boolean},
 *   score_min?: number, score_max?: number,
 *   roc?: {fpr: number[], tpr: number[], auc: number}|null, found?: {inspected: number[], found: number[]}|null,
 *   estimated_mislabelled?: number|null,
 *   flags: {n_flagged: number, n_train: number, n_mislabelled?: number, true_positives?: number,
 *   precision?: number|null, recall?: number|null, inspected?: number|null}}} stats
 */

/**
 * A tile / table row (_protocols.Row, built by _payload.item_row).
 * @typedef {Object} Row
 * @property {number} index
 * @property {number|null} label
 * @property {number|null} pred
 * @property {number|null} prob
 * @property {number|null} score
 * @property {number|null} rank   1 = highest self-influence
 * @property {string|null} badge  only when a suggestion exists, in words: "the checkpoints' average prediction is
 *   <name> (p̄ 0.71), not its label <name> (p̄ 0.12)" (the "!" badge's tooltip and the suggestion's title)
 * @property {number|null} suggested  the suggested label (argmax of the checkpoints' average prediction; null: none)
 * @property {number|null} new_label  the relabel, if any (mirrors `relabels`)
 * @property {Evidence|null} [evidence]  detail replies of training rows only (evidence.js)
 * @property {Image|null} image
 */

/**
 * Why a label is suggested, per checkpoint (DetailReply.item.evidence).
 * @typedef {{checkpoints: string[], given: number[], suggested: number[]|null, self_influence: number[]}} Evidence
 *   given / suggested: P_c(given label) / P_c(suggested label); self_influence: lr_c * |grad_c|^2
 */

/**
 * uint8 HWC image (row-major, c in 1|3|4), its bytes on one of two paths (codecs.js decodes both):
 * - binary (the default): in traits `data` is a DataView (_protocols.ImageData), in custom messages `{buffer: i}`
 *   refers to the message's i-th buffer (_protocols.ImageRef);
 * - base64, for notebook hosts that drop binary buffers: `b64` is the base64 string (standard alphabet, padded:
 *   Python's base64.b64encode) of the same h*w*c bytes, in traits and custom messages alike, with no buffer.
 * A shape without its bytes (data missing, empty or `{}`, or a buffer that never came) is a dropped image: the view
 * shows a placeholder that says so, and sends {kind: "image_transport", transport: "base64"} once (transport.js).
 * @typedef {{data?: DataView, buffer?: number, b64?: string, shape: [number, number, number]}} Image
 */

/**
 * Custom messages (_protocols.REQUESTS / REPLIES). JS -> Python:
 *   {kind: "rows", id, offset, limit, sort: "rank"|"score"|"index"|"label"|"pred"|"suggested", descending,
 *    label: number|null, only: "all"|"flagged"|"disagree"|"mislabelled"|"suggested"|"relabelled",
 *    score_range: [lo, hi]|null}   (score_range: the histogram brush, the bins' outer edges)
 *   {kind: "bulk_flag", id, filter: {sort, descending, label, only, score_range}, offset: number|null,
 *    limit: number|null, flag: boolean}   (every row under the table's filter: offset/limit null; one page: given)
 *   {kind: "detail", id, index}
 *   {kind: "contributions", id, query: {source, index}, label, index}   (label: the gallery's explained_label)
 *   {kind: "cancel", run?: number} | {kind: "start"} | {kind: "undo"}   (run: progress_info.run when clicked)
 *   {kind: "image_transport", transport: "base64"}   (once, after a dropped image: send every image as `b64` from
 *    now on, re-publish test_strip and gallery so; the view then asks again for its table page and details)
 * Python -> JS (same id):
 *   {kind: "rows", id, pending, total, offset, rows: Row[]}
 *   {kind: "detail", id, item: Row}   (item.evidence for training rows)
 *   {kind: "bulk_flag", id, count}
 *   {kind: "contributions", id, query, label, index, checkpoints: [{checkpoint, lr, contribution}], total, error}
 *   {kind: "error", id, request, message}   (request: the failed request's kind; id null for actions)
 * @typedef {Object} Messages
 */

export {};
