"""The local server of ``deepclust review``: one page, the run's thumbnails, its state and actions.

It listens on 127.0.0.1 only, on a random free port unless told one, and answers only
requests that carry the session's random token (``?t=TOKEN`` or the ``X-Deepclust-Token``
header) and name the server by its own address (a page elsewhere cannot reach it through a
DNS name that points here). Images are served by their row number in the run, so no request
can name a file; the page fetches nothing from outside (a Content-Security-Policy says so).
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import threading
from functools import lru_cache
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from urllib.parse import parse_qs, urlsplit

from deepclust.errors import DeepclustError
from deepclust.feedback import FILE as FEEDBACK_FILE
from deepclust.jobs.report import dataset_pixels, thumbnail_jpeg
from deepclust.jobs.review import ReviewSession

log = logging.getLogger("deepclust")

THUMB_SIZES = (96, 160, 320)
MAX_BODY = 1 << 20


class ReviewServer(ThreadingHTTPServer):
    """A :class:`ThreadingHTTPServer` bound to 127.0.0.1 that serves one :class:`ReviewSession`."""

    daemon_threads = True

    def __init__(self, session: ReviewSession, port: int = 0, token: str | None = None):
        self.session = session
        self.token = token or secrets.token_urlsafe(24)
        self.pixels = dataset_pixels(session.run)
        try:
            super().__init__(("127.0.0.1", port), _Handler)
        except OSError as exc:
            raise DeepclustError(f"cannot listen on 127.0.0.1:{port} ({exc.strerror or exc}); pass another --port, "
                                 "or leave it out for a free one") from None
        self.port = self.server_address[1]
        self.hosts = {f"127.0.0.1:{self.port}", f"localhost:{self.port}"}
        self._thumbs = lru_cache(maxsize=4096)(self._thumbnail)

    def handle_error(self, request, client_address) -> None:
        """A browser that closes a connection early (a page reloaded while thumbnails load) is
        normal; anything else is logged, and the server goes on."""
        import sys

        error = sys.exc_info()[1]
        if not isinstance(error, ConnectionError):
            log.warning("review: a request failed (%s: %s)", type(error).__name__, error)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/?t={self.token}"

    def _thumbnail(self, i: int, size: int) -> bytes | None:
        return thumbnail_jpeg(self.session.run, i, size, self.pixels)

    def thumbnail(self, i: int, size: int) -> bytes | None:
        return self._thumbs(i, size)

    def start(self) -> threading.Thread:
        """Serve in a background thread (tests; the CLI serves in the foreground)."""
        thread = threading.Thread(target=self.serve_forever, daemon=True)
        thread.start()
        return thread


def page_html() -> str:
    return resources.files("deepclust.jobs").joinpath("review_page.html").read_text(encoding="utf-8")


class _Handler(BaseHTTPRequestHandler):
    server: ReviewServer
    protocol_version = "HTTP/1.1"

    def log_message(self, format, *args):  # noqa: A002  the signature is BaseHTTPRequestHandler's
        log.debug("review: " + format, *args)

    # -- checks --------------------------------------------------------------------------
    def _allowed(self) -> bool:
        if self.headers.get("Host") not in self.server.hosts:
            self._send(HTTPStatus.FORBIDDEN, b"this server answers only to its own address\n", "text/plain")
            return False
        query = parse_qs(urlsplit(self.path).query)
        given = self.headers.get("X-Deepclust-Token") or (query.get("t") or [""])[0]
        if not secrets.compare_digest(given.encode(), self.server.token.encode()):
            self._send(HTTPStatus.FORBIDDEN, b"a token is needed: open the address deepclust review printed\n",
                       "text/plain")
            return False
        return True

    def _send(self, status: HTTPStatus, body: bytes, kind: str, cache: bool = False) -> None:
        self.send_response(status)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "private, max-age=3600" if cache else "no-store")
        self.send_header("X-Content-Type-Options", "nosniff")
        self.send_header("Referrer-Policy", "no-referrer")
        self.send_header("Content-Security-Policy", "default-src 'none'; img-src 'self' data:; connect-src 'self'; "
                         "script-src 'unsafe-inline'; style-src 'unsafe-inline'; base-uri 'none'; form-action 'none'")
        self.end_headers()
        self.wfile.write(body)

    def _json(self, data, status: HTTPStatus = HTTPStatus.OK) -> None:
        self._send(status, json.dumps(data).encode(), "application/json")

    # -- routes --------------------------------------------------------------------------
    def do_GET(self):  # noqa: N802  http.server's name
        if not self._allowed():
            return
        route = urlsplit(self.path).path
        if route == "/":
            self._send(HTTPStatus.OK, page_html().encode(), "text/html; charset=utf-8")
        elif route == "/api/state":
            self._json(self.server.session.state())
        elif route.startswith("/thumb/"):
            self._thumb(route[len("/thumb/"):])
        else:
            self._send(HTTPStatus.NOT_FOUND, b"not found\n", "text/plain")

    def _thumb(self, rest: str) -> None:
        asked = (parse_qs(urlsplit(self.path).query).get("s") or ["160"])[0]
        size = int(asked) if asked.isdigit() else 0
        if not rest.isdigit() or not 0 <= int(rest) < self.server.session.n or size not in THUMB_SIZES:
            self._send(HTTPStatus.NOT_FOUND, b"no such image in this run\n", "text/plain")
            return
        data = self.server.thumbnail(int(rest), size)
        if data is None:
            self._send(HTTPStatus.NOT_FOUND, b"this image cannot be read\n", "text/plain")
        else:
            self._send(HTTPStatus.OK, data, "image/jpeg", cache=True)

    def do_POST(self):  # noqa: N802
        if not self._allowed():
            return
        if urlsplit(self.path).path != "/api/action":
            self._send(HTTPStatus.NOT_FOUND, b"not found\n", "text/plain")
            return
        length = int(self.headers.get("Content-Length") or 0)
        if not 0 < length <= MAX_BODY or not (self.headers.get("Content-Type") or "").startswith("application/json"):
            self._json({"error": "send one action as JSON (Content-Type: application/json)"}, HTTPStatus.BAD_REQUEST)
            return
        try:
            action = json.loads(self.rfile.read(length))
            self._json(self.server.session.act(action))
        except json.JSONDecodeError:
            self._json({"error": "the action is not JSON"}, HTTPStatus.BAD_REQUEST)
        except DeepclustError as exc:
            self._json({"error": str(exc)}, HTTPStatus.BAD_REQUEST)
        except OSError as exc:
            self._json({"error": f"cannot save the review in {self.server.session.folder} "
                                 f"({exc.strerror or exc})"}, HTTPStatus.INTERNAL_SERVER_ERROR)


def serve(run_dir: str | os.PathLike, port: int = 0, open_browser: bool = True) -> None:
    """``deepclust review``: serve until Ctrl-C."""
    session = ReviewSession(run_dir)
    server = ReviewServer(session, port)
    print(f"reviewing {session.n} images in {len(set(session.assign.tolist()))} clusters of {run_dir}")
    print(f"open {server.url}  (only on this computer; Ctrl-C to stop; every action is saved at once to "
          f"{os.path.join(os.fspath(run_dir), FEEDBACK_FILE)})", flush=True)
    if open_browser:
        import webbrowser  # deferred: only when a browser is to be opened

        webbrowser.open(server.url)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
