// The echo plugin in Go: every message goes back to its sender, text as text, binary as binary;
// every connection is admitted, without a subprotocol.
//
// There is no wit-bindgen for Go here (its generator and runtime are Go modules, which cannot be
// fetched), so this file is the canonical ABI glue of the `plugin` world written by hand for
// wasm32: `//go:wasmexport` functions with the core signatures the component model expects
// (`wsplug:plugin/handler@0.1.0#on-open` etc.), `cabi_realloc`, and post-return functions. The
// core module is built for wasip1 with -buildmode=c-shared and made a component with the world's
// type and the WASI preview 1 adapter (build.sh).
package main

import "unsafe"

// Memory the host writes into (cabi_realloc) or reads from (return values) lives in Go slices
// that must stay reachable until it is released: Go's collector does not move objects, but it
// frees unreachable ones.
var pinned = map[uint32][]byte{}

func alloc(size uint32) uint32 {
	// At least 16 bytes: smaller objects may come from the tiny allocator, unaligned.
	n := size
	if n < 16 {
		n = 16
	}
	buf := make([]byte, n)
	ptr := uint32(uintptr(unsafe.Pointer(&buf[0])))
	pinned[ptr] = buf
	return ptr
}

func release(ptr uint32) {
	delete(pinned, ptr)
}

func bytesAt(ptr, size uint32) []byte {
	if size == 0 {
		return nil
	}
	return unsafe.Slice((*byte)(unsafe.Pointer(uintptr(ptr))), size)
}

func load32(addr uint32) uint32 {
	return *(*uint32)(unsafe.Pointer(uintptr(addr)))
}

func store8(addr uint32, v uint8)   { *(*uint8)(unsafe.Pointer(uintptr(addr))) = v }
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

// The return area of the exports: 24 bytes, 8-aligned (an admission is the largest result).
var retArea [3]uint64

func retPtr() uint32 {
	retArea = [3]uint64{}
	return uint32(uintptr(unsafe.Pointer(&retArea[0])))
}

// releaseStrings releases a list<string>'s elements and the list (each element: ptr, len).
func releaseStrings(list, n, stride uint32) {
	for i := uint32(0); i < n; i++ {
		for off := uint32(0); off < stride; off += 8 {
			if load32(list+i*stride+off+4) != 0 {
				release(load32(list + i*stride + off))
			}
		}
	}
	release(list)
}

// on-open: func(conn: connection) -> admission. The connection record flattens to id (i64),
// path, headers, remote-addr, protocols (ptr and len each) and resumed (i32).
//
//go:wasmexport wsplug:plugin/handler@0.1.0#on-open
func onOpen(id uint64, pathPtr, pathLen, headersPtr, headersLen, addrPtr, addrLen, protosPtr, protosLen, resumed uint32) uint32 {
	release(pathPtr)
	releaseStrings(headersPtr, headersLen, 16)
	release(addrPtr)
	releaseStrings(protosPtr, protosLen, 8)
	// admission::accept(acceptance { subprotocol: none, actions: [] }): all zeroes.
	return retPtr()
}

// The action being returned and the message buffer it holds, released after the host copied them.
var lastAction, lastMessage uint32

// on-message: func(conn, msg: message) -> list<action>. The message flattens to its case (0 text,
// 1 binary) and a ptr and len.
//
//go:wasmexport wsplug:plugin/handler@0.1.0#on-message
func onMessage(conn uint64, kind, ptr, size uint32) uint32 {
	// One action (40 bytes, payload at 8): reply(message), the message moved, not copied.
	action := alloc(40)
	store8(action, 0)             // action::reply
	store8(action+8, uint8(kind)) // message case
	store32(action+12, ptr)
	store32(action+16, size)
	lastAction, lastMessage = action, ptr
	ret := retPtr()
	store32(ret, action)
	store32(ret+4, 1)
	return ret
}

//go:wasmexport cabi_post_wsplug:plugin/handler@0.1.0#on-message
func onMessagePost(ret uint32) {
	release(lastAction)
	release(lastMessage)
}

// on-close: func(conn, code: u16, reason: string) -> list<action>.
//
//go:wasmexport wsplug:plugin/handler@0.1.0#on-close
func onClose(conn uint64, code, reasonPtr, reasonLen uint32) uint32 {
	release(reasonPtr)
	return retPtr() // an empty list
}

func main() {}
