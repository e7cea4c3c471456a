// The wsplug SDK for Go plugins: the canonical ABI glue of the `plugin` world of wit/wsplug.wit,
// written by hand for wasm32 (there is no wit-bindgen for Go here: its generator and runtime are
// Go modules, which cannot be fetched), and a small API over it:
//
// The component implements the world `stateful-plugin` (the handler, and the state it hands over).
//
//	func init() {
//		Register(Plugin{
//			OnMessage: func(conn ConnectionID, msg Message) []Action {
//				return []Action{Reply(msg)}
//			},
//		})
//	}
//
// - Plugin: the handlers; only OnMessage is required (OnOpen admits everyone, OnClose does
//   nothing, Snapshot and Restore hand nothing over).
// - Messages (Text, Binary), targets (Sender, ToConnection, Everyone, Others, Topic), actions
//   (Reply, Broadcast, Send, SendTo, Publish, Subscribe, Unsubscribe, Close) and admissions
//   (Accept, Reject), each a value: a wrongly shaped action cannot be written.
// - Log: a line in the server's log (Go's own stdout and stderr are discarded: the module runs on
//   an inert WASI stand-in, see plugins/c-tools/src/wasi_stub.rs).
//
// This file is package main: copy it beside the plugin's own files (`wsplug new --lang go` does).
// It imports only runtime and unsafe: fmt and os would bring in syscall's WASI start-up.
//
// Memory: what the host writes (cabi_realloc) lives in Go slices pinned in `pinned` until the
// export has copied it into Go values and released it. What an export returns points into Go
// memory kept reachable in `keep` until the post-return function drops it: Go's collector does
// not move objects, but it frees unreachable ones.
//
// Layouts (wasm32, sizes/alignments in bytes):
//
//	message      12/4  case u8 @0, string or list<u8> @4 (ptr, len)
//	target       16/8  case u8 @0, u64 or string @8
//	outgoing     32/8  to: target @0, message @16
//	close-frame  12/4  code u16 @0, reason @4
//	action       40/8  case u8 @0, payload @8
//	option<str>  12/4  case u8 @0, string @4
//	acceptance   20/4  subprotocol @0, actions (ptr, len) @12
//	rejection    12/4  status u16 @0, body @4
//	admission    24/4  case u8 @0, payload @4
package main

import (
	"runtime"
	"unsafe"
)

// ---- The API ----

// ConnectionID names a connection for the whole life of the server.
type ConnectionID = uint64

// Message is a WebSocket message: text (valid UTF-8) or binary.
type Message struct {
	Binary bool
	Data   []byte
}

// Text is a text message.
func Text(s string) Message { return Message{Data: []byte(s)} }

// Binary is a binary message.
func Binary(b []byte) Message { return Message{Binary: true, Data: b} }

// String is the message's text (or its bytes, for a binary message).
func (m Message) String() string { return string(m.Data) }

// Connection is what a connection asked with: its request path (with the query), headers,
// remote address and offered subprotocols. Resumed is set when it is re-attached to a new
// version of the plugin after a reload.
type Connection struct {
	ID         ConnectionID
	Path       string
	Headers    [][2]string
	RemoteAddr string
	Protocols  []string
	Resumed    bool
}

// Target is where Send delivers a message.
type Target struct {
	kind  uint8
	id    uint64
	topic string
}

// Sender is the connection of the event.
func Sender() Target { return Target{kind: 0} }

// ToConnection is the connection id.
func ToConnection(id ConnectionID) Target { return Target{kind: 1, id: id} }

// Everyone is every connection of the route, the sender included.
func Everyone() Target { return Target{kind: 2} }

// Others is every connection of the route but the sender.
func Others() Target { return Target{kind: 3} }

// Topic is every subscriber of the topic name.
func Topic(name string) Target { return Target{kind: 4, topic: name} }

// Action is what the host carries out after an event.
type Action struct {
	kind   uint8
	msg    Message
	to     Target
	topic  string
	code   uint16
	reason string
}

// Reply sends msg back to the connection of the event.
func Reply(msg Message) Action { return Action{kind: 0, msg: msg} }

// Broadcast sends msg to every connection of the route, the sender included.
func Broadcast(msg Message) Action { return Action{kind: 1, msg: msg} }

// Send sends msg to a target.
func Send(to Target, msg Message) Action { return Action{kind: 2, to: to, msg: msg} }

// SendTo sends msg to the connection id.
func SendTo(id ConnectionID, msg Message) Action { return Send(ToConnection(id), msg) }

// Publish sends msg to every subscriber of the topic name.
func Publish(topic string, msg Message) Action { return Send(Topic(topic), msg) }

// Subscribe subscribes the connection of the event to the topic name.
func Subscribe(topic string) Action { return Action{kind: 3, topic: topic} }

// Unsubscribe unsubscribes the connection of the event from the topic name.
func Unsubscribe(topic string) Action { return Action{kind: 4, topic: topic} }

// Close closes the connection of the event with code (1000, or 3000-4999) and reason.
func Close(code uint16, reason string) Action { return Action{kind: 5, code: code, reason: reason} }

// Admission is what OnOpen answers.
type Admission struct {
	reject      bool
	subprotocol string // none if ""
	actions     []Action
	status      uint16
	body        string
}

// Accept admits the connection with a subprotocol ("" for none) and actions to carry out at once.
func Accept(subprotocol string, actions ...Action) Admission {
	return Admission{subprotocol: subprotocol, actions: actions}
}

// Reject refuses the connection with an HTTP status (400-599) and a body.
func Reject(status uint16, body string) Admission { return Admission{reject: true, status: status, body: body} }

// Plugin holds the handlers of the plugin's events; only OnMessage is required.
//
// Snapshot and Restore hand the plugin's state over to its next version on a hot reload: the
// old version's Snapshot, then the new version's Restore before any event (an error refuses the
// new version, and the old one keeps serving). Without them, nothing is handed over.
type Plugin struct {
	OnOpen    func(conn Connection) Admission
	OnMessage func(conn ConnectionID, msg Message) []Action
	OnClose   func(conn ConnectionID, code uint16, reason string) []Action
	Snapshot  func() []byte
	Restore   func(snapshot []byte) error
}

var plugin Plugin

// Register sets the plugin's handlers: call it from an init function.
func Register(p Plugin) { plugin = p }

// Level is the level of a log line.
type Level uint32

const (
	LevelTrace Level = iota
	LevelDebug
	LevelInfo
	LevelWarn
	LevelError
)

// Log writes a line to the server's log, tagged with the plugin's name.
func Log(level Level, s string) {
	hostLog(uint32(level), unsafe.Pointer(unsafe.StringData(s)), uint32(len(s)))
	runtime.KeepAlive(s)
}

// log: func(level: level, message: string), level an enum (trace 0 ... error 4).
//
//go:wasmimport wsplug:plugin/host@0.1.0 log
func hostLog(level uint32, ptr unsafe.Pointer, n uint32)

// ---- Memory ----

var pinned = map[uint32][]uint64{}

// alloc returns 8-aligned zeroed memory ([]uint64 backing), pinned until release.
func alloc(size uint32) uint32 {
	buf := make([]uint64, (size+7)/8+1)
	ptr := uint32(uintptr(unsafe.Pointer(&buf[0])))
	pinned[ptr] = buf
	return ptr
}

func release(ptr uint32) { delete(pinned, ptr) }

func bytesAt(ptr, size uint32) []byte {
	if size == 0 {
		return nil
	}
	return unsafe.Slice((*byte)(unsafe.Pointer(uintptr(ptr))), size)
}

func load32(addr uint32) uint32     { return *(*uint32)(unsafe.Pointer(uintptr(addr))) }
func store8(addr uint32, v uint8)   { *(*uint8)(unsafe.Pointer(uintptr(addr))) = v }
func store16(addr uint32, v uint16) { *(*uint16)(unsafe.Pointer(uintptr(addr))) = v }
func store32(addr uint32, v uint32) { *(*uint32)(unsafe.Pointer(uintptr(addr))) = v }
func store64(addr uint32, v uint64) { *(*uint64)(unsafe.Pointer(uintptr(addr))) = v }

//go:wasmexport cabi_realloc
func cabiRealloc(old, oldSize, align, newSize uint32) uint32 {
	if newSize == 0 {
		release(old)
		return align
	}
	ptr := alloc(newSize)
	if old != 0 {
		copy(bytesAt(ptr, newSize), bytesAt(old, min(oldSize, newSize)))
		release(old)
	}
	return ptr
}

// ---- Lifting what the host passes ----

// liftBytes copies a buffer the host wrote with cabi_realloc and releases it.
func liftBytes(ptr, n uint32) []byte {
	if n == 0 {
		return nil
	}
	b := append([]byte(nil), bytesAt(ptr, n)...)
	release(ptr)
	return b
}

func liftString(ptr, n uint32) string {
	s := string(bytesAt(ptr, n))
	if n != 0 {
		release(ptr)
	}
	return s
}

// liftStrings copies a list<string> (stride 8) and releases it.
func liftStrings(list, n uint32) []string {
	out := make([]string, 0, n)
	for i := uint32(0); i < n; i++ {
		out = append(out, liftString(load32(list+i*8), load32(list+i*8+4)))
	}
	if n != 0 {
		release(list)
	}
	return out
}

// liftPairs copies a list<tuple<string, string>> (stride 16) and releases it.
func liftPairs(list, n uint32) [][2]string {
	out := make([][2]string, 0, n)
	for i := uint32(0); i < n; i++ {
		p := list + i*16
		out = append(out, [2]string{liftString(load32(p), load32(p+4)), liftString(load32(p+8), load32(p+12))})
	}
	if n != 0 {
		release(list)
	}
	return out
}

// ---- Lowering what the plugin returns ----

// What the last export returned points into these; dropped by its post-return function (and at
// the start of the next export, should a post-return ever be skipped).
var keep []any

// lowerBytes stores a buffer's (ptr, len) at addr, keeping it reachable.
func lowerBytes(addr uint32, b []byte) {
	if len(b) == 0 {
		store32(addr, 0)
		store32(addr+4, 0)
		return
	}
	keep = append(keep, b)
	store32(addr, uint32(uintptr(unsafe.Pointer(&b[0]))))
	store32(addr+4, uint32(len(b)))
}

func lowerString(addr uint32, s string) {
	if len(s) == 0 {
		store32(addr, 0)
		store32(addr+4, 0)
		return
	}
	keep = append(keep, s)
	store32(addr, uint32(uintptr(unsafe.Pointer(unsafe.StringData(s)))))
	store32(addr+4, uint32(len(s)))
}

func lowerMessage(addr uint32, m Message) {
	if m.Binary {
		store8(addr, 1)
	} else {
		store8(addr, 0)
	}
	lowerBytes(addr+4, m.Data)
}

// The return area of the exports: 24 bytes, 8-aligned (an admission is the largest result).
var retArea [3]uint64

func retPtr() uint32 {
	retArea = [3]uint64{}
	return uint32(uintptr(unsafe.Pointer(&retArea[0])))
}

// lowerActions stores a list<action> (ptr, len) at addr.
func lowerActions(addr uint32, actions []Action) {
	n := uint32(len(actions))
	if n == 0 {
		store32(addr, 0)
		store32(addr+4, 0)
		return
	}
	buf := make([]uint64, n*5) // 40 bytes an action, 8-aligned, zeroed
	keep = append(keep, buf)
	base := uint32(uintptr(unsafe.Pointer(&buf[0])))
	for i, a := range actions {
		p := base + uint32(i)*40
		store8(p, a.kind)
		switch a.kind {
		case 0, 1: // reply, broadcast
			lowerMessage(p+8, a.msg)
		case 2: // send: outgoing { to: target @0, message @16 }
			store8(p+8, a.to.kind)
			switch a.to.kind {
			case 1:
				store64(p+16, a.to.id)
			case 4:
				lowerString(p+16, a.to.topic)
			}
			lowerMessage(p+24, a.msg)
		case 3, 4: // subscribe, unsubscribe
			lowerString(p+8, a.topic)
		case 5: // close
			store16(p+8, a.code)
			lowerString(p+12, a.reason)
		}
	}
	store32(addr, base)
	store32(addr+4, n)
}

// ---- The exports ----

// on-open: func(conn: connection) -> admission. The connection record flattens to id (i64),
// path, headers, remote-addr, protocols (ptr and len each) and resumed (i32).
//
//go:wasmexport wsplug:plugin/handler@0.1.0#on-open
func onOpenExport(id uint64, pathPtr, pathLen, headersPtr, headersLen, addrPtr, addrLen, protosPtr, protosLen, resumed uint32) uint32 {
	keep = nil
	conn := Connection{
		ID:         id,
		Path:       liftString(pathPtr, pathLen),
		Headers:    liftPairs(headersPtr, headersLen),
		RemoteAddr: liftString(addrPtr, addrLen),
		Protocols:  liftStrings(protosPtr, protosLen),
		Resumed:    resumed != 0,
	}
	adm := Accept("")
	if plugin.OnOpen != nil {
		adm = plugin.OnOpen(conn)
	}
	ret := retPtr()
	if adm.reject {
		store8(ret, 1) // admission::reject
		store16(ret+4, adm.status)
		lowerString(ret+8, adm.body)
		return ret
	}
	// admission::accept (case 0)
	if adm.subprotocol != "" {
		store8(ret+4, 1) // some
		lowerString(ret+8, adm.subprotocol)
	}
	lowerActions(ret+16, adm.actions)
	return ret
}

// on-message: func(conn, msg: message) -> list<action>. The message flattens to its case (0 text,
// 1 binary) and a ptr and len.
//
//go:wasmexport wsplug:plugin/handler@0.1.0#on-message
func onMessageExport(conn uint64, kind, ptr, size uint32) uint32 {
	keep = nil
	msg := Message{Binary: kind != 0, Data: liftBytes(ptr, size)}
	var actions []Action
	if plugin.OnMessage != nil {
		actions = plugin.OnMessage(conn, msg)
	}
	ret := retPtr()
	lowerActions(ret, actions)
	return ret
}

// on-close: func(conn, code: u16, reason: string) -> list<action>.
//
//go:wasmexport wsplug:plugin/handler@0.1.0#on-close
func onCloseExport(conn uint64, code, reasonPtr, reasonLen uint32) uint32 {
	keep = nil
	reason := liftString(reasonPtr, reasonLen)
	var actions []Action
	if plugin.OnClose != nil {
		actions = plugin.OnClose(conn, uint16(code), reason)
	}
	ret := retPtr()
	lowerActions(ret, actions)
	return ret
}

// snapshot: func() -> list<u8>, returned as (ptr, len) in the return area.
//
//go:wasmexport wsplug:plugin/state@0.1.0#snapshot
func snapshotExport() uint32 {
	keep = nil
	var b []byte
	if plugin.Snapshot != nil {
		b = plugin.Snapshot()
	}
	ret := retPtr()
	lowerBytes(ret, b)
	return ret
}

// restore: func(snapshot: list<u8>) -> result<_, string>: case u8 @0 (0 ok, 1 err), string @4.
//
//go:wasmexport wsplug:plugin/state@0.1.0#restore
func restoreExport(ptr, n uint32) uint32 {
	keep = nil
	b := liftBytes(ptr, n)
	ret := retPtr()
	if plugin.Restore != nil {
		if err := plugin.Restore(b); err != nil {
			store8(ret, 1)
			lowerString(ret+4, err.Error())
		}
	}
	return ret
}

//go:wasmexport cabi_post_wsplug:plugin/state@0.1.0#snapshot
func snapshotPost(ret uint32) { keep = nil }

//go:wasmexport cabi_post_wsplug:plugin/state@0.1.0#restore
func restorePost(ret uint32) { keep = nil }

//go:wasmexport cabi_post_wsplug:plugin/handler@0.1.0#on-open
func onOpenPost(ret uint32) { keep = nil }

//go:wasmexport cabi_post_wsplug:plugin/handler@0.1.0#on-message
func onMessagePost(ret uint32) { keep = nil }

//go:wasmexport cabi_post_wsplug:plugin/handler@0.1.0#on-close
func onClosePost(ret uint32) { keep = nil }
