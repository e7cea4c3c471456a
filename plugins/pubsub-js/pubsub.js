// The topics test plugin in JavaScript: the same line protocol as tests/plugins/pubsub (Rust), so
// that tests/topics.rs runs against both. It shows the SDK's topics.js: presence counts and
// members, history positions, recovering subscriptions, and presence events.
//
// `?sub=TOPIC` (repeatable) subscribes the connection when it opens. Commands: `sub TOPIC`,
// `unsub TOPIC`, `pub TOPIC TEXT`, `bin TOPIC TEXT`, `all TEXT`, `count TOPIC`, `members TOPIC`,
// `pos TOPIC`, `from TOPIC EPOCH OFFSET`, `events` (see tests/plugins/pubsub/src/lib.rs).

import { accept, binary, broadcast, definePlugin, encodeUtf8, publish, reply, subscribe, unsubscribe } from "../sdk-js/wsplug.js";
import { lastPosition, presenceCount, presenceMembers, subscribeFrom } from "../sdk-js/topics.js";

const events = [];

function queryParams(path) {
  const query = path.includes("?") ? path.slice(path.indexOf("?") + 1) : "";
  return query
    .split("&")
    .filter((pair) => pair)
    .map((pair) => pair.split("=").map((s) => decodeURIComponent(s.replace(/\+/g, " "))));
}

const ids = (list) => list.map((m) => `${m.node}/${m.connection}`).join(",");

export const { handler, state, batch, timerHandler, presenceHandler } = definePlugin({
  onOpen(conn) {
    const subs = queryParams(conn.path).filter(([k]) => k === "sub").map(([, v]) => subscribe(v));
    return accept({ actions: subs });
  },

  onMessage(conn, msg) {
    if (msg.tag !== "text") return [];
    const [verb = "", topic = "", ...rest] = msg.val.split(" ");
    const tail = rest.join(" ");
    switch (verb) {
      case "sub":
        return [subscribe(topic), reply("ok")];
      case "unsub":
        return [unsubscribe(topic), reply("ok")];
      case "pub":
        return [publish(topic, tail)];
      case "bin":
        return [publish(topic, binary(encodeUtf8(tail)))];
      case "all":
        return [broadcast(`${topic} ${tail}`.trimEnd())];
      case "count":
        return [reply(`count ${presenceCount(topic)}`)];
      case "members":
        try {
          return [reply(`members ${ids(presenceMembers(topic, 100000))}`)];
        } catch (e) {
          return [reply(`error ${e.message}`)];
        }
      case "pos": {
        const p = lastPosition(topic);
        return [reply(p ? `pos ${p.epoch} ${p.offset}` : "pos none")];
      }
      case "from": {
        const [epoch = "", offset = "0"] = rest;
        try {
          subscribeFrom(conn, topic, { epoch, offset: Number(offset) });
          return [];
        } catch (e) {
          return [reply(`error ${e.message}`)];
        }
      }
      case "events":
        return [reply(events.splice(0).join("\n"))];
      default:
        return [reply("error unknown command")];
    }
  },

  onPresence(changes) {
    for (const e of changes) {
      events.push(`${e.topic} ${e.count} +${ids(e.joined)} -${ids(e.left)} ~${e.omitted}`);
    }
    events.splice(0, Math.max(0, events.length - 1000));
    return [];
  },
});
