#!/usr/bin/env python3
"""Writes the fuzz targets' seed corpora (fuzz/corpus/<target>/ and fuzz/host/corpus/<target>/),
from the cases the tests use: RFC 6455's example frames, fragmented and control frames, close
frames, the RFC's handshake and the malformed variants the handshake tests send, UTF-8 edge cases,
the example configs, the static-file paths of the traversal tests, and plugin results of every
action kind. Run: python3 fuzz/seeds.py"""
import os, struct, sys

root = os.path.join(os.path.dirname(os.path.abspath(__file__)), "corpus")
KEY = bytes([0x37, 0xFA, 0x21, 0x3D])

def frame(op, payload, fin=True, key=KEY, rsv=0, length_form=None):
    b0 = (0x80 if fin else 0) | rsv | op
    n = len(payload)
    form = length_form or (7 if n < 126 else 16 if n < 65536 else 64)
    head = bytes([b0])
    if form == 7:
        head += bytes([0x80 | n])
    elif form == 16:
        head += bytes([0x80 | 126]) + struct.pack(">H", n)
    else:
        head += bytes([0x80 | 127]) + struct.pack(">Q", n)
    masked = bytes(b ^ key[i % 4] for i, b in enumerate(payload))
    return head + key + masked

frames = {
    "hello": frame(1, b"Hello"),
    "binary_256": frame(2, bytes(range(256))),
    "fragmented_text": frame(1, b"Hel", fin=False) + frame(9, b"ping") + frame(0, b"lo"),
    "split_code_point": frame(1, "é€".encode()[:3], fin=False) + frame(0, "é€".encode()[3:]),
    "ping_pong": frame(9, b"hello") + frame(10, b""),
    "close_normal": frame(8, struct.pack(">H", 1000) + b"bye"),
    "close_empty": frame(8, b""),
    "close_one_byte": frame(8, b"\x03"),
    "close_1006": frame(8, struct.pack(">H", 1006)),
    "invalid_utf8": frame(1, b"\xc0\xaf"),
    "non_minimal_16": frame(1, b"hello", length_form=16),
    "non_minimal_64": frame(2, b"x" * 300, length_form=64),
    "reserved_bit": frame(1, b"x", rsv=0x40),
    "continuation_first": frame(0, b"x"),
    "fragmented_ping": frame(9, b"x", fin=False),
    "too_big": frame(2, b"y" * 1100),
    "unmasked": bytes([0x81, 0x02]) + b"hi",
}
heads = {
    "rfc": b"GET /chat HTTP/1.1\r\nHost: server.example.com\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
           b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nOrigin: http://example.com\r\n"
           b"Sec-WebSocket-Protocol: chat, superchat\r\nSec-WebSocket-Version: 13\r\n\r\n",
}
rfc = heads["rfc"]
heads.update({
    "plain_get": b"GET /chat HTTP/1.1\r\nHost: x\r\n\r\n",
    "post": rfc.replace(b"GET", b"POST", 1),
    "http10": rfc.replace(b"HTTP/1.1", b"HTTP/1.0", 1),
    "version8": rfc.replace(b"Version: 13", b"Version: 8"),
    "short_key": rfc.replace(b"dGhlIHNhbXBsZSBub25jZQ==", b"c2hvcnQ="),
    "bare_lf": rfc.replace(b"\r\n", b"\n"),
    "with_body": rfc.replace(b"\r\n\r\n", b"\r\nContent-Length: 5\r\n\r\nhello"),
    "chunked": rfc.replace(b"\r\n\r\n", b"\r\nTransfer-Encoding: chunked\r\n\r\n"),
    "frames_after": rfc + frames["hello"],
    "garbage": b"\x16\x03\x01garbage\r\n\r\n",
})
texts = {
    "ascii": b"Hello, world",
    "two_three_four": "é€😀".encode(),
    "overlong": b"\xc0\xaf",
    "surrogate": b"\xed\xa0\x80",
    "above_max": b"\xf4\x90\x80\x80",
    "truncated": "😀".encode()[:3],
}

# permessage-deflate (deflate_decoder: byte 0 the chunking, here byte 1 the mode; even = a stream).
HELLO = bytes([0xF2, 0x48, 0xCD, 0xC9, 0xC9, 0x07, 0x00])  # RFC 7692 §7.2.3.1
deflated = {
    "hello": b"\x00" + frame(1, HELLO, rsv=0x40),
    "hello_fragmented": b"\x00" + frame(1, HELLO[:3], fin=False, rsv=0x40) + frame(9, b"") + frame(0, HELLO[3:]),
    "hello_twice_then_plain": b"\x00" + frame(1, HELLO, rsv=0x40) * 2 + frame(1, b"plain"),
    "rsv1_on_continuation": b"\x00" + frame(1, HELLO[:3], fin=False, rsv=0x40) + frame(0, HELLO[3:], rsv=0x40),
    "not_deflate": b"\x00" + frame(2, b"\xff" * 16, rsv=0x40),
    "round_trip": b"\x01" + b"hello hello hello, world world world" * 4,
}

for target, seeds, prefix in [("frame_decoder", frames, True), ("request_head", heads, False), ("utf8", texts, True),
                              ("deflate_decoder", deflated, True)]:
    d = os.path.join(root, target)
    os.makedirs(d, exist_ok=True)
    for name, data in seeds.items():
        # Targets that choose a chunking read it from the first byte.
        for seed in ([1, 7, 63] if prefix else [None]):
            path = os.path.join(d, name if seed is None else f"{name}-{seed}")
            with open(path, "wb") as f:
                f.write((bytes([seed]) if seed is not None else b"") + data)
repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
host_root = os.path.join(repo, "fuzz", "host", "corpus")
configs = {name: open(os.path.join(repo, path), "rb").read()
           for name, path in [("example", "examples/wsplug.toml"), ("default", "host/src/default.toml")]}
configs["bad_line"] = b"[limits]\nmax_frame_size = \"64MB\"\n"
paths = {str(i): p.encode() for i, p in enumerate([
    "/index.html", "/", "/../etc/passwd", "/a/%2e%2e/%2e%2e/etc/passwd", "/%2e%2e%2fetc", "/a%5c..%5cb",
    "/.git/config", "/x%00y", "/bad%zz", "/app.js?x=1"])}
# actions: [kind, len, 3*len bytes]... (see fuzz/host/src/lib.rs)
actions = {f"kind{k}": bytes([k, 2]) + b"abcdef" for k in range(7)}
actions["close_1000"] = bytes([6 + 7 * 0, 0]) + bytes([0x03, 0xE8])
actions["mixed"] = b"".join(bytes([k, 1]) + b"xyz" for k in range(7))
# packed: [replies | actions << 4, data length (u16 LE), replies' ends (u16 LE, bit 15: text),
# actions' positions (u16 LE)] (see fuzz/host/src/lib.rs)
def words(*ws):
    return b"".join(w.to_bytes(2, "little") for w in ws)
packed = {
    "two_replies_three_actions": bytes([2 | 3 << 4]) + words(6, 2, 6 | 0x8000, 0, 1, 2),
    "empty": bytes([0]) + words(0),
    "backwards": bytes([2]) + words(6, 4, 2),
    "actions_out_of_order": bytes([1 | 2 << 4]) + words(3, 3, 1, 0),
}
for target, seeds in [("config", configs), ("static_path", paths), ("actions", actions), ("packed", packed)]:
    d = os.path.join(host_root, target)
    os.makedirs(d, exist_ok=True)
    for name, data in seeds.items():
        with open(os.path.join(d, name), "wb") as f:
            f.write(data)
print(f"seed corpora written under {root} and {host_root}", file=sys.stderr)
