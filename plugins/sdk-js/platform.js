// The platform of contract 0.2.0 for JavaScript and TypeScript plugins, in one module: timers
// (timers.js), attachments (attachments.js) and the key-value store (kv.js). Import it in a plugin
// built for the world `platform-plugin` of wit/platform/, which imports all three (its route must
// grant `timers = true`, `attachments = true` and `kv = "NAME"`); a plugin that needs only one
// imports that module and is built for `timed-plugin`, `attached-plugin` or `stored-plugin`.
//
//   import { definePlugin, publish, text } from "./wsplug.js";
//   import { setTimer, attach, attached } from "./platform.js";
//
//   export const { handler, state, batch, timerHandler, presenceHandler } = definePlugin({
//     onOpen(conn) { setTimer("tick", 100, 100); ... },
//     onTimer(name) { return [publish("room", text("tick"))]; },
//   });

export * from "./timers.js";
export * from "./attachments.js";
export * from "./kv.js";
