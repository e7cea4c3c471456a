// Attachments (contract 0.2.0's `attachments`; the route must grant `attachments = true`): a small
// value per connection kept by the host across reloads and rebuilds. For a plugin built for a
// world of wit/platform/ that imports them (`attached-plugin`, `platform-plugin`).

import attachments from "wsplug:plugin/attachments@0.2.0";
import { decodeUtf8, encodeUtf8 } from "./wsplug.js";

/** The reason of a refused call, as an Error (componentize-qjs throws the WIT error value). */
const refused = (what, e) => new Error(`${what}: ${e instanceof Error ? e.message : e?.payload ?? e}`);

/**
 * Attaches `value` (a string, stored as UTF-8, or a Uint8Array; at most 16 KiB) to the connection
 * `conn`, which the host keeps across reloads and rebuilds until it closes; "" removes it.
 */
export function attach(conn, value) {
  try {
    attachments.set(conn, typeof value === "string" ? encodeUtf8(value) : value);
  } catch (e) {
    throw refused(`attach(${conn})`, e);
  }
}

/** What `conn` has attached, as a Uint8Array, or null. */
export function attachment(conn) {
  return attachments.get(conn) ?? null;
}

/** What `conn` has attached, as a string (UTF-8), or null. */
export function attached(conn) {
  const bytes = attachment(conn);
  return bytes === null ? null : decodeUtf8(bytes);
}
