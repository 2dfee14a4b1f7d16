"""A web server for edge tests, run inside a guest with the guest's python3 (stdlib only).

Run as `python3 guest_web_app.py PORT`:
- `GET /headers`: the request's headers as JSON;
- `POST /count`: reads the body as it comes (chunked or not) and answers its length and
  SHA-256;
- `GET /big?mib=N`: N MiB of a repeating pattern, with a Content-Length, written as it goes;
- `GET /ws`: a WebSocket that echoes every text and binary message, and answers a client's
  close with the same code.
"""

from __future__ import annotations

import base64
import hashlib
import http.server
import json
import struct
import sys
from urllib.parse import parse_qs, urlsplit

WEBSOCKET_GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
PATTERN = bytes(range(256)) * 256  # 64 KiB


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: object) -> None:
        pass

    def _reply(self, status: int, body: bytes, content_type: str = "application/json") -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:
        url = urlsplit(self.path)
        if url.path == "/headers":
            self._reply(200, json.dumps(dict(self.headers.items())).encode())
        elif url.path == "/big":
            mib = int(parse_qs(url.query)["mib"][0])
            self.send_response(200)
            self.send_header("Content-Type", "application/octet-stream")
            self.send_header("Content-Length", str(mib * 1024 * 1024))
            self.end_headers()
            for _ in range(mib * 16):
                self.wfile.write(PATTERN)
        elif url.path == "/ws":
            self._websocket()
        else:
            self._reply(404, b'{"missing": true}')

    def do_POST(self) -> None:
        digest = hashlib.sha256()
        total = 0
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            while True:
                size = int(self.rfile.readline().split(b";")[0], 16)
                if size == 0:
                    self.rfile.readline()
                    break
                chunk = self.rfile.read(size)
                self.rfile.readline()
                digest.update(chunk)
                total += len(chunk)
        else:
            remaining = int(self.headers.get("Content-Length", "0"))
            while remaining:
                chunk = self.rfile.read(min(remaining, 1 << 16))
                digest.update(chunk)
                total += len(chunk)
                remaining -= len(chunk)
        self._reply(200, json.dumps({"bytes": total, "sha256": digest.hexdigest()}).encode())

    def _websocket(self) -> None:
        key = self.headers["Sec-WebSocket-Key"]
        # RFC 6455 §4.2.2 fixes SHA-1 for the handshake.
        accept = base64.b64encode(hashlib.sha1((key + WEBSOCKET_GUID).encode()).digest())  # noqa: S324
        self.send_response(101)
        self.send_header("Upgrade", "websocket")
        self.send_header("Connection", "Upgrade")
        self.send_header("Sec-WebSocket-Accept", accept.decode())
        protocols = self.headers.get("Sec-WebSocket-Protocol")
        if protocols:
            self.send_header("Sec-WebSocket-Protocol", protocols.split(",")[0].strip())
        self.end_headers()
        self.wfile.flush()
        while True:
            head = self.rfile.read(2)
            if len(head) < 2:
                return
            opcode, length = head[0] & 0x0F, head[1] & 0x7F
            if length == 126:
                (length,) = struct.unpack("!H", self.rfile.read(2))
            elif length == 127:
                (length,) = struct.unpack("!Q", self.rfile.read(8))
            mask = self.rfile.read(4) if head[1] & 0x80 else b"\0\0\0\0"
            payload = bytes(b ^ mask[i % 4] for i, b in enumerate(self.rfile.read(length)))
            if opcode == 0x9:  # ping
                opcode = 0xA
            self._frame(opcode, payload)
            if opcode == 0x8:  # close: echoed, then done
                self.close_connection = True
                return

    def _frame(self, opcode: int, payload: bytes) -> None:
        length = len(payload)
        if length < 126:
            head = struct.pack("!BB", 0x80 | opcode, length)
        elif length < 1 << 16:
            head = struct.pack("!BBH", 0x80 | opcode, 126, length)
        else:
            head = struct.pack("!BBQ", 0x80 | opcode, 127, length)
        self.wfile.write(head + payload)
        self.wfile.flush()


if __name__ == "__main__":
    http.server.ThreadingHTTPServer(("", int(sys.argv[1])), Handler).serve_forever()
