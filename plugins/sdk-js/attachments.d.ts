import type { ConnectionId } from "./contract.js";

/** Attaches a value (at most 16 KiB) to an open connection; "" removes it. */
export function attach(conn: ConnectionId, value: string | Uint8Array): void;
export function attachment(conn: ConnectionId): Uint8Array | null;
export function attached(conn: ConnectionId): string | null;
