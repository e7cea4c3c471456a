// A browser client for the chat plugin (subprotocol chat.v1): connects to /chat on the page's
// own host, shows the JSON events it receives and reconnects with backoff when the connection
// drops. All text from the network goes through textContent: nothing is parsed as HTML.
"use strict";

(() => {
  const $ = (id) => document.getElementById(id);
  const logEl = $("log");
  const membersEl = $("members");
  const statusEl = $("status");
  const lineEl = $("line");
  const sendButton = document.querySelector("#say button");

  const params = new URLSearchParams(location.search);
  const state = {
    nick: params.get("nick") || localStorage.getItem("wsplug.nick") || "",
    room: params.get("room") || localStorage.getItem("wsplug.room") || "lobby",
    members: new Set(),
    count: 0, // the room's members, as the server last counted them (a large room names only some)
    seen: [], // the last messages shown in this room, {nick, text}, to skip them in a history
    socket: null,
    wanted: false, // whether the user wants to be connected
    attempt: 0, // failed attempts since the last welcome
    timer: null,
  };
  $("nick").value = state.nick;
  $("room").value = state.room;

  // ---- rendering ----------------------------------------------------------------------------

  const clock = new Intl.DateTimeFormat(undefined, { hour: "2-digit", minute: "2-digit" });

  // `earlier`: a line from the room's history, sent before we joined (its time is unknown).
  function addLine(kind, text, who, earlier = false) {
    const li = document.createElement("li");
    li.className = kind;
    const time = document.createElement("time");
    if (earlier) {
      time.textContent = "earlier";
      time.title = "said before you joined";
    } else {
      const now = new Date();
      time.dateTime = now.toISOString();
      time.textContent = clock.format(now);
    }
    li.append(time);
    if (who !== undefined) {
      const name = document.createElement("span");
      name.className = "who";
      name.textContent = who;
      li.append(name);
      if (who === state.nick) li.classList.add("mine");
    }
    const body = document.createElement("span");
    body.textContent = text;
    li.append(body);
    const atBottom = logEl.scrollHeight - logEl.scrollTop - logEl.clientHeight < 40;
    logEl.append(li);
    while (logEl.children.length > 1000) logEl.firstElementChild.remove();
    if (atBottom) logEl.scrollTop = logEl.scrollHeight;
  }

  function renderMembers() {
    membersEl.replaceChildren();
    for (const nick of [...state.members].sort((a, b) => a.localeCompare(b))) {
      const li = document.createElement("li");
      li.textContent = nick;
      if (nick === state.nick) li.className = "me";
      membersEl.append(li);
    }
    // A large room's lists are partial (a welcome names 50): the count is the server's.
    const count = Math.max(state.count, state.members.size);
    if (count > state.members.size) {
      const li = document.createElement("li");
      li.className = "more";
      li.textContent = `and ${count - state.members.size} more (/who lists all)`;
      membersEl.append(li);
    }
    $("count").textContent = count ? `(${count})` : "";
  }

  /** Nicks for a log line: all of a small list, a count for a long one. */
  function named(nicks) {
    return nicks.length <= 20 ? nicks.join(", ") : `${nicks.slice(0, 20).join(", ")} and ${nicks.length - 20} more`;
  }

  function setStatus(kind, text) {
    statusEl.className = `status ${kind}`;
    statusEl.textContent = text;
    const online = kind === "online";
    lineEl.disabled = !online;
    sendButton.disabled = !online;
  }

  function setRoom(room) {
    state.room = room;
    $("room-title").textContent = `# ${room}`;
    $("room").value = room;
    document.title = `${room} · wsplug chat`;
  }

  function setNick(nick) {
    state.nick = nick;
    $("nick").value = nick;
  }

  // ---- protocol -----------------------------------------------------------------------------

  const HISTORY = 50; // the server keeps this many messages per room

  function remember(line) {
    state.seen.push(line);
    if (state.seen.length > HISTORY) state.seen.shift();
  }

  // The part of a room's history not shown yet: after a reconnection to the same room, the
  // history starts with messages already on screen; skip up to the last of them.
  function unseen(history) {
    const same = (a, b) => a.nick === b.nick && a.text === b.text;
    const seen = state.seen;
    for (let end = history.length; end > 0; end--) {
      const n = Math.min(seen.length, end);
      if (n === 0) break;
      let match = true;
      for (let i = 1; i <= n && match; i++) match = same(history[end - i], seen[seen.length - i]);
      if (match) return history.slice(end);
    }
    return history;
  }

  const handlers = {
    welcome(ev) {
      const sameRoom = ev.room === state.room;
      setNick(ev.nick);
      setRoom(ev.room);
      // After a server-side restart ("resumed") the list holds only those back so far: merge.
      if (!(ev.resumed && sameRoom)) state.members.clear();
      for (const m of ev.members) state.members.add(m);
      state.count = typeof ev.count === "number" ? ev.count : state.members.size;
      renderMembers();
      const again = state.attempt > 0;
      state.attempt = 0;
      setStatus("online", `online as ${ev.nick}`);
      // The room's recent messages (never sent to a resumed connection: it saw them).
      if (Array.isArray(ev.history)) {
        if (!sameRoom) state.seen = [];
        const lines = unseen(ev.history.filter((l) => l && typeof l.nick === "string" && typeof l.text === "string"));
        for (const line of lines) {
          addLine("message", line.text, line.nick, true);
          remember({ nick: line.nick, text: line.text });
        }
      }
      if (!ev.resumed) {
        const others = ev.members.filter((m) => m !== ev.nick);
        const more = Math.max(0, state.count - ev.members.length);
        addLine("event", `${again ? "Reconnected: you are in" : "You joined"} #${ev.room} as ${ev.nick}. ` +
          (others.length ? `Here: ${named(others)}${more ? ` and ${more} more` : ""}.` : "Nobody else is here yet."));
      }
    },
    join(ev) {
      if (ev.room !== state.room) return;
      state.members.add(ev.nick);
      state.count = Math.max(state.count + 1, state.members.size);
      renderMembers();
      addLine("event", `${ev.nick} joined`);
    },
    leave(ev) {
      if (ev.room !== state.room) return;
      state.members.delete(ev.nick);
      state.count = Math.max(state.count - 1, state.members.size);
      renderMembers();
      addLine("event", `${ev.nick} left`);
    },
    // A large room (over 50) counts its members instead of naming who comes and goes.
    presence(ev) {
      if (ev.room !== state.room) return;
      state.count = ev.count;
      renderMembers();
    },
    message(ev) {
      addLine("message", ev.text, ev.nick);
      if (ev.room === state.room) remember({ nick: ev.nick, text: ev.text });
    },
    nick(ev) {
      if (ev.old === state.nick) {
        setNick(ev.new);
        setStatus("online", `online as ${ev.new}`);
      }
      state.members.delete(ev.old);
      state.members.add(ev.new);
      renderMembers();
      addLine("event", `${ev.old} is now ${ev.new}`);
    },
    members(ev) {
      state.members = new Set(ev.members);
      state.count = ev.members.length;
      renderMembers();
      addLine("event", `In #${ev.room} (${ev.members.length}): ${named(ev.members)}`);
    },
    error(ev) {
      addLine("error", ev.text);
    },
  };

  function connect() {
    clearTimeout(state.timer);
    state.timer = null;
    const scheme = location.protocol === "https:" ? "wss" : "ws";
    const query = new URLSearchParams();
    if (state.nick) query.set("nick", state.nick);
    query.set("room", state.room || "lobby");
    const url = `${scheme}://${location.host}/chat?${query}`;
    setStatus("connecting", state.attempt ? `reconnecting (attempt ${state.attempt + 1})…` : "connecting…");

    let socket;
    try {
      socket = new WebSocket(url, "chat.v1");
    } catch (err) {
      addLine("error", `Cannot connect: ${err.message}`);
      return scheduleReconnect();
    }
    state.socket = socket;

    socket.addEventListener("message", (e) => {
      if (typeof e.data !== "string") return;
      let ev;
      try {
        ev = JSON.parse(e.data);
      } catch {
        return addLine("error", `Unreadable message from the server: ${e.data.slice(0, 200)}`);
      }
      const handle = handlers[ev && ev.type];
      if (handle) handle(ev);
    });

    socket.addEventListener("close", (e) => {
      if (state.socket !== socket) return;
      state.socket = null;
      if (e.code !== 1000 && e.code !== 1001 && e.code !== 1006 && e.reason) {
        addLine("error", `Connection closed: ${e.code} ${e.reason}`);
      }
      if (state.wanted) {
        if (state.attempt === 0) addLine("event", "Connection lost.");
        scheduleReconnect();
      } else {
        setStatus("offline", "offline");
      }
    });
  }

  function scheduleReconnect() {
    state.attempt += 1;
    // 0.5 s, 1 s, 2 s, … up to 30 s, with ±25 % jitter so clients do not return in lockstep.
    const base = Math.min(30000, 500 * 2 ** (state.attempt - 1));
    const delay = Math.round(base * (0.75 + Math.random() * 0.5));
    setStatus("connecting", `offline — retrying in ${Math.ceil(delay / 1000)} s`);
    clearTimeout(state.timer);
    state.timer = setTimeout(connect, delay);
  }

  function disconnect() {
    state.wanted = false;
    clearTimeout(state.timer);
    state.timer = null;
    if (state.socket) {
      const socket = state.socket;
      state.socket = null;
      socket.close(1000, "bye");
    }
  }

  // ---- user input ---------------------------------------------------------------------------

  const clean = (s, max) => Array.from(s.replace(/\s+/g, "")).slice(0, max).join("");

  $("join").addEventListener("submit", (e) => {
    e.preventDefault();
    disconnect();
    setNick(clean($("nick").value, 32));
    setRoom(clean($("room").value, 64) || "lobby");
    localStorage.setItem("wsplug.nick", state.nick);
    localStorage.setItem("wsplug.room", state.room);
    state.members.clear();
    state.count = 0;
    renderMembers();
    state.wanted = true;
    state.attempt = 0;
    connect();
    lineEl.focus();
  });

  $("say").addEventListener("submit", (e) => {
    e.preventDefault();
    const text = lineEl.value;
    if (!text.trim() || !state.socket || state.socket.readyState !== WebSocket.OPEN) return;
    state.socket.send(text);
    lineEl.value = "";
  });

  // Reconnect at once when the network or the tab comes back.
  const hurry = () => {
    if (state.wanted && !state.socket && state.timer) {
      connect();
    }
  };
  window.addEventListener("online", hurry);
  document.addEventListener("visibilitychange", () => {
    if (document.visibilityState === "visible") hurry();
  });

  setRoom(state.room);
  renderMembers();
  if (params.has("nick") || params.has("room")) {
    state.wanted = true;
    connect();
  } else {
    addLine("event", "Pick a nick and a room, then Connect.");
  }
})();
