"""A minimal HTTP forward proxy on 127.0.0.1 that counts what it forwards.

Clients send ``GET http://host:port/path`` to it (plain http), or ``CONNECT host:port`` and then
speak TLS through the tunnel (https); it refuses any target that is not loopback. A tunnel is
counted as ``CONNECT host:port``.
"""

from __future__ import annotations

import http.client
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002
        pass

    def _forward(self) -> None:
        target = urlsplit(self.path)
        if target.hostname not in ("127.0.0.1", "localhost") or target.scheme != "http":
            self.send_error(403, "this test proxy only forwards to loopback http")
            return
        self.server.forwarded.append(self.path)  # type: ignore[attr-defined]
        conn = http.client.HTTPConnection(target.hostname, target.port or 80, timeout=30)
        headers = {k: v for k, v in self.headers.items() if k.lower() not in ("proxy-connection", "connection")}
        conn.request(self.command, target.path + (f"?{target.query}" if target.query else ""), headers=headers)
        resp = conn.getresponse()
        body = resp.read()
        self.send_response(resp.status)
        for key, value in resp.getheaders():
            if key.lower() not in ("transfer-encoding", "connection", "content-length"):
                self.send_header(key, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)
        conn.close()

    do_GET = do_HEAD = _forward

    def do_CONNECT(self) -> None:  # noqa: N802 - http.server's naming
        import select
        import socket

        host, _, port = self.path.rpartition(":")
        if host not in ("127.0.0.1", "localhost"):
            self.send_error(403, "this test proxy only tunnels to loopback")
            return
        self.server.forwarded.append(f"CONNECT {self.path}")  # type: ignore[attr-defined]
        upstream = socket.create_connection((host, int(port)), timeout=30)
        self.send_response(200, "Connection established")
        self.end_headers()
        sockets = [self.connection, upstream]
        try:
            while True:
                readable, _, _ = select.select(sockets, [], [], 30)
                if not readable:
                    return
                for s in readable:
                    data = s.recv(1 << 16)
                    if not data:
                        return
                    (upstream if s is self.connection else self.connection).sendall(data)
        finally:
            upstream.close()
            self.close_connection = True


@contextmanager
def counting_proxy() -> Iterator[tuple[str, list[str]]]:
    """Yields (proxy URL, list of forwarded URLs)."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    server.forwarded = []  # type: ignore[attr-defined]
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", server.forwarded  # type: ignore[attr-defined]
    finally:
        server.shutdown()
        server.server_close()
