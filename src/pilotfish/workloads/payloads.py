"""The campaign's Python payloads, in a module of their own: a function worker imports
the module of each function it runs, and this one needs nothing of pilotfish (the
campaign module would bring the client's descriptions along, ~0.1 s a worker).

`python -m pilotfish.workloads.payloads PORT` is the model server the inference calls
ask: an HTTP server that answers every GET with a score, a thread a request, and room
for a stage's calls arriving at once (`http.server`'s listen backlog is 5: 64 calls at
once lost their connects and timed out).
"""

from __future__ import annotations

import os
import sys
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def infer(candidate: int, seconds: float) -> float:
    """One inference call: asks the model server (when there is one), then works."""
    address = os.environ.get("PILOTFISH_SERVICE_MODEL")
    if address:
        import urllib.request

        with urllib.request.urlopen(f"http://{address}/", timeout=10) as reply:
            reply.read()
    time.sleep(seconds)
    return (candidate * 7919 % 1000) / 1000.0  # a score


def select(iteration: int, seconds: float, top: int, *scores: float) -> list[int]:
    """The selection: the candidates of the `top` best scores (the inference calls'
    results, filled in by the agent), for the next round's simulations."""
    time.sleep(seconds)
    return sorted(range(len(scores)), key=lambda k: (-scores[k], k))[:top]


class _Model(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body = b"0.5\n"
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass  # (a line a call otherwise)


class ModelServer(ThreadingHTTPServer):
    request_queue_size = 1024
    daemon_threads = True


def serve(port: int) -> None:
    with ModelServer(("", port), _Model) as server:
        server.serve_forever()


if __name__ == "__main__":
    serve(int(sys.argv[1]))
