// The route's key-value store (contract 0.2.0's `kv`; the route must grant `kv = "NAME"`), for a
// plugin built for a world of wit/platform/ that imports it (`stored-plugin`, `platform-plugin`).
// Reads see the store plus the call's own writes; the writes commit together when it succeeds.

import kv from "wsplug:plugin/kv@0.2.0";
import { decodeUtf8, encodeUtf8 } from "./wsplug.js";

/** The reason of a refused call, as an Error (componentize-qjs throws the WIT error value). */
const refused = (what, e) => new Error(`${what}: ${e instanceof Error ? e.message : e?.payload ?? e}`);

/** The value of `key` as a Uint8Array, or null. */
export function kvGet(key) {
  return kv.get(key) ?? null;
}

/** The value of `key` as a string (UTF-8), or null. */
export function kvGetText(key) {
  const bytes = kvGet(key);
  return bytes === null ? null : decodeUtf8(bytes);
}

/** Sets `key` to `value` (a string, stored as UTF-8, or a Uint8Array). */
export function kvSet(key, value) {
  try {
    kv.set(key, typeof value === "string" ? encodeUtf8(value) : value);
  } catch (e) {
    throw refused(`kvSet(${JSON.stringify(key)})`, e);
  }
}

/** Removes `key`. */
export function kvDelete(key) {
  kv.delete(key);
}

/** Up to `limit` keys starting with `prefix`, in byte order. */
export function kvKeys(prefix, limit = 100) {
  return kv.keys(prefix, limit);
}

/**
 * Sets `key` to `value` (null: removes it) only if it now holds `expected` (null: absent; strings
 * as UTF-8); whether it did. Checked again at commit: a race lost to another instance fails the call.
 */
export function kvCompareAndSwap(key, expected, value) {
  const bytes = (v) => (v === null || v === undefined ? null : typeof v === "string" ? encodeUtf8(v) : v);
  try {
    return kv.compareAndSwap(key, bytes(expected), bytes(value));
  } catch (e) {
    throw refused(`kvCompareAndSwap(${JSON.stringify(key)})`, e);
  }
}
