import type { ConnectionId } from "./contract.js";

/** A position in a topic's history. */
export interface Position {
  epoch: string;
  offset: number;
}

/** A subscribed connection: its node and its id there. */
export interface Member {
  node: string;
  connection: ConnectionId;
}

/** What changed in one topic's presence since the last event. */
export interface PresenceEvent {
  topic: string;
  count: number;
  joined: Member[];
  left: Member[];
  omitted: number;
}

export function lastPosition(topic: string): Position | null;
export function subscribeFrom(conn: ConnectionId, topic: string, since: Position): void;
export function presenceCount(topic: string): number;
export function presenceMembers(topic: string, limit?: number): Member[];
