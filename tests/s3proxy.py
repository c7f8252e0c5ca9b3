"""A fault-injecting HTTP proxy in front of the S3 server (loopback only, bounded, test use)."""

from __future__ import annotations

import http.client
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit


class FaultProxy:
    """fail_writes: answer the next N PUT/POST requests with 500; hang_writes: hold them (seconds);
    refuse_parts_from: answer 403 to every upload of a part numbered that or higher; writes: the
    (method, path) of every PUT/POST that reached the server."""

    def __init__(self, upstream: str) -> None:
        self.upstream = urlsplit(upstream)
        self.fail_writes = 0
        self.hang_writes = 0.0
        self.failed = 0
        self.refuse_parts_from: int | None = None
        self.writes: list[tuple[str, str]] = []
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *a: object) -> None:
                pass

            def _any(self) -> None:
                n = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(n) if n else b""
                if self.command in ("PUT", "POST"):
                    q = parse_qs(urlsplit(self.path).query)
                    part = int(q["partNumber"][0]) if "partNumber" in q else None
                    if proxy.refuse_parts_from is not None and part is not None and part >= proxy.refuse_parts_from:
                        msg = b"<Error><Code>AccessDenied</Code><Message>injected</Message></Error>"
                        self.send_response(403)
                        self.send_header("Content-Length", str(len(msg)))
                        self.end_headers()
                        self.wfile.write(msg)
                        return
                    proxy.writes.append((self.command, self.path))
                    if proxy.hang_writes:
                        time.sleep(proxy.hang_writes)
                    if proxy.fail_writes > 0:
                        proxy.fail_writes -= 1
                        proxy.failed += 1
                        self.send_response(500)
                        msg = b"<Error><Code>InternalError</Code><Message>injected</Message></Error>"
                        self.send_header("Content-Length", str(len(msg)))
                        self.end_headers()
                        self.wfile.write(msg)
                        return
                conn = http.client.HTTPConnection(proxy.upstream.hostname, proxy.upstream.port, timeout=60)
                headers = {k: v for k, v in self.headers.items() if k.lower() != "host"}
                headers["Host"] = proxy.upstream.netloc
                conn.request(self.command, self.path, body=body, headers=headers)
                r = conn.getresponse()
                data = r.read()
                self.send_response(r.status)
                for k, v in r.getheaders():
                    if k.lower() not in ("transfer-encoding", "content-length", "connection"):
                        self.send_header(k, v)
                length = r.getheader("Content-Length") if self.command == "HEAD" else None
                self.send_header("Content-Length", length or str(len(data)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)
                conn.close()

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _any

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
