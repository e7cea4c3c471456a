// {{name}}: a wsplug plugin in TypeScript. It admits every connection, answers each text message
// with the same text in upper case, and sends binary messages back unchanged.
//
// Edit, run ./build.sh (it type-checks first), and a running `wsplug --route /{{name}}={{name}}.wasm`
// picks the new version up without dropping a connection. The SDK is wsplug.js, typed by
// wsplug.d.ts; the contract's types are in contract.d.ts, generated from wit/wsplug.wit.

import { accept, definePlugin, reply, text } from "./wsplug.js";
import type { Action, Admission, Connection, ConnectionId, Message } from "./wsplug.js";

export const { handler, state, batch, timerHandler, presenceHandler } = definePlugin({
  onOpen(conn: Connection): Admission {
    console.log(`connection ${conn.id} opened ${conn.path}`);
    return accept();
  },

  onMessage(conn: ConnectionId, msg: Message): Action[] {
    return msg.tag === "text" ? [reply(text(msg.val.toUpperCase()))] : [reply(msg)];
  },
});
