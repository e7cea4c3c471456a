// {{name}}: a wsplug plugin in Go. It admits every connection, answers each text message with the
// same text in upper case, and sends binary messages back unchanged.
//
// Edit, run ./build.sh, and a running `wsplug --route /{{name}}={{name}}.wasm` picks the new version
// up without dropping a connection. The SDK is wsplug.go (package main, beside this file). Keep to
// packages that do not bring in os (fmt, encoding/json do): strings, strconv, bytes, ... are fine.
package main

import (
	"strconv"
	"strings"
)

func init() {
	Register(Plugin{
		OnOpen: func(conn Connection) Admission {
			Log(LevelInfo, "connection "+strconv.FormatUint(conn.ID, 10)+" opened "+conn.Path)
			return Accept("")
		},
		OnMessage: func(conn ConnectionID, msg Message) []Action {
			if msg.Binary {
				return []Action{Reply(msg)}
			}
			return []Action{Reply(Text(strings.ToUpper(msg.String())))}
		},
	})
}

func main() {}
