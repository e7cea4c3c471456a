// Types of the wsplug SDK's platform modules (timers.js, attachments.js, kv.js, and platform.js,
// which re-exports the three): contract 0.2.0.

export * from "./timers.js";
export * from "./attachments.js";
export * from "./kv.js";
