// The echo plugin in JavaScript: sends every message back to its sender, text as text and
// binary as binary. It admits every connection and picks no subprotocol.
//
// Built with componentize-qjs (QuickJS) against the world `plugin` of wit/wsplug.wit: the module
// exports the interface `handler` as an object of camelCase functions; WIT variants are
// `{ tag, val }` objects, records are objects with camelCase keys, `option` is a value or null,
// and `list<u8>` arrives as a Uint8Array.

export const handler = {
  onOpen(conn) {
    return { tag: "accept", val: { subprotocol: null, actions: [] } };
  },

  onMessage(conn, msg) {
    // `msg` is `{ tag: "text", val: string }` or `{ tag: "binary", val: Uint8Array }`.
    return [{ tag: "reply", val: msg }];
  },

  onClose(conn, code, reason) {
    return [];
  },
};
