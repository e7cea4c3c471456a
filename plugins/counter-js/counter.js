// The counters of plugins/counter (Rust) in JavaScript, in the route's key-value store (contract
// 0.2.0's `kv`, through the SDK's platform.js): same commands, same keys, so plugins/counter/
// counter.test runs against both and they can share a store.
//
// Built for the world `stored-plugin` of wit/platform/ (the key-value store only: the route needs
// only `kv = "NAME"`).

import { definePlugin, reply } from "../sdk-js/wsplug.js";
import { kvCompareAndSwap, kvDelete, kvGetText, kvKeys } from "../sdk-js/kv.js";

const key = (name) => `count/${name}`;
const value = (text) => {
  const n = Number.parseInt(text ?? "", 10);
  return Number.isSafeInteger(n) && n >= 0 ? n : 0;
};

function incr(name) {
  const old = kvGetText(key(name));
  const next = value(old) + 1;
  if (!kvCompareAndSwap(key(name), old, String(next))) throw new Error("changed meanwhile");
  return next;
}

export const { handler, state, batch, timerHandler, presenceHandler } = definePlugin({
  onMessage(conn, msg) {
    if (msg.tag !== "text") return [reply("text only")];
    const text = msg.val;
    const space = text.indexOf(" ");
    const [command, name] = space < 0 ? [text, ""] : [text.slice(0, space), text.slice(space + 1)];
    const valid = name !== "" && name.length <= 64 && !/\s/.test(name);
    let answer;
    if (command === "incr" && valid) {
      try {
        answer = `${name}=${incr(name)}`;
      } catch (e) {
        answer = `error: ${e.message}`;
      }
    } else if (command === "get" && valid) {
      answer = `${name}=${value(kvGetText(key(name)))}`;
    } else if (command === "reset" && valid) {
      kvDelete(key(name));
      answer = `${name}=0`;
    } else if (command === "list") {
      answer = kvKeys("count/", 100)
        .map((k) => `${k.slice("count/".length)}=${value(kvGetText(k))}`)
        .join(",");
    } else {
      answer = "say: incr NAME, get NAME, reset NAME, list";
    }
    return [reply(answer)];
  },
});
