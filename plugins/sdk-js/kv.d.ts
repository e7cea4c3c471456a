export function kvGet(key: string): Uint8Array | null;
export function kvGetText(key: string): string | null;
export function kvSet(key: string, value: string | Uint8Array): void;
export function kvDelete(key: string): void;
export function kvKeys(prefix: string, limit?: number): string[];
export function kvCompareAndSwap(key: string, expected: string | Uint8Array | null, value: string | Uint8Array | null): boolean;
