// {{name}}: a wsplug plugin in JavaScript. It admits every connection, answers each text message
// with the same text in upper case, and sends binary messages back unchanged.
//
// Edit, run ./build.sh, and a running `wsplug --route /{{name}}={{name}}.wasm` picks the new version
// up without dropping a connection. The SDK is wsplug.js (its types: wsplug.d.ts).

import { accept, definePlugin, reply, text } from "./wsplug.js";

export const { handler, state, batch, timerHandler, presenceHandler } = definePlugin({
  onOpen(conn) {
    console.log(`connection ${conn.id} opened ${conn.path}`);
    return accept();
  },

  onMessage(conn, msg) {
    // `msg` is { tag: "text", val: string } or { tag: "binary", val: Uint8Array }.
    return msg.tag === "text" ? [reply(text(msg.val.toUpperCase()))] : [reply(msg)];
  },
});
