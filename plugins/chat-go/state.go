// State hand-over on reload: the `state` interface of the contract (snapshot, restore), in the Rust
// chat's snapshot format, version 1 (plugins/chat/src/snapshot.rs):
//
//	{"version":1,"members":[{"id":7,"nick":"ada","room":"lobby"}],"history":{"lobby":[{"nick":"ada","text":"hi"}]}}
//
// so nicks, rooms and histories survive a reload to the next version, whether it is written in Go,
// Rust, JavaScript or Python. A restored connection is re-attached silently by onOpen (resumed):
// subscribed to its room again, with a `welcome` that says "resumed": true. The large-room
// bookkeeping is not in the snapshot: a restored large room announces its next change at once.
package main

import (
	"encoding/json"
	"maps"
	"slices"
	"strconv"
	"strings"
)

const snapshotVersion = 1

type snapshotMember struct {
	ID   uint64 `json:"id"`
	Nick string `json:"nick"`
	Room string `json:"room"`
}

type snapshotDoc struct {
	Version *int              `json:"version"`
	Members []snapshotMember  `json:"members"`
	History map[string][]line `json:"history"`
}

// takeSnapshot is the state as JSON: members by id, histories by room (rooms without members
// included, as long as they keep a history).
func takeSnapshot() []byte {
	version := snapshotVersion
	doc := snapshotDoc{Version: &version, Members: []snapshotMember{}, History: map[string][]line{}}
	for _, id := range slices.Sorted(maps.Keys(members)) {
		m := members[id]
		doc.Members = append(doc.Members, snapshotMember{id, m.nick, m.room})
	}
	for room, h := range hist {
		doc.History[room] = h.lines
	}
	out, err := json.Marshal(doc)
	if err != nil {
		Log(LevelWarn, "snapshot: "+err.Error())
		return nil
	}
	return out
}

// restoreSnapshot takes in a snapshot (nothing: start fresh), or says why it cannot; on an error
// the state is left as it was (the host then keeps the old version serving).
func restoreSnapshot(b []byte) string {
	if len(b) == 0 {
		return ""
	}
	var doc snapshotDoc
	if err := json.Unmarshal(b, &doc); err != nil {
		return "malformed chat snapshot: " + err.Error()
	}
	if doc.Version == nil {
		return `malformed chat snapshot: no "version" field`
	}
	if *doc.Version != snapshotVersion {
		return "unsupported chat snapshot version " + strconv.Itoa(*doc.Version) +
			" (this version of chat reads version " + strconv.Itoa(snapshotVersion) + ")"
	}
	taken := map[string]bool{}
	for _, m := range doc.Members {
		bad := checkName("nick", m.Nick, maxNick)
		if bad == "" {
			bad = checkName("room", m.Room, maxRoom)
		}
		if bad == "" && taken[strings.ToLower(m.Nick)] {
			bad = "the nick " + strconv.Quote(m.Nick) + " is taken twice"
		}
		if bad != "" {
			return "invalid chat snapshot: connection " + strconv.FormatUint(m.ID, 10) + ": " + bad
		}
		taken[strings.ToLower(m.Nick)] = true
	}
	members = map[uint64]*member{}
	nicks = map[string]uint64{}
	rooms = map[string]map[string]bool{}
	hist = map[string]*history{}
	idle = nil
	announced = map[string]*announcement{}
	unannounced = map[string]bool{}
	for _, m := range doc.Members {
		add(m.ID, m.Nick, m.Room)
	}
	for _, room := range slices.Sorted(maps.Keys(doc.History)) {
		h := &history{}
		for _, l := range doc.History[room] {
			h.push(l)
		}
		if len(h.lines) == 0 {
			continue
		}
		hist[room] = h
		if len(rooms[room]) == 0 {
			idle = append(idle, room)
		}
	}
	for len(idle) > idleHistories {
		delete(hist, idle[0])
		idle = idle[1:]
	}
	boundHistory()
	Log(LevelInfo, "restored: "+strconv.Itoa(len(members))+" connections, "+strconv.Itoa(len(rooms))+" rooms, "+
		strconv.Itoa(len(hist))+" histories")
	return ""
}
