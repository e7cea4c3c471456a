// Hand-written canonical ABI glue of the `plugin` world for wasm32 (there is no wit-bindgen for
// Go here: its generator and runtime are Go modules, which cannot be fetched). Adapted from
// plugins/echo-go/echo.go: the exports with the core signatures the component model expects,
// `cabi_realloc`, the post-return functions, the `log` and clock imports; lifting of the
// arguments (connection, message, strings) and lowering of the results (admission, list<action>).
//
// Memory: what the host writes (cabi_realloc) lives in Go slices pinned in `pinned` until the
// export has copied it into Go values and released it. What an export returns points into Go
// memory (strings' bytes, the action array) kept reachable in `keep` until the post-return
// function drops it: Go's collector does not move objects, but it frees unreachable ones.
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

// liftString copies a string the host wrote with cabi_realloc and releases its buffer.
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

// dropTuples releases a list<tuple<string, string>> (stride 16) unread: the headers.
func dropTuples(list, n uint32) {
	for i := uint32(0); i < n; i++ {
		liftString(load32(list+i*16), load32(list+i*16+4))
		liftString(load32(list+i*16+8), load32(list+i*16+12))
	}
	if n != 0 {
		release(list)
	}
}

// What the last export returned points into these; dropped by its post-return function (and at
// the start of the next export, should a post-return ever be skipped).
var keep []any

// lowerString stores a string's (ptr, len) at addr, keeping its bytes reachable.
func lowerString(addr uint32, s string) {
	keep = append(keep, s)
	store32(addr, uint32(uintptr(unsafe.Pointer(unsafe.StringData(s)))))
	store32(addr+4, uint32(len(s)))
}

// The return area of the exports: 24 bytes, 8-aligned (an admission is the largest result).
var retArea [3]uint64

func retPtr() uint32 {
	retArea = [3]uint64{}
	return uint32(uintptr(unsafe.Pointer(&retArea[0])))
}

// Action kinds used by the chat (the `action` cases; `target::topic` for `send`).
const (
	actReply       = 0
	actSend        = 2 // to a topic
	actSubscribe   = 3
	actUnsubscribe = 4
)

type action struct {
	kind  uint8
	topic string // send, subscribe, unsubscribe
	text  string // reply, send (a text message)
}

// lowerActions stores a list<action> (ptr, len) at addr.
func lowerActions(addr uint32, actions []action) {
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
		case actReply:
			store8(p+8, 0) // message::text
			lowerString(p+12, a.text)
		case actSend:
			store8(p+8, 4) // target::topic
			lowerString(p+16, a.topic)
			store8(p+24, 0) // message::text
			lowerString(p+28, a.text)
		case actSubscribe, actUnsubscribe:
			lowerString(p+8, a.topic)
		}
	}
	store32(addr, base)
	store32(addr+4, n)
}

// admission is what onOpen answers: reject if status != 0.
type admission struct {
	subprotocol string // accepted with this subprotocol if not ""
	actions     []action
	status      uint16
	body        string
}

// on-open: func(conn: connection) -> admission. The connection record flattens to id (i64),
// path, headers, remote-addr, protocols (ptr and len each) and resumed (i32).
//
//go:wasmexport wsplug:plugin/handler@0.1.0#on-open
func onOpenExport(id uint64, pathPtr, pathLen, headersPtr, headersLen, addrPtr, addrLen, protosPtr, protosLen, resumed uint32) uint32 {
	keep = nil
	path := liftString(pathPtr, pathLen)
	dropTuples(headersPtr, headersLen)
	liftString(addrPtr, addrLen)
	protocols := liftStrings(protosPtr, protosLen)
	adm := onOpen(id, path, protocols, resumed != 0)
	ret := retPtr()
	if adm.status != 0 {
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
	var actions []action
	if kind == 0 {
		actions = onText(conn, liftString(ptr, size))
	} else {
		if size != 0 {
			release(ptr)
		}
		actions = onBinary(conn)
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
	liftString(reasonPtr, reasonLen)
	ret := retPtr()
	lowerActions(ret, onClose(conn))
	return ret
}

//go:wasmexport cabi_post_wsplug:plugin/handler@0.1.0#on-open
func onOpenPost(ret uint32) { keep = nil }

//go:wasmexport cabi_post_wsplug:plugin/handler@0.1.0#on-message
func onMessagePost(ret uint32) { keep = nil }

//go:wasmexport cabi_post_wsplug:plugin/handler@0.1.0#on-close
func onClosePost(ret uint32) { keep = nil }

// snapshot: func() -> list<u8>, returned as (ptr, len) in the return area.
//
//go:wasmexport wsplug:plugin/state@0.1.0#snapshot
func snapshotExport() uint32 {
	keep = nil
	b := takeSnapshot()
	ret := retPtr()
	if len(b) != 0 {
		keep = append(keep, b)
		store32(ret, uint32(uintptr(unsafe.Pointer(&b[0]))))
		store32(ret+4, uint32(len(b)))
	}
	return ret
}

// restore: func(snapshot: list<u8>) -> result<_, string>: case u8 @0 (0 ok, 1 err), string @4.
//
//go:wasmexport wsplug:plugin/state@0.1.0#restore
func restoreExport(ptr, n uint32) uint32 {
	keep = nil
	b := append([]byte(nil), bytesAt(ptr, n)...)
	if n != 0 {
		release(ptr)
	}
	ret := retPtr()
	if e := restoreSnapshot(b); e != "" {
		store8(ret, 1)
		lowerString(ret+4, e)
	}
	return ret
}

//go:wasmexport cabi_post_wsplug:plugin/state@0.1.0#snapshot
func snapshotPost(ret uint32) { keep = nil }

//go:wasmexport cabi_post_wsplug:plugin/state@0.1.0#restore
func restorePost(ret uint32) { keep = nil }

// log: func(level: level, message: string), level an enum (trace 0 ... error 4).
//
//go:wasmimport wsplug:plugin/host@0.1.0 log
func hostLog(level uint32, ptr unsafe.Pointer, n uint32)

// now of wasi:clocks/monotonic-clock@0.2.0: nanoseconds, from the host itself. Go's time.Now
// reads the inert WASI stub's clock, which only counts readings (see chat-go.wit).
//
//go:wasmimport wasi:clocks/monotonic-clock@0.2.0 now
func monotonicNow() uint64

const (
	levelInfo = 2
	levelWarn = 3
)

func logf(level uint32, s string) {
	hostLog(level, unsafe.Pointer(unsafe.StringData(s)), uint32(len(s)))
	runtime.KeepAlive(s)
}
