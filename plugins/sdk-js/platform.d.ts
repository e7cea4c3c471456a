// Types of the wsplug SDK's platform module (platform.js): timers and attachments, contract 0.2.0.

import type { ConnectionId } from "./contract.js";

/** Sets the timer `name`; throws an Error saying why not. */
export function setTimer(name: string, afterMs: number, everyMs?: number | null): void;
export function cancelTimer(name: string): void;
export function timerNames(): string[];
/** Attaches a value (at most 16 KiB) to an open connection; "" removes it. */
export function attach(conn: ConnectionId, value: string | Uint8Array): void;
export function attachment(conn: ConnectionId): Uint8Array | null;
export function attached(conn: ConnectionId): string | null;
