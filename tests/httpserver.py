"""A scriptable HTTP server on 127.0.0.1 for tests of network code (no real network, no sleeps).

Usage::

    from httpserver import Server, Response, file_response

    def handler(req):                      # called for every request, in the server's thread
        if req.path == "/w.pth":
            return file_response(req, DATA)  # honours Range and HEAD
        return Response(404)

    with Server(handler) as srv:           # or Server({"/w.pth": handler, ...}) to route by path
        fetch(..., sources=[Source("url", srv.url + "/w.pth")])
        assert srv.count("/w.pth") == 1
        srv.requests[0].headers.get("Range")

A :class:`Response` can stop after ``drop_after`` body bytes and close the connection (a dropped
download); a handler can block on a ``threading.Event`` to hold a download mid-file.
"""
from __future__ import annotations

import hashlib
import http.server
import re
import threading
import urllib.parse
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Mapping, Optional, Union

__all__ = ["Request", "Response", "Server", "file_response", "html_response"]


@dataclass
class Request:
    """One request as the server saw it."""

    method: str
    path: str                     # without the query string, percent-decoded
    query: Dict[str, str]         # last value of each parameter
    headers: Dict[str, str]       # header names in lower case
    index: int = 0                # 0 for the first request to this path, 1 for the second, ...


@dataclass
class Response:
    """What to answer. ``body`` is sent after the headers unless the request is HEAD."""

    status: int = 200
    body: bytes = b""
    headers: Dict[str, str] = field(default_factory=dict)
    drop_after: Optional[int] = None        # send only this many body bytes, then close the connection
    before_rest: Optional[Callable[[], None]] = None  # called after drop_after bytes; then the rest is sent
    content_length: bool = True             # send Content-Length (len(body)) unless headers give one


Handler = Callable[[Request], Response]


def file_response(req: Request, data: bytes, *, headers: Optional[Mapping[str, str]] = None,
                  ranges: bool = True, content_type: str = "application/octet-stream",
                  etag: Optional[str] = "auto") -> Response:
    """Serve ``data`` the way a static file server does: 200, or 206 for ``Range: bytes=N-[M]``.

    A strong ``ETag`` (a hash of ``data``, unless ``etag`` gives another or None for none) is sent, and
    a range whose ``If-Range`` does not match it gets the whole file (RFC 9110, section 13.1.5).
    """
    tag = f'"{hashlib.sha1(data).hexdigest()}"' if etag == "auto" else etag
    hdrs = {"Content-Type": content_type, "Accept-Ranges": "bytes" if ranges else "none",
            **({"ETag": tag} if tag else {}), **(headers or {})}
    rng = req.headers.get("range")
    if_range = req.headers.get("if-range")
    if if_range is not None and if_range != hdrs.get("ETag"):
        rng = None
    if ranges and rng:
        m = re.fullmatch(r"bytes=(\d+)-(\d*)", rng.strip())
        if m:
            start = int(m.group(1))
            end = int(m.group(2)) if m.group(2) else len(data) - 1
            if start >= len(data):
                return Response(416, b"", {"Content-Range": f"bytes */{len(data)}"})
            hdrs["Content-Range"] = f"bytes {start}-{end}/{len(data)}"
            return Response(206, data[start:end + 1], hdrs)
    return Response(200, data, hdrs)


def html_response(html: str, status: int = 200, headers: Optional[Mapping[str, str]] = None) -> Response:
    return Response(status, html.encode(), {"Content-Type": "text/html; charset=utf-8", **(headers or {})})


class Server:
    """A threaded HTTP/1.1 server on ``127.0.0.1:<free port>`` that records every request.

    Args:
        handler: a function ``Request -> Response`` for every path, or a mapping ``path -> function``
            (unknown paths get 404).
    """

    def __init__(self, handler: Union[Handler, Mapping[str, Handler]]):
        self._handler = handler
        self.requests: List[Request] = []
        self._lock = threading.Lock()
        self._counts: Dict[str, int] = {}
        self._httpd: Optional[http.server.ThreadingHTTPServer] = None
        self._thread: Optional[threading.Thread] = None

    # -- lifecycle
    def start(self) -> "Server":
        server = self

        class _H(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):  # keep test output clean
                pass

            def do_GET(self):
                server._serve(self, "GET")

            def do_HEAD(self):
                server._serve(self, "HEAD")

            def do_POST(self):
                server._serve(self, "POST")

        self._httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _H)
        self._httpd.daemon_threads = True
        # a short poll interval makes stop() return at once (the default waits up to 0.5 s)
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.01},
                                        daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None

    def __enter__(self) -> "Server":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    @property
    def url(self) -> str:
        assert self._httpd is not None, "start the server first"
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}"

    # -- inspection
    def count(self, path: Optional[str] = None, method: Optional[str] = None) -> int:
        """How many requests (to ``path``, with ``method``) arrived."""
        with self._lock:
            return sum(1 for r in self.requests
                       if (path is None or r.path == path) and (method is None or r.method == method))

    def of(self, path: str) -> List[Request]:
        with self._lock:
            return [r for r in self.requests if r.path == path]

    # -- serving
    def _serve(self, h: http.server.BaseHTTPRequestHandler, method: str) -> None:
        split = urllib.parse.urlsplit(h.path)
        path = urllib.parse.unquote(split.path)
        query = dict(urllib.parse.parse_qsl(split.query, keep_blank_values=True))
        headers = {k.lower(): v for k, v in h.headers.items()}
        with self._lock:
            index = self._counts.get(path, 0)
            self._counts[path] = index + 1
            req = Request(method, path, query, headers, index)
            self.requests.append(req)
        if method == "POST":
            length = int(headers.get("content-length") or 0)
            if length:
                h.rfile.read(length)
        if callable(self._handler):
            resp = self._handler(req)
        else:
            fn = self._handler.get(path)
            resp = fn(req) if fn is not None else Response(404, b"not found")
        h.send_response(resp.status)
        hdrs = dict(resp.headers)
        if resp.content_length and not any(k.lower() == "content-length" for k in hdrs):
            hdrs["Content-Length"] = str(len(resp.body))
        for k, v in hdrs.items():
            h.send_header(k, v)
        if resp.drop_after is not None:
            h.send_header("Connection", "close")
        h.end_headers()
        if method == "HEAD":
            return
        body = resp.body
        try:
            if resp.drop_after is not None:
                h.wfile.write(body[:resp.drop_after])
                h.wfile.flush()
                if resp.before_rest is None:
                    h.close_connection = True
                    return
                resp.before_rest()
                h.wfile.write(body[resp.drop_after:])
            else:
                h.wfile.write(body)
            h.wfile.flush()
        except (BrokenPipeError, ConnectionResetError):
            h.close_connection = True
