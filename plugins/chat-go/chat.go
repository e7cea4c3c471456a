// The chat plugin in Go: the `chat.v1` protocol of the Rust chat plugin (plugins/chat, whose
// src/lib.rs documents it), with its state hand-over on reload (state.go: nicks, rooms and
// histories go to the next version, in the Rust chat's snapshot format).
//
// Connect as `/chat?nick=ada&room=lobby` (both optional: defaults `guest-<id>` and `lobby`). A
// client that offers `chat.v1` is answered with it, one that offers only other subprotocols is
// refused with 400, one that offers none is admitted without. Text lines: `/nick NEW`,
// `/join ROOM`, `/who`, anything else is said to the room. Answers are JSON events (encoding/json)
// told apart by `type`: welcome, join, leave, presence, message, nick, members, error. Rooms are
// topics of the host. Each room keeps its last 50 messages (at most 64 KiB; all rooms together at
// most 8 MiB), sent as `history` in a `welcome`. The canonical ABI glue is the Go SDK's
// (plugins/sdk-go/wsplug.go, staged beside these files by build.sh); main.go registers the chat.
// encoding/json brings in fmt, os and syscall, which the inert WASI stub does not suit as is: see
// build.sh and dedup_imports.py.
//
// Large rooms: a room of more than 50 members names nobody (naming every join to every member
// costs O(members²) in a join storm). Its members get `presence` with the room's `count` instead
// of `join` and `leave`: at once when it turns large or the count moved by an eighth, else at most
// once a second, with the next event. A `welcome` lists the first 50 members (its `count` says
// how many there are); back at 50, the room gets its whole list as `members`. The second is
// measured with WASI's monotonic clock, imported directly (main.go, wit/): Go's time.Now runs over
// the inert WASI stub, whose clock counts readings, not time.
package main

import (
	"bytes"
	"encoding/json"
	"maps"
	"slices"
	"strconv"
	"strings"
	"unicode"
	"unicode/utf8"
)

const (
	protocol      = "chat.v1"
	defaultRoom   = "lobby"
	maxNick       = 32   // characters
	maxRoom       = 64   // characters
	maxText       = 4096 // bytes
	historyLines  = 50
	historyBytes  = 64 * 1024
	idleHistories = 32 // emptied rooms that keep their history
	// All rooms' histories together, so that many busy rooms cannot grow the instance to its
	// memory cap (a trap): past it, the largest history gives up its oldest lines.
	totalHistoryBytes = 8 << 20
	// A room of more than this many members announces presence as counts, not nicks, and its
	// welcome lists only this many members.
	largeRoom = 50
	// At most one presence a second (in nanoseconds), unless the count moved by an eighth.
	presenceEvery = 1_000_000_000
)

type member struct{ nick, room string }

type line struct {
	Nick string `json:"nick"`
	Text string `json:"text"`
}

type history struct {
	lines []line
	bytes int
}

func (h *history) push(l line) {
	h.bytes += len(l.Nick) + len(l.Text)
	h.lines = append(h.lines, l)
	for len(h.lines) > historyLines || h.bytes > historyBytes {
		h.bytes -= len(h.lines[0].Nick) + len(h.lines[0].Text)
		h.lines = h.lines[1:]
	}
}

// toJSON is a welcome's `history`: the most recent lines whose JSON fits in historyBytes.
func (h *history) toJSON() json.RawMessage {
	var parts []string
	size := 2
	for i := len(h.lines) - 1; i >= 0; i-- {
		part := encode(h.lines[i])
		size += len(part) + 1
		if size > historyBytes {
			break
		}
		parts = append(parts, part)
	}
	slices.Reverse(parts)
	return json.RawMessage("[" + strings.Join(parts, ",") + "]")
}

var (
	members = map[uint64]*member{}
	nicks   = map[string]uint64{}          // lower-cased nick -> owner
	rooms   = map[string]map[string]bool{} // room -> its members' nicks; no empty rooms
	hist    = map[string]*history{}
	idle    []string // rooms with a history but no members, the longest empty first
	// Large rooms: the member count last announced and when.
	announced = map[string]*announcement{}
	// Large rooms whose count changed since it was last announced.
	unannounced = map[string]bool{}
)

type announcement struct {
	count int
	at    uint64 // monotonic nanoseconds
}

// Events, fields in the order they are written.
type (
	welcomeEvent struct {
		Type    string          `json:"type"`
		Nick    string          `json:"nick"`
		Room    string          `json:"room"`
		Members []string        `json:"members"`
		Count   int             `json:"count"`
		History json.RawMessage `json:"history,omitempty"`
		Resumed bool            `json:"resumed,omitempty"`
	}
	joinEvent struct {
		Type string `json:"type"`
		Nick string `json:"nick"`
		Room string `json:"room"`
	}
	messageEvent struct {
		Type string `json:"type"`
		Nick string `json:"nick"`
		Room string `json:"room"`
		Text string `json:"text"`
	}
	nickEvent struct {
		Type string `json:"type"`
		Old  string `json:"old"`
		New  string `json:"new"`
		Room string `json:"room"`
	}
	membersEvent struct {
		Type    string   `json:"type"`
		Room    string   `json:"room"`
		Members []string `json:"members"`
	}
	presenceEvent struct {
		Type  string `json:"type"`
		Room  string `json:"room"`
		Count int    `json:"count"`
	}
	errorEvent struct {
		Type string `json:"type"`
		Text string `json:"text"`
	}
)

// encode writes v as compact JSON without HTML escaping (as the Rust plugin: quotes, backslashes
// and control characters escaped, U+2028/U+2029 too, everything else as is).
func encode(v any) string {
	var b bytes.Buffer
	e := json.NewEncoder(&b)
	e.SetEscapeHTML(false)
	if err := e.Encode(v); err != nil {
		panic(err)
	}
	return strings.TrimSuffix(b.String(), "\n")
}

func reply(json string) Action        { return Reply(Text(json)) }
func toRoom(room, json string) Action { return Publish(room, Text(json)) }
func errorAction(text string) Action  { return reply(encode(errorEvent{"error", text})) }
func joinAction(kind, nick, room string) Action {
	return toRoom(room, encode(joinEvent{kind, nick, room}))
}

func nickTaken(nick string, except uint64, hasExcept bool) bool {
	owner, ok := nicks[strings.ToLower(nick)]
	return ok && !(hasExcept && owner == except)
}

// uniqueNick is `wanted`, or `wanted-N` with the smallest N >= 2 that is free (cut to fit).
func uniqueNick(wanted string) string {
	if !nickTaken(wanted, 0, false) {
		return wanted
	}
	for n := 2; ; n++ {
		suffix := "-" + strconv.Itoa(n)
		base := []rune(wanted)
		if len(base) > maxNick-len(suffix) {
			base = base[:maxNick-len(suffix)]
		}
		if nick := string(base) + suffix; !nickTaken(nick, 0, false) {
			return nick
		}
	}
}

func add(id uint64, nick, room string) {
	nicks[strings.ToLower(nick)] = id
	enterRoom(room, nick)
	members[id] = &member{nick, room}
}

func enterRoom(room, nick string) {
	set := rooms[room]
	if set == nil {
		set = map[string]bool{}
		rooms[room] = set
	}
	if len(set) == 0 {
		idle = slices.DeleteFunc(idle, func(r string) bool { return r == room })
	}
	set[nick] = true
}

func remove(id uint64) (*member, bool) {
	m, ok := members[id]
	if !ok {
		return nil, false
	}
	delete(members, id)
	delete(nicks, strings.ToLower(m.nick))
	leaveRoom(m.room, m.nick)
	return m, true
}

func leaveRoom(room, nick string) {
	set, ok := rooms[room]
	if !ok {
		return
	}
	delete(set, nick)
	if len(set) == 0 {
		delete(rooms, room)
		if _, ok := hist[room]; ok {
			idle = append(idle, room)
			for len(idle) > idleHistories {
				delete(hist, idle[0])
				idle = idle[1:]
			}
		}
	}
}

func membersOf(room string) []string {
	out := []string{}
	for nick := range rooms[room] {
		out = append(out, nick)
	}
	slices.Sort(out)
	return out
}

// welcome lists at most largeRoom members, and counts them all.
func welcome(nick, room string, resumed bool) string {
	all := membersOf(room)
	ev := welcomeEvent{Type: "welcome", Nick: nick, Room: room, Members: all[:min(len(all), largeRoom)], Count: len(all)}
	if resumed {
		ev.Resumed = true
	} else if h, ok := hist[room]; ok {
		ev.History = h.toJSON()
	} else {
		ev.History = json.RawMessage("[]")
	}
	return encode(ev)
}

// admit registers `id` as `nick` (made unique) in `room`: a join to the room unless resumed, the
// subscription, a welcome.
func admit(id uint64, nick, room string, resumed bool) []Action {
	remove(id)
	nick = uniqueNick(nick)
	add(id, nick, room)
	var actions []Action
	if !resumed {
		actions = presenceChanged(room, "join", nick, monotonicNow())
	}
	return append(actions, Subscribe(room), reply(welcome(nick, room, resumed)))
}

// checkName: 1 to max characters, no whitespace or control characters.
func checkName(what, name string, max int) string {
	count := utf8.RuneCountInString(name)
	bad := count == 0 || count > max || strings.IndexFunc(name, func(r rune) bool {
		return unicode.IsSpace(r) || unicode.IsControl(r)
	}) >= 0
	if bad {
		return "a " + what + " must be 1 to " + strconv.Itoa(max) + " characters, without spaces or control characters"
	}
	return ""
}

func onOpen(id uint64, path string, protocols []string, resumed bool) Admission {
	var adm Admission
	if slices.Contains(protocols, protocol) {
		adm.subprotocol = protocol
	} else if len(protocols) != 0 && !resumed {
		return Reject(400, "this endpoint requires the chat.v1 subprotocol")
	}
	if m, ok := members[id]; ok && resumed {
		Log(LevelInfo, m.nick+" is still in "+m.room)
		adm.actions = []Action{Subscribe(m.room), reply(welcome(m.nick, m.room, true))}
		return adm
	}
	defaultNick := "guest-" + strconv.FormatUint(id, 10)
	nick, ok := queryParam(path, "nick")
	if !ok || nick == "" {
		nick = defaultNick
	}
	room, ok := queryParam(path, "room")
	if !ok || room == "" {
		room = defaultRoom
	}
	e := checkName("nick", nick, maxNick)
	if e == "" {
		e = checkName("room", room, maxRoom)
	}
	if e != "" {
		if !resumed {
			return Reject(400, e)
		}
		// A resumed connection cannot be refused any more: give it the defaults instead.
		nick, room = defaultNick, defaultRoom
	}
	adm.actions = append(admit(id, nick, room, resumed), duePresence(monotonicNow())...)
	how := "joined"
	if resumed {
		how = "is back in"
	}
	Log(LevelInfo, members[id].nick+" "+how+" "+room)
	return adm
}

// known takes in a connection not seen opening, with the defaults, rather than fail.
func known(id uint64) []Action {
	if _, ok := members[id]; ok {
		return nil
	}
	Log(LevelWarn, "message from unknown connection "+strconv.FormatUint(id, 10))
	return admit(id, "guest-"+strconv.FormatUint(id, 10), defaultRoom, true)
}

func onBinary(id uint64) []Action {
	actions := append(known(id), errorAction("binary messages are not supported"))
	return append(actions, duePresence(monotonicNow())...)
}

func onText(id uint64, text string) []Action {
	return append(command(id, text), duePresence(monotonicNow())...)
}

func command(id uint64, text string) []Action {
	actions := known(id)
	if t, ok := strings.CutSuffix(text, "\n"); ok {
		text = strings.TrimSuffix(t, "\r")
	}
	if command, ok := strings.CutPrefix(text, "/"); ok {
		name, arg := command, ""
		if i := strings.IndexFunc(command, unicode.IsSpace); i >= 0 {
			_, w := utf8.DecodeRuneInString(command[i:])
			name, arg = command[:i], strings.TrimSpace(command[i+w:])
		}
		switch name {
		case "nick":
			return append(actions, rename(id, arg)...)
		case "join":
			return append(actions, join(id, arg)...)
		case "who":
			m := members[id]
			return append(actions, reply(encode(membersEvent{"members", m.room, membersOf(m.room)})))
		}
	}
	return append(actions, say(id, text)...)
}

func say(id uint64, text string) []Action {
	if len(text) > maxText {
		return []Action{errorAction("message too long: at most " + strconv.Itoa(maxText) + " bytes")}
	}
	if strings.TrimSpace(text) == "" {
		return nil
	}
	m := members[id]
	h := hist[m.room]
	if h == nil {
		h = &history{}
		hist[m.room] = h
	}
	h.push(line{m.nick, text})
	boundHistory()
	return []Action{toRoom(m.room, encode(messageEvent{"message", m.nick, m.room, text}))}
}

func rename(id uint64, nick string) []Action {
	if nick == "" {
		return []Action{errorAction("usage: /nick NEW")}
	}
	if e := checkName("nick", nick, maxNick); e != "" {
		return []Action{errorAction(e)}
	}
	m := members[id]
	if m.nick == nick {
		return []Action{errorAction("you are already " + nick)}
	}
	if nickTaken(nick, id, true) {
		return []Action{errorAction("nick " + nick + " is taken")}
	}
	old := m.nick
	// Renamed in place: going through remove would empty the room for a moment.
	delete(nicks, strings.ToLower(old))
	nicks[strings.ToLower(nick)] = id
	if set, ok := rooms[m.room]; ok {
		delete(set, old)
		set[nick] = true
	}
	m.nick = nick
	Log(LevelInfo, old+" is now "+nick)
	return []Action{toRoom(m.room, encode(nickEvent{"nick", old, nick, m.room}))}
}

func join(id uint64, room string) []Action {
	if room == "" {
		return []Action{errorAction("usage: /join ROOM")}
	}
	if e := checkName("room", room, maxRoom); e != "" {
		return []Action{errorAction(e)}
	}
	m := members[id]
	if m.room == room {
		return []Action{errorAction("you are already in " + room)}
	}
	old := m.room
	// Into the new room first: leaving the old one may forget the history of the longest empty
	// room, and that must not be the new room's.
	enterRoom(room, m.nick)
	leaveRoom(old, m.nick)
	m.room = room
	now := monotonicNow()
	actions := []Action{Unsubscribe(old)}
	actions = append(actions, presenceChanged(old, "leave", m.nick, now)...)
	actions = append(actions, presenceChanged(room, "join", m.nick, now)...)
	return append(actions, Subscribe(room), reply(welcome(m.nick, room, false)))
}

// presenceChanged tells `room` that `nick` joined or left it (`kind`), the change already made:
// join or leave in a small room; in a large one, presence when due (see duePresence); for a room
// that just shrank to largeRoom, its whole member list.
func presenceChanged(room, kind, nick string, now uint64) []Action {
	count := len(rooms[room])
	if count > largeRoom {
		if announced[room] == nil {
			// Announced 0 a second ago: due at once. (Unsigned, so a clock that starts at 0 with
			// the instance still reads it as a second ago.)
			announced[room] = &announcement{0, now - presenceEvery}
		}
		unannounced[room] = true
		return duePresence(now)
	}
	_, wasLarge := announced[room]
	if wasLarge || kind == "leave" && count == largeRoom {
		delete(announced, room)
		delete(unannounced, room)
		return []Action{toRoom(room, encode(membersEvent{"members", room, membersOf(room)}))}
	}
	return []Action{joinAction(kind, nick, room)}
}

// duePresence is a presence for each large room whose count changed since it was last
// announced, if a second has passed since then or the count moved by an eighth of what was
// announced; rooms in name order, as the Rust plugin.
func duePresence(now uint64) []Action {
	var actions []Action
	for _, room := range slices.Sorted(maps.Keys(unannounced)) {
		count := len(rooms[room])
		a := announced[room]
		if a == nil || count == a.count {
			delete(unannounced, room)
			continue
		}
		moved := count - a.count
		if moved < 0 {
			moved = -moved
		}
		if now-a.at < presenceEvery && moved*8 < a.count {
			continue
		}
		a.count, a.at = count, now
		delete(unannounced, room)
		actions = append(actions, toRoom(room, encode(presenceEvent{"presence", room, count})))
	}
	return actions
}

// boundHistory drops the oldest lines of the largest histories (the last by name of equal ones,
// as the Rust plugin) while all of them together hold more than totalHistoryBytes.
func boundHistory() {
	total := 0
	for _, h := range hist {
		total += h.bytes
	}
	for total > totalHistoryBytes {
		var largest *history
		name := ""
		for room, h := range hist {
			if largest == nil || h.bytes > largest.bytes || h.bytes == largest.bytes && room > name {
				largest, name = h, room
			}
		}
		if largest == nil || len(largest.lines) == 0 {
			break
		}
		size := len(largest.lines[0].Nick) + len(largest.lines[0].Text)
		largest.bytes -= size
		largest.lines = largest.lines[1:]
		total -= size
	}
}

func onClose(id uint64) []Action {
	now := monotonicNow()
	m, ok := remove(id)
	if !ok {
		return duePresence(now)
	}
	Log(LevelInfo, m.nick+" left "+m.room)
	return append(presenceChanged(m.room, "leave", m.nick, now), duePresence(now)...)
}

// queryParam is the first value of query parameter `name` of request target `path`, decoded.
func queryParam(path, name string) (string, bool) {
	path, _, _ = strings.Cut(path, "#")
	_, query, _ := strings.Cut(path, "?")
	for _, piece := range strings.Split(query, "&") {
		if piece == "" {
			continue
		}
		n, v, _ := strings.Cut(piece, "=")
		if percentDecode(n) == name {
			return percentDecode(v), true
		}
	}
	return "", false
}

// percentDecode: `+` is a space, `%XX` the byte XX (a `%` without two hex digits is kept);
// invalid UTF-8 becomes U+FFFD, one per maximal invalid subsequence (as Rust's from_utf8_lossy).
func percentDecode(s string) string {
	out := make([]byte, 0, len(s))
	for i := 0; i < len(s); i++ {
		switch c := s[i]; {
		case c == '+':
			out = append(out, ' ')
		case c == '%' && i+2 < len(s) && isHex(s[i+1]) && isHex(s[i+2]):
			out = append(out, unhex(s[i+1])<<4|unhex(s[i+2]))
			i += 2
		default:
			out = append(out, c)
		}
	}
	return lossy(out)
}

func isHex(c byte) bool {
	return '0' <= c && c <= '9' || 'a' <= c && c <= 'f' || 'A' <= c && c <= 'F'
}

func unhex(c byte) byte {
	switch {
	case c <= '9':
		return c - '0'
	case c >= 'a':
		return c - 'a' + 10
	}
	return c - 'A' + 10
}

func lossy(b []byte) string {
	if utf8.Valid(b) {
		return string(b)
	}
	var out strings.Builder
	for i := 0; i < len(b); {
		r, w := utf8.DecodeRune(b[i:])
		if r != utf8.RuneError || w > 1 {
			out.Write(b[i : i+w])
			i += w
			continue
		}
		out.WriteRune(utf8.RuneError)
		i += invalidPrefix(b[i:])
	}
	return out.String()
}

// invalidPrefix is the length of the maximal prefix of b (starting at an invalid sequence) that
// could begin a valid sequence: what Rust replaces with one U+FFFD.
func invalidPrefix(b []byte) int {
	lo, hi, need := byte(0x80), byte(0xBF), 0
	switch c := b[0]; {
	case 0xC2 <= c && c <= 0xDF:
		need = 1
	case c == 0xE0:
		lo, need = 0xA0, 2
	case 0xE1 <= c && c <= 0xEC, c == 0xEE, c == 0xEF:
		need = 2
	case c == 0xED:
		hi, need = 0x9F, 2
	case c == 0xF0:
		lo, need = 0x90, 3
	case 0xF1 <= c && c <= 0xF3:
		need = 3
	case c == 0xF4:
		hi, need = 0x8F, 3
	}
	n := 1
	for ; n <= need && n < len(b); n++ {
		if b[n] < lo || b[n] > hi {
			break
		}
		lo, hi = 0x80, 0xBF
	}
	return n
}
