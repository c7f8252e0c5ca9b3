"""A fault-injecting HTTP proxy in front of the S3 server (loopback only, bounded, test use)."""

from __future__ import annotations

import http.client
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit


def _is_object(path: str) -> bool:
    """A GET of an object (/bucket/key, no listing or upload query)."""
    parts = urlsplit(path)
    return parts.path.strip("/").count("/") >= 1 and not set(parse_qs(parts.query)) - {"x-id"}


class FaultProxy:
    """fail_writes: answer the next N PUT/POST requests with 500; hang_writes: hold them (seconds);
    refuse_parts_from: answer 403 to every upload of a part numbered that or higher; writes: the
    (method, path) of every PUT/POST that reached the server; grow_gets: send that many zero bytes more
    after every object a GET returns (a hostile store whose object streams more than its HEAD and
    listing say, its checksum headers dropped), counting in grown_sent how many the client took."""

    def __init__(self, upstream: str) -> None:
        self.upstream = urlsplit(upstream)
        self.fail_writes = 0
        self.hang_writes = 0.0
        self.failed = 0
        self.refuse_parts_from: int | None = None
        self.writes: list[tuple[str, str]] = []
        self.grow_gets = 0
        self.grown_sent = 0
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
                grow = proxy.grow_gets if self.command == "GET" and r.status == 200 and _is_object(self.path) else 0
                self.send_response(r.status)
                dropped = ("transfer-encoding", "content-length", "connection") + (("x-amz-checksum",) if grow else ())
                for k, v in r.getheaders():
                    if not k.lower().startswith(dropped):
                        self.send_header(k, v)
                length = r.getheader("Content-Length") if self.command == "HEAD" else None
                self.send_header("Content-Length", length or str(len(data) + grow))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)
                conn.close()
                chunk = bytes(1 << 20)
                try:
                    while grow > 0:
                        n = min(grow, len(chunk))
                        self.wfile.write(chunk[:n])
                        proxy.grown_sent += n
                        grow -= n
                except OSError:  # the client hung up: what it took is counted
                    self.close_connection = True

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _any

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
