"""Real misbehaving servers for tests, each on a free loopback port, as context managers.

    SilentServer()            accepts TCP connections and never answers: a hung endpoint.
    CuttingProxy(upstream)    an HTTP/1.1 proxy in front of a real server (moto). For every
                              request, `rule(method, path)` picks what happens:
        FORWARD   pass the request and the answer through unchanged;
        CUT       forward, then send the status, the headers (with the full Content-Length) and
                  only the first `keep` bytes of a longer body, and close: a connection cut mid-body;
        DROP      forward, then close without answering: the request took effect, the answer is lost;
        HANG      never answer (until the proxy stops): an endpoint gone silent mid-job.
                  The default rule cuts every GET (object reads and listings alike).
        proxy.outage(seconds)     answer 503 ServiceUnavailable to everything for that long, then forward;
        proxy.fail_next(n)        answer 503 to the next n requests (a short outage, deterministic);
        proxy.requests            every (method, path) seen, in order.

    with SilentServer() as silent:
        monkeypatch.setenv("AWS_ENDPOINT_URL", silent.url)
    with CuttingProxy(moto_endpoint, rule=lambda method, path: CUT if "img/" in path else FORWARD) as proxy:
        monkeypatch.setenv("AWS_ENDPOINT_URL", proxy.url)

Leaving the `with` block stops the server, closes every connection it holds and releases hung requests.
"""
import http.client
import socket
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlparse

FORWARD, CUT, DROP, HANG = "forward", "cut", "drop", "hang"
HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "expect", "content-length"}
OUTAGE_BODY = (b'<?xml version="1.0" encoding="UTF-8"?><Error><Code>ServiceUnavailable</Code>'
               b"<Message>Service is unable to handle request.</Message></Error>")


def cut_gets(method: str, path: str) -> str:
    return CUT if method == "GET" else FORWARD


class SilentServer:
    """Accepts connections (the kernel completes the handshake) and never reads or writes a byte."""

    def __init__(self) -> None:
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(0.1)  # so the accept loop notices the stop
        self.url = f"http://127.0.0.1:{self._listener.getsockname()[1]}"
        self._held: list[socket.socket] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._accept, daemon=True)

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._listener.accept()
            except TimeoutError:
                continue
            self._held.append(conn)  # kept open, never answered

    def __enter__(self) -> "SilentServer":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self._listener.close()
        for conn in self._held:
            conn.close()


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as boto3 uses it

    def do_GET(self) -> None:
        self.server.proxy.handle(self)

    do_PUT = do_HEAD = do_DELETE = do_POST = do_GET

    def log_message(self, *args) -> None:
        pass


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request, client_address) -> None:
        if not isinstance(sys.exc_info()[1], ConnectionError):  # clients hanging up are expected here
            super().handle_error(request, client_address)


class CuttingProxy:
    def __init__(self, upstream: str, rule=cut_gets, keep: int = 4) -> None:
        target = urlparse(upstream)
        self._upstream = (target.hostname, target.port)
        self.rule, self.keep = rule, keep
        self.requests: list[tuple[str, str]] = []
        self._lock = threading.Lock()
        self._down_until, self._failures = 0.0, 0
        self._stopped = threading.Event()
        self._server = _Server(("127.0.0.1", 0), _Handler)
        self._server.proxy = self
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True)

    def outage(self, seconds: float) -> None:
        self._down_until = time.monotonic() + seconds

    def fail_next(self, n: int) -> None:
        with self._lock:
            self._failures = n

    def _action(self, method: str, path: str) -> str | None:
        """What to do with this request: None for an outage answer, else the rule's choice."""
        with self._lock:
            self.requests.append((method, path))
            if self._failures:
                self._failures -= 1
                return None
        return None if time.monotonic() < self._down_until else self.rule(method, path)

    def handle(self, h: BaseHTTPRequestHandler) -> None:
        body = h.rfile.read(int(h.headers.get("Content-Length", 0)))
        action = self._action(h.command, h.path)
        if action is None:
            h.send_response(503)
            h.send_header("Content-Type", "application/xml")
            h.send_header("Content-Length", str(len(OUTAGE_BODY)))
            h.end_headers()
            h.wfile.write(OUTAGE_BODY)
            return
        if action == HANG:
            self._stopped.wait()
            h.close_connection = True
            return
        upstream = http.client.HTTPConnection(*self._upstream, timeout=30)
        try:
            upstream.request(h.command, h.path, body,
                             {k: v for k, v in h.headers.items() if k.lower() not in HOP_BY_HOP})
            answer = upstream.getresponse()
            payload = answer.read()
        finally:
            upstream.close()
        if action == DROP:
            h.close_connection = True  # the handler returns without a byte: the server closes the socket
            return
        h.send_response_only(answer.status, answer.reason)
        for name, value in answer.getheaders():
            if name.lower() not in HOP_BY_HOP:
                h.send_header(name, value)
        h.send_header("Content-Length", answer.getheader("Content-Length", "0") if h.command == "HEAD"
                      else str(len(payload)))
        h.end_headers()
        if h.command == "HEAD":
            return
        if action == CUT and len(payload) > self.keep:
            h.wfile.write(payload[:self.keep])
            h.close_connection = True
            return
        h.wfile.write(payload)

    def __enter__(self) -> "CuttingProxy":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stopped.set()  # releases HANG requests
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()
