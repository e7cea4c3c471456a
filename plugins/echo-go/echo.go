// The echo plugin in Go: every message goes back to its sender, text as text, binary as binary;
// every connection is admitted, without a subprotocol (the default OnOpen).
//
// Built with the Go SDK (plugins/sdk-go/wsplug.go, copied beside this file by
// plugins/tools/build-go.sh): it holds the canonical ABI glue and the API used here.
package main

func init() {
	Register(Plugin{
		OnMessage: func(conn ConnectionID, msg Message) []Action {
			return []Action{Reply(msg)}
		},
	})
}

func main() {}
