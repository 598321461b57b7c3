// Images on hosts that drop binary buffers (Colab-like widget managers): images travel as binary buffers, and where a
// host drops them their shapes arrive without bytes. Seen once in a trait or a reply, this view says so in a note and
// asks the kernel, once, to send images as base64 text from then on ({kind: "image_transport", transport: "base64"},
// protocol.js); `resend` then asks again for what is on screen.

import { imageTransports } from "./codecs.js";
import { h } from "./dom.js";

export const TRANSPORT_NOTE =
  "Images did not arrive: this notebook host drops binary data. The explorer asked the kernel to send them as " +
  "base64 text instead; they appear with the next update.";

/** Watch the image-carrying traits and replies; returns the note element (hidden until a dropped image is seen). */
export function watchImages(ctx, resend) {
  const { model, rpc } = ctx;
  let asked = false;
  const el = h("div", {
    className: "tracin-note",
    testid: "tracin-transport-note",
    attrs: { role: "status" },
    hidden: true,
    text: TRANSPORT_NOTE,
  });

  function check(payload) {
    const found = imageTransports(payload);
    if (found.has("dropped")) {
      el.hidden = false;
      if (asked) return;
      asked = true;
      rpc.action("image_transport", { transport: "base64" });
      resend();
    } else if (found.has("base64")) el.hidden = true;
  }

  for (const trait of ["test_strip", "gallery"]) {
    ctx.listen(`change:${trait}`, () => check(model.get(trait)));
  }
  rpc.watch(check);
  check([model.get("test_strip"), model.get("gallery")]);
  return el;
}
