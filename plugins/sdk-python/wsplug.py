"""The wsplug SDK for Python plugins (componentize-py): the Python side of what the Rust SDK
(plugins/sdk) gives a Rust plugin.

    import wsplug
    from wsplug import reply, text

    class Shout(wsplug.Plugin):
        def on_message(self, conn, msg):
            if isinstance(msg, wsplug.Text):
                return [reply(text(msg.value.upper()))]
            return [reply(msg)]

    Handler, State = wsplug.export(Shout())

It brings:

- `Plugin`, a base class with defaults for everything but `on_message` (`on_open` admits everyone,
  `on_close` does nothing, `snapshot` and `restore` hand nothing over), and `export`, which makes
  the contract's `Handler` and `State` classes of it (componentize-py looks them up by name in the
  app module) and checks what each handler returns: a wrongly shaped action is reported as
  ``on_message returned a wrong shape: action 1 (send): field 'to': expected a target such as
  wsplug.topic("room"), got str ('room')``, not as a bare conversion error;
- constructors for messages, actions and admissions (`text`, `reply`, `publish`, `accept`, ...);
- logging to the server's log: `wsplug.log.info(...)` and Python's `logging` module (its root
  logger goes to the host's `log` import); `print` goes to the server's log too, as the plugin's
  stdout;
- `json_message`/`parse_json` for JSON over text messages, and `query_param` for the request's
  query string.

A handler may return None for "no actions" (and `on_open`, None for "admit").
"""

import json as _json
import logging as _logging
from typing import Any, Callable, List, Optional, Union
from urllib.parse import parse_qsl, urlsplit

from componentize_py_types import Err
from wit_world import exports
from wit_world.imports import host, types

__all__ = [
    "Plugin", "export", "log",
    "Text", "Binary", "Message", "Action", "Admission", "Connection", "Target",
    "text", "binary", "json_message", "reply", "broadcast", "send", "send_to", "publish",
    "subscribe", "unsubscribe", "close", "sender", "connection", "everyone", "others", "topic",
    "accept", "reject", "parse_json", "query_param",
]

# ---- The contract's types, by shorter names ----

Text = types.Message_Text
Binary = types.Message_Binary
Message = types.Message
Action = types.Action
Admission = types.Admission
Connection = types.Connection
Target = types.Target


# ---- Logging ----

class _Log:
    """`wsplug.log.info("...")` etc.: one line in the server's log, tagged with the plugin."""

    @staticmethod
    def trace(message: str) -> None:
        host.log(host.Level.TRACE, str(message))

    @staticmethod
    def debug(message: str) -> None:
        host.log(host.Level.DEBUG, str(message))

    @staticmethod
    def info(message: str) -> None:
        host.log(host.Level.INFO, str(message))

    @staticmethod
    def warn(message: str) -> None:
        host.log(host.Level.WARN, str(message))

    @staticmethod
    def error(message: str) -> None:
        host.log(host.Level.ERROR, str(message))


log = _Log()


class _HostLogHandler(_logging.Handler):
    """Python's `logging` into the host's log, level for level."""

    def emit(self, record: _logging.LogRecord) -> None:
        if record.levelno >= _logging.ERROR:
            level = host.Level.ERROR
        elif record.levelno >= _logging.WARNING:
            level = host.Level.WARN
        elif record.levelno >= _logging.INFO:
            level = host.Level.INFO
        else:
            level = host.Level.DEBUG
        host.log(level, self.format(record))


_root = _logging.getLogger()
if not any(isinstance(h, _HostLogHandler) for h in _root.handlers):
    _root.addHandler(_HostLogHandler())
    _root.setLevel(_logging.INFO)


# ---- Messages, targets, actions, admissions ----

def text(s: str) -> Message:
    """A text message."""
    return types.Message_Text(str(s))


def binary(data: Union[bytes, bytearray]) -> Message:
    """A binary message."""
    return types.Message_Binary(bytes(data))


def json_message(value: Any) -> Message:
    """A text message holding `value` as JSON."""
    return text(_json.dumps(value, ensure_ascii=False, separators=(",", ":")))


def _message(m: Union[Message, str]) -> Message:
    return text(m) if isinstance(m, str) else m


def reply(msg: Union[Message, str]) -> Action:
    """Sends `msg` (a message, or a str for text) back to the connection of the event."""
    return types.Action_Reply(_message(msg))


def broadcast(msg: Union[Message, str]) -> Action:
    """Sends `msg` to every connection of the route, the sender included."""
    return types.Action_Broadcast(_message(msg))


def send(to: Target, msg: Union[Message, str]) -> Action:
    """Sends `msg` to a target: see `connection`, `everyone`, `others`, `topic`."""
    return types.Action_Send(types.Outgoing(to=to, message=_message(msg)))


def send_to(conn: int, msg: Union[Message, str]) -> Action:
    """Sends `msg` to the connection `conn`."""
    return send(connection(conn), msg)


def publish(name: str, msg: Union[Message, str]) -> Action:
    """Sends `msg` to every subscriber of the topic `name`."""
    return send(topic(name), msg)


def subscribe(name: str) -> Action:
    """Subscribes the connection of the event to the topic `name`."""
    return types.Action_Subscribe(str(name))


def unsubscribe(name: str) -> Action:
    """Unsubscribes the connection of the event from the topic `name`."""
    return types.Action_Unsubscribe(str(name))


def close(code: int = 1000, reason: str = "") -> Action:
    """Closes the connection of the event with `code` (1000, or 3000-4999) and `reason`."""
    return types.Action_Close(types.CloseFrame(code=code, reason=reason))


def sender() -> Target:
    return types.Target_Sender()


def connection(conn: int) -> Target:
    return types.Target_Connection(conn)


def everyone() -> Target:
    return types.Target_Everyone()


def others() -> Target:
    return types.Target_Others()


def topic(name: str) -> Target:
    return types.Target_Topic(str(name))


def accept(subprotocol: Optional[str] = None, actions: Optional[List[Action]] = None) -> Admission:
    """Admits the connection, with a subprotocol (or None) and actions to carry out at once."""
    return types.Admission_Accept(types.Acceptance(subprotocol=subprotocol, actions=list(actions or [])))


def reject(status: int, body: str = "") -> Admission:
    """Refuses the connection with an HTTP status (400-599) and a body."""
    return types.Admission_Reject(types.Rejection(status=status, body=body))


# ---- JSON and the query string ----

def parse_json(msg: Message) -> Any:
    """The JSON value of a text message, or None if it is binary or not JSON."""
    if not isinstance(msg, types.Message_Text):
        return None
    try:
        return _json.loads(msg.value)
    except ValueError:
        return None


def query_param(path: str, name: str) -> Optional[str]:
    """The decoded value of the query parameter `name` in `path` (e.g. conn.path), or None."""
    for key, value in parse_qsl(urlsplit(path).query, keep_blank_values=True):
        if key == name:
            return value
    return None


# ---- Checking what a handler returns ----

class _Shape(Exception):
    pass


def _describe(v: Any) -> str:
    if v is None:
        return "None"
    r = repr(v)
    return f"{type(v).__name__} ({r[:40] + '…' if len(r) > 40 else r})"


def _expect(where: str, v: Any, ok: bool, expected: str) -> None:
    if not ok:
        raise _Shape(f"{where}: expected {expected}, got {_describe(v)}")


def _check_int(where: str, v: Any, lo: int, hi: int) -> None:
    _expect(where, v, isinstance(v, int) and not isinstance(v, bool) and lo <= v <= hi,
            f"an int from {lo} to {hi}")


def _check_message(where: str, m: Any) -> None:
    _expect(where, m, isinstance(m, (types.Message_Text, types.Message_Binary)),
            "a message: wsplug.text(str) or wsplug.binary(bytes)")
    if isinstance(m, types.Message_Text):
        _expect(f"{where} (text): field 'value'", m.value, isinstance(m.value, str), "a str")
    else:
        _expect(f"{where} (binary): field 'value'", m.value, isinstance(m.value, (bytes, bytearray)), "bytes")


_TARGETS = (types.Target_Sender, types.Target_Connection, types.Target_Everyone, types.Target_Others,
            types.Target_Topic)


def _check_target(where: str, t: Any) -> None:
    _expect(where, t, isinstance(t, _TARGETS), 'a target such as wsplug.topic("room")')
    if isinstance(t, types.Target_Connection):
        _check_int(f"{where} (connection): field 'value'", t.value, 0, 2**64 - 1)
    elif isinstance(t, types.Target_Topic):
        _expect(f"{where} (topic): field 'value'", t.value, isinstance(t.value, str), "a str")


_ACTION_NAMES = {
    types.Action_Reply: "reply", types.Action_Broadcast: "broadcast", types.Action_Send: "send",
    types.Action_Subscribe: "subscribe", types.Action_Unsubscribe: "unsubscribe", types.Action_Close: "close",
}


def _check_action(where: str, a: Any) -> None:
    name = _ACTION_NAMES.get(type(a))
    _expect(where, a, name is not None, "an action such as wsplug.reply(...)")
    where = f"{where} ({name})"
    if isinstance(a, (types.Action_Reply, types.Action_Broadcast)):
        _check_message(f"{where}: field 'value'", a.value)
    elif isinstance(a, types.Action_Send):
        _expect(f"{where}: field 'value'", a.value, isinstance(a.value, types.Outgoing),
                "an Outgoing (use wsplug.send(to, msg))")
        _check_target(f"{where}: field 'to'", a.value.to)
        _check_message(f"{where}: field 'message'", a.value.message)
    elif isinstance(a, (types.Action_Subscribe, types.Action_Unsubscribe)):
        _expect(f"{where}: field 'value'", a.value, isinstance(a.value, str), "a topic name (str)")
    else:
        _expect(f"{where}: field 'value'", a.value, isinstance(a.value, types.CloseFrame),
                "a CloseFrame (use wsplug.close(code, reason))")
        _check_int(f"{where}: field 'code'", a.value.code, 0, 65535)
        _expect(f"{where}: field 'reason'", a.value.reason, isinstance(a.value.reason, str), "a str")


def _check_actions(where: str, actions: Any) -> List[Action]:
    if actions is None:
        return []
    _expect(where, actions, isinstance(actions, (list, tuple)), "a list of actions, e.g. [wsplug.reply(...)]")
    for i, a in enumerate(actions):
        _check_action(f"action {i}", a)
    return list(actions)


def _check_admission(admission: Any) -> Admission:
    if admission is None:
        return accept()
    _expect("the result", admission, isinstance(admission, (types.Admission_Accept, types.Admission_Reject)),
            "an admission: wsplug.accept(...) or wsplug.reject(status, body)")
    if isinstance(admission, types.Admission_Reject):
        _check_int("reject: field 'status'", admission.value.status, 0, 65535)
        _expect("reject: field 'body'", admission.value.body, isinstance(admission.value.body, str), "a str")
    else:
        sub = admission.value.subprotocol
        _expect("accept: field 'subprotocol'", sub, sub is None or isinstance(sub, str), "a str or None")
        admission.value.actions = _check_actions("accept: field 'actions'", admission.value.actions)
    return admission


def _checked(name: str, check: Callable[[Any], Any], result: Any) -> Any:
    try:
        return check(result)
    except _Shape as e:
        raise TypeError(f"{name} returned a wrong shape: {e}") from None


class Plugin:
    """The events a plugin handles: subclass it, define `on_message`, pass an instance to `export`."""

    def on_open(self, conn: Connection) -> Optional[Admission]:
        """A connection asks to open (default: admit it, with no subprotocol and no actions)."""
        return accept()

    def on_message(self, conn: int, msg: Message) -> Optional[List[Action]]:
        """A message arrived on `conn`."""
        raise NotImplementedError("a wsplug.Plugin must define on_message(self, conn, msg)")

    def on_close(self, conn: int, code: int, reason: str) -> Optional[List[Action]]:
        """`conn` has closed (default: nothing to do)."""
        return []

    def snapshot(self) -> bytes:
        """The state to hand over to the next version on a hot reload (default: nothing)."""
        return b""

    def restore(self, snapshot: bytes) -> None:
        """Takes over a snapshot of the previous version; raise to refuse it (default: ignore it)."""


def export(plugin: Plugin):
    """The contract's `Handler` and `State` classes for `plugin`: `Handler, State = export(MyPlugin())`."""

    class Handler(exports.Handler):
        def on_open(self, conn: types.Connection) -> types.Admission:
            return _checked("on_open", _check_admission, plugin.on_open(conn))

        def on_message(self, conn: int, msg: types.Message) -> List[types.Action]:
            return _checked("on_message", lambda r: _check_actions("the result", r), plugin.on_message(conn, msg))

        def on_close(self, conn: int, code: int, reason: str) -> List[types.Action]:
            return _checked("on_close", lambda r: _check_actions("the result", r),
                            plugin.on_close(conn, code, reason))

    # The world `plugin` has no `state` export: then there is no State class to make.
    base = getattr(exports, "State", None)
    if base is None:
        return Handler, None

    class State(base):
        def snapshot(self) -> bytes:
            s = plugin.snapshot()
            return s.encode() if isinstance(s, str) else bytes(s or b"")

        def restore(self, snapshot: bytes) -> None:
            try:
                plugin.restore(snapshot)
            except Exception as e:  # the host gets the reason, and keeps the old version
                raise Err(f"{type(e).__name__}: {e}") from None

    return Handler, State
