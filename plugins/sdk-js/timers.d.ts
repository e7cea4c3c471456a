/** Sets the timer `name`; throws an Error saying why not. */
export function setTimer(name: string, afterMs: number, everyMs?: number | null): void;
export function cancelTimer(name: string): void;
export function timerNames(): string[];
