// The game room of plugins/game (Rust) in JavaScript, on the platform of contract 0.2.0: a
// repeating `tick` timer broadcast to the room, and each player's name kept as a connection
// attachment. Same protocol and same snapshot format as the Rust one (plugins/game/README.md),
// so plugins/game/game.test runs against both, and a reload may switch between them.
//
// Built for the world `timed-attached-plugin` of wit/platform/ with the SDK (plugins/sdk-js): its
// route grants timers and attachments.

import { accept, decodeUtf8, definePlugin, json, publish, queryParam, reply, subscribe } from "../sdk-js/wsplug.js";
import { attach, attached } from "../sdk-js/attachments.js";
import { cancelTimer, setTimer, timerNames } from "../sdk-js/timers.js";

const TICK_MS = 100;
const ROOM = "game";
const SNAPSHOT_VERSION = 1;

let ticks = 0;
let players = 0;

const nameOf = (conn) => attached(conn) ?? `player-${conn}`;
const startTicking = () => setTimer("tick", TICK_MS, TICK_MS);

export const { handler, state, batch, timerHandler, presenceHandler } = definePlugin({
  onOpen(conn) {
    // A resumed connection was counted before (the count is in the snapshot).
    if (!conn.resumed) {
      players += 1;
      const wanted = queryParam(conn.path, "name");
      const name = wanted && wanted.length <= 32 ? wanted : `player-${conn.id}`;
      attach(conn.id, name);
      if (!timerNames().includes("tick")) {
        try {
          startTicking();
        } catch (e) {
          console.warn(`no tick: ${e.message}`);
        }
      }
    }
    const welcome = json({ type: "welcome", name: nameOf(conn.id), tick: ticks });
    return accept({ actions: [subscribe(ROOM), reply(welcome)] });
  },

  onMessage(conn, msg) {
    if (msg.tag !== "text") return [reply("text only")];
    const t = msg.val;
    if (t === "/pause") {
      cancelTimer("tick");
      return [reply("paused")];
    }
    if (t === "/resume") {
      try {
        startTicking();
        return [reply("resumed")];
      } catch (e) {
        return [reply(e.message)];
      }
    }
    if (t === "/timers") return [reply(timerNames().join(","))];
    if (t === "panic") throw new Error("game: asked to panic");
    if (t.startsWith("move ")) return [publish(ROOM, json({ type: "moved", name: nameOf(conn), to: t.slice(5) }))];
    return [reply("say: move X, /pause, /resume, /timers")];
  },

  onClose() {
    players = Math.max(0, players - 1);
    if (players === 0) cancelTimer("tick");
    return [];
  },

  onTimer(name) {
    if (name !== "tick") return [];
    ticks += 1;
    return [publish(ROOM, json({ type: "tick", n: ticks }))];
  },

  snapshot() {
    return JSON.stringify({ version: SNAPSHOT_VERSION, tick: ticks, players });
  },

  restore(bytes) {
    if (bytes.length === 0) return;
    const doc = JSON.parse(decodeUtf8(bytes));
    if (doc.version !== SNAPSHOT_VERSION) throw `unsupported game snapshot version ${JSON.stringify(doc.version)}`;
    ticks = doc.tick;
    players = doc.players ?? 0;
  },
});
