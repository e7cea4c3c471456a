#!/usr/bin/env python3
"""Renames duplicate WASI imports of a Go core module: `dedup_imports.py IN.wasm OUT.wasm`.

encoding/json imports fmt, hence os, whose files keep syscall.Write reachable: the module then
imports `wasi_snapshot_preview1.fd_write` twice (the runtime's, for panic messages, and the
syscall package's, for os.File writes). The inert WASI stub of plugins/c-tools exports one
function per import, and two `fd_write` exports are invalid. So every repeat of an import
(module, name) after the first is renamed `NAME.N` (N = 2, 3, ...): the stub answers such an
unknown function with ENOSYS, so writes through os.Stdout/os.Stderr fail instead of being
discarded (the plugin makes none; it logs through the host's `log`). Go's linker lists the runtime's imports before the syscall
package's, so the runtime keeps the real `fd_write` (its write1 throws if that fails).

Only the import section changes: no function index moves.
"""
import sys


def leb(b, i):
    r = s = 0
    while True:
        x = b[i]
        i += 1
        r |= (x & 0x7F) << s
        s += 7
        if x < 0x80:
            return r, i


def uleb(n):
    out = bytearray()
    while True:
        x = n & 0x7F
        n >>= 7
        if n:
            out.append(x | 0x80)
        else:
            out.append(x)
            return bytes(out)


def name(s):
    return uleb(len(s)) + s


def main(src, dst):
    b = open(src, "rb").read()
    assert b[:8] == b"\0asm\1\0\0\0", "not a core wasm module"
    out = bytearray(b[:8])
    i = 8
    renamed = []
    while i < len(b):
        sid = b[i]
        size, j = leb(b, i + 1)
        end = j + size
        if sid != 2:
            out += b[i:end]
            i = end
            continue
        n, j = leb(b, j)
        seen = {}
        section = bytearray(uleb(n))
        for _ in range(n):
            ln, j = leb(b, j)
            mod = b[j : j + ln]
            j += ln
            ln, j = leb(b, j)
            field = b[j : j + ln]
            j += ln
            start = j
            kind = b[j]
            j += 1
            if kind == 0:  # function: type index
                _, j = leb(b, j)
            else:
                raise SystemExit("dedup_imports.py: only function imports are expected")
            count = seen.get((mod, field), 0) + 1
            seen[(mod, field)] = count
            if count > 1:
                new = field + b"." + str(count).encode()
                renamed.append(f"{mod.decode()}.{field.decode()} -> {new.decode()}")
                field = new
            section += name(mod) + name(field) + b[start:j]
        assert j == end, "malformed import section"
        out += bytes([2]) + uleb(len(section)) + section
        i = end
    open(dst, "wb").write(out)
    for r in renamed:
        print(f"dedup_imports.py: renamed the repeated import {r}", file=sys.stderr)


if __name__ == "__main__":
    main(*sys.argv[1:])
