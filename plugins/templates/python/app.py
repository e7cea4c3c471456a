"""{{name}}: a wsplug plugin in Python. It admits every connection, answers each text message with
the same text in upper case, and sends binary messages back unchanged.

Edit, run ./build.sh, and a running `wsplug --route /{{name}}={{name}}.wasm` picks the new version up
without dropping a connection. The SDK is wsplug.py.
"""

import wsplug
from wsplug import reply, text


class App(wsplug.Plugin):
    def on_open(self, conn: wsplug.Connection) -> wsplug.Admission:
        wsplug.log.info(f"connection {conn.id} opened {conn.path}")
        return wsplug.accept()

    def on_message(self, conn: int, msg: wsplug.Message) -> list:
        if isinstance(msg, wsplug.Text):
            return [reply(text(msg.value.upper()))]
        return [reply(msg)]


# componentize-py looks for these two classes in the app module.
Handler, State = wsplug.export(App())
