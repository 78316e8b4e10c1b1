#!/usr/bin/env python3
"""Minimal WebSocket client (Python standard library only) for watching a stream.

    scripts/ws.py ws://127.0.0.1:8082/stream/ID/results -H 'X-API-Key: KEY' [--send '{"data": 1}'] [--count N]

Prints every text frame the server sends, one per line. --send sends a text
frame after connecting (repeatable); --count exits after N frames.
"""
import argparse
import base64
import os
import socket
import struct
import sys
from urllib.parse import urlparse


def connect(url, headers):
    u = urlparse(url)
    if u.scheme != "ws":
        sys.exit(f"ws.py: only ws:// URLs are supported, got {url}")
    sock = socket.create_connection((u.hostname, u.port or 80), timeout=10)
    key = base64.b64encode(os.urandom(16)).decode()
    path = u.path + (f"?{u.query}" if u.query else "")
    lines = [f"GET {path or '/'} HTTP/1.1", f"Host: {u.hostname}:{u.port or 80}", "Upgrade: websocket",
             "Connection: Upgrade", f"Sec-WebSocket-Key: {key}", "Sec-WebSocket-Version: 13", *headers]
    sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
    response = b""
    while b"\r\n\r\n" not in response:
        chunk = sock.recv(4096)
        if not chunk:
            break
        response += chunk
    head, _, rest = response.partition(b"\r\n\r\n")
    status = head.split(b"\r\n")[0].decode(errors="replace")
    if " 101 " not in status + " ":
        sys.exit(f"ws.py: upgrade refused: {status}\n{rest.decode(errors='replace')}")
    sock.settimeout(None)
    return sock, rest


def send_text(sock, text):
    data = text.encode()
    mask = os.urandom(4)
    header = bytes([0x81])
    n = len(data)
    if n < 126:
        header += bytes([0x80 | n])
    elif n < 65536:
        header += bytes([0x80 | 126]) + struct.pack(">H", n)
    else:
        header += bytes([0x80 | 127]) + struct.pack(">Q", n)
    sock.sendall(header + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(data)))


def frames(sock, buffered):
    buf = bytearray(buffered)

    def need(n):
        while len(buf) < n:
            chunk = sock.recv(65536)
            if not chunk:
                raise EOFError
            buf.extend(chunk)

    while True:
        need(2)
        opcode, length = buf[0] & 0x0F, buf[1] & 0x7F
        offset = 2
        if length == 126:
            need(4)
            length, offset = struct.unpack(">H", buf[2:4])[0], 4
        elif length == 127:
            need(10)
            length, offset = struct.unpack(">Q", buf[2:10])[0], 10
        need(offset + length)
        payload = bytes(buf[offset:offset + length])
        del buf[:offset + length]
        if opcode == 0x8:
            return
        if opcode == 0x9:  # ping -> pong
            mask = os.urandom(4)
            sock.sendall(bytes([0x8A, 0x80 | len(payload)]) + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload)))
        elif opcode in (0x1, 0x2):
            yield payload.decode(errors="replace")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("url")
    parser.add_argument("-H", "--header", action="append", default=[], help="extra request header, 'Name: value'")
    parser.add_argument("--send", action="append", default=[], help="text frame to send after connecting")
    parser.add_argument("--count", type=int, default=0, help="exit after this many frames")
    parser.add_argument("--ready-file", help="create this file once the WebSocket is open")
    args = parser.parse_args()
    sock, rest = connect(args.url, args.header)
    if args.ready_file:
        open(args.ready_file, "w").close()
    for text in args.send:
        send_text(sock, text)
    seen = 0
    try:
        for text in frames(sock, rest):
            print(text, flush=True)
            seen += 1
            if args.count and seen >= args.count:
                break
    except (EOFError, KeyboardInterrupt):
        pass


if __name__ == "__main__":
    main()
