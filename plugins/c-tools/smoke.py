#!/usr/bin/env python3
"""Smoke test of the C plugins against a running wsplug (standard library only).

    python3 plugins/c-tools/smoke.py echo ws://127.0.0.1:PORT/echo
    python3 plugins/c-tools/smoke.py chat ws://127.0.0.1:PORT/chat

Prints one line per check and exits non-zero on the first failure.
"""
import base64
import json
import os
import socket
import struct
import sys
import urllib.parse


class WS:
    def __init__(self, url, protocols=(), timeout=5.0):
        u = urllib.parse.urlsplit(url)
        self.sock = socket.create_connection((u.hostname, u.port or 80), timeout=timeout)
        target = u.path + ("?" + u.query if u.query else "")
        key = base64.b64encode(os.urandom(16)).decode()
        lines = [f"GET {target} HTTP/1.1", f"Host: {u.netloc}", "Upgrade: websocket",
                 "Connection: Upgrade", f"Sec-WebSocket-Key: {key}", "Sec-WebSocket-Version: 13"]
        if protocols:
            lines.append("Sec-WebSocket-Protocol: " + ", ".join(protocols))
        self.sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
        self.buf = b""
        while b"\r\n\r\n" not in self.buf:
            chunk = self.sock.recv(4096)
            if not chunk:
                break
            self.buf += chunk
        head, _, self.buf = self.buf.partition(b"\r\n\r\n")
        head = head.decode("latin-1").split("\r\n")
        self.status = int(head[0].split()[1])
        self.headers = {k.lower(): v.strip() for k, v in (h.split(":", 1) for h in head[1:] if ":" in h)}
        self.body = b""
        if self.status != 101:
            n = int(self.headers.get("content-length", "0"))
            while len(self.buf) < n:
                chunk = self.sock.recv(4096)
                if not chunk:
                    break
                self.buf += chunk
            self.body = self.buf[:n]

    def send(self, data, opcode=None):
        if isinstance(data, str):
            data, op = data.encode(), 1
        else:
            op = 2
        op = opcode or op
        mask = os.urandom(4)
        n = len(data)
        head = bytes([0x80 | op])
        if n < 126:
            head += bytes([0x80 | n])
        elif n < 65536:
            head += bytes([0x80 | 126]) + struct.pack(">H", n)
        else:
            head += bytes([0x80 | 127]) + struct.pack(">Q", n)
        masked = bytes(b ^ mask[i % 4] for i, b in enumerate(data)) if n < 65536 else _mask_big(data, mask)
        self.sock.sendall(head + mask + masked)

    def _read(self, n):
        while len(self.buf) < n:
            chunk = self.sock.recv(1 << 16)
            if not chunk:
                raise EOFError("connection closed")
            self.buf += chunk
        out, self.buf = self.buf[:n], self.buf[n:]
        return out

    def recv(self):
        """The next data message: (opcode, payload); answers pings, returns close as (8, payload)."""
        message, op = b"", None
        while True:
            b0, b1 = self._read(2)
            n = b1 & 0x7F
            if n == 126:
                n = struct.unpack(">H", self._read(2))[0]
            elif n == 127:
                n = struct.unpack(">Q", self._read(8))[0]
            payload = self._read(n)
            opcode = b0 & 0x0F
            if opcode == 9:
                self.send(payload, opcode=10)
                continue
            if opcode == 10:
                continue
            if opcode == 8:
                return 8, payload
            if opcode != 0:
                op = opcode
            message += payload
            if b0 & 0x80:
                return op, message

    def recv_json(self):
        op, payload = self.recv()
        assert op == 1, f"expected text, got opcode {op}: {payload[:80]!r}"
        return json.loads(payload)

    def close(self):
        try:
            self.send(struct.pack(">H", 1000), opcode=8)
            self.recv()
        except Exception:
            pass
        self.sock.close()


def _mask_big(data, mask):
    n = len(data)
    m = int.from_bytes((mask * (n // 4 + 1))[:n], "big")
    return (int.from_bytes(data, "big") ^ m).to_bytes(n, "big")


def check(what, cond):
    print(("ok   " if cond else "FAIL ") + what)
    if not cond:
        sys.exit(1)


def echo(url):
    ws = WS(url)
    check("echo: handshake 101", ws.status == 101)
    ws.send("hello, wörld")
    check("echo: text round-trips", ws.recv() == (1, "hello, wörld".encode()))
    ws.send(bytes(range(256)))
    check("echo: binary round-trips", ws.recv() == (2, bytes(range(256))))
    ws.send("")
    check("echo: empty text round-trips", ws.recv() == (1, b""))
    big = os.urandom(1 << 20)
    ws.send(big)
    check("echo: 1 MiB binary round-trips", ws.recv() == (2, big))
    ws.close()


def chat(url):
    base = url.split("?")[0]
    ada = WS(base + "?nick=ada&room=r%C3%B6om", ["chat.v1"])
    check("chat: chat.v1 accepted", ada.status == 101 and ada.headers.get("sec-websocket-protocol") == "chat.v1")
    w = ada.recv_json()
    check(f"chat: welcome {w}", w == {"type": "welcome", "nick": "ada", "room": "röom", "members": ["ada"], "history": []})
    bob = WS(base + "?nick=ADA&room=r%C3%B6om")
    check("chat: no subprotocol offered -> accepted without", bob.status == 101 and "sec-websocket-protocol" not in bob.headers)
    w = bob.recv_json()
    check(f"chat: taken nick gets a suffix {w}", w["nick"] == "ADA-2" and w["members"] == ["ADA-2", "ada"])
    j = ada.recv_json()
    check(f"chat: join to the room {j}", j == {"type": "join", "nick": "ADA-2", "room": "röom"})
    bob.send("/nick bob")
    n1, n2 = ada.recv_json(), bob.recv_json()
    check(f"chat: nick event to both {n1}", n1 == n2 == {"type": "nick", "old": "ADA-2", "new": "bob", "room": "röom"})
    text = 'say "hi" \\ \x01\n\u2028 ünï'
    ada.send(text + "\r\n")
    m1, m2 = ada.recv_json(), bob.recv_json()
    check(f"chat: message to the room incl. sender {m1}", m1 == m2 == {"type": "message", "nick": "ada", "room": "röom", "text": text})
    bob.send("hello ada")
    m1, m2 = ada.recv_json(), bob.recv_json()
    check("chat: bob's message reaches ada", m1 == m2 == {"type": "message", "nick": "bob", "room": "röom", "text": "hello ada"})
    bob.send("/who")
    check("chat: /who", bob.recv_json() == {"type": "members", "room": "röom", "members": ["ada", "bob"]})
    bob.send(b"\x00")
    check("chat: binary -> error", bob.recv_json() == {"type": "error", "text": "binary messages are not supported"})
    bob.send("x" * 4097)
    check("chat: too long -> error", bob.recv_json() == {"type": "error", "text": "message too long: at most 4096 bytes"})
    bob.send("/nick Ada")
    check("chat: taken nick -> error", bob.recv_json() == {"type": "error", "text": "nick Ada is taken"})
    bob.send("/nick a b")
    e = bob.recv_json()
    check(f"chat: bad nick -> error {e}", e == {"type": "error", "text": "a nick must be 1 to 32 characters, without spaces or control characters"})
    bob.send("/join lobby")
    l1 = ada.recv_json()
    check(f"chat: leave to the old room {l1}", l1 == {"type": "leave", "nick": "bob", "room": "röom"})
    w = bob.recv_json()
    check(f"chat: welcome in the new room {w}", w == {"type": "welcome", "nick": "bob", "room": "lobby", "members": ["bob"], "history": []})
    bob.send("/join r\u00f6om")
    w = bob.recv_json()
    check(f"chat: history on rejoining {w}", w["history"] == [{"nick": "ada", "text": text}, {"nick": "bob", "text": "hello ada"}])
    check("chat: join seen by ada", ada.recv_json() == {"type": "join", "nick": "bob", "room": "röom"})
    other = WS(base, ["other.v1"])
    check(f"chat: only other subprotocols -> 400 {other.body!r}", other.status == 400 and other.body == b"this endpoint requires the chat.v1 subprotocol")
    guest = WS(base + "?room=")
    w = guest.recv_json()
    check(f"chat: default nick and room {w}", w["nick"].startswith("guest-") and w["room"] == "lobby")
    guest.close()
    bad = WS(base + "?nick=%00x")
    check(f"chat: control character in nick -> 400 {bad.body!r}", bad.status == 400)
    bob.close()
    check("chat: leave on close", ada.recv_json() == {"type": "leave", "nick": "bob", "room": "röom"})
    ada.close()


if __name__ == "__main__":
    {"echo": echo, "chat": chat}[sys.argv[1]](sys.argv[2])
