"""A stand-in for llama.cpp's `llama-server`, for tests of the embedded backend's supervision.

It takes llama-server's command line (only `--host`, `--port` and `--alias` matter) and
serves, with the standard library only:

- `GET /health`: 503 while the file named by `FAKE_LLAMA_READY_FILE` does not exist (if
  that variable is set), else 200 — so a test decides when it is "loaded";
- `GET /v1/models`: the alias;
- `POST /v1/chat/completions`: one fixed reply, whole (a server that ignores `stream`).

It writes its pid to `FAKE_LLAMA_PID_FILE` (if set) and prints a line on start, as the
real one does, so tests can see its output land in the log file.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

REPLY = "Hello from the fake llama-server."


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--alias", default="fake")
    args, _ = parser.parse_known_args()
    ready_file = os.environ.get("FAKE_LLAMA_READY_FILE")
    pid_file = os.environ.get("FAKE_LLAMA_PID_FILE")

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if self.path == "/health":
                ready = not ready_file or Path(ready_file).exists()
                self._json(200 if ready else 503, {"status": "ok" if ready else "loading"})
            elif self.path in ("/v1/models", "/models"):
                self._json(200, {"object": "list", "data": [{"id": args.alias}]})
            else:
                self._json(404, {"error": "not found"})

        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            self.rfile.read(length)
            self._json(
                200,
                {
                    "id": "fake",
                    "object": "chat.completion",
                    "model": args.alias,
                    "choices": [
                        {
                            "index": 0,
                            "message": {"role": "assistant", "content": REPLY},
                            "finish_reason": "stop",
                        }
                    ],
                    "usage": {"prompt_tokens": 10, "completion_tokens": 6, "total_tokens": 16},
                },
            )

        def _json(self, status: int, body: Any) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, format: str, *values: Any) -> None:
            print(f"request: {format % values}", flush=True)

    server = ThreadingHTTPServer((args.host, args.port), Handler)
    if pid_file:
        Path(pid_file).write_text(str(os.getpid()))
    print(f"fake llama-server listening on {args.host}:{args.port}", flush=True)
    try:
        server.serve_forever()
    finally:
        server.server_close()


if __name__ == "__main__":
    sys.exit(main())
