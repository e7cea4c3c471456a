// The chat's entry points, on the Go SDK (plugins/sdk-go/wsplug.go, which build.sh copies beside
// these files: the canonical ABI glue, the handler and state exports), and the one import the
// SDK does not have: WASI's monotonic clock.
package main

import "errors"

// now of wasi:clocks/monotonic-clock@0.2.0: nanoseconds, from the host itself. Go's time.Now
// reads the inert WASI stub's clock, which only counts readings (see wit/chat-go.wit).
//
//go:wasmimport wasi:clocks/monotonic-clock@0.2.0 now
func monotonicNow() uint64

func init() {
	Register(Plugin{
		OnOpen: func(c Connection) Admission { return onOpen(c.ID, c.Path, c.Protocols, c.Resumed) },
		OnMessage: func(id ConnectionID, msg Message) []Action {
			if msg.Binary {
				return onBinary(id)
			}
			return onText(id, string(msg.Data))
		},
		OnClose:  func(id ConnectionID, code uint16, reason string) []Action { return onClose(id) },
		Snapshot: takeSnapshot,
		Restore: func(snapshot []byte) error {
			if why := restoreSnapshot(snapshot); why != "" {
				return errors.New(why)
			}
			return nil
		},
	})
}

func main() {}
