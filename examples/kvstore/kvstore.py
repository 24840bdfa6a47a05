"""A tiny line-protocol key-value server and client (the project the example tests exercise).

Protocol, one request a line: ``SET key value`` → ``OK``; ``GET key`` → the value or ``NONE``.
``python kvstore.py serve PORT [DATAFILE]`` serves (persisting to DATAFILE when given);
``python kvstore.py call HOST PORT REQUEST...`` sends requests and prints the answers.
"""

from __future__ import annotations

import json
import os
import socket
import socketserver
import sys


class Handler(socketserver.StreamRequestHandler):
    def handle(self) -> None:
        for raw in self.rfile:
            words = raw.decode().split(maxsplit=2)
            store: dict[str, str] = self.server.store  # type: ignore[attr-defined]
            if len(words) == 3 and words[0] == "SET":
                store[words[1]] = words[2].strip()
                self.server.save()  # type: ignore[attr-defined]
                answer = "OK"
            elif len(words) == 2 and words[0] == "GET":
                answer = store.get(words[1], "NONE")
            else:
                answer = "ERR"
            self.wfile.write(answer.encode() + b"\n")


class Server(socketserver.ThreadingTCPServer):
    allow_reuse_address = True
    daemon_threads = True

    def __init__(self, port: int, datafile: str | None) -> None:
        super().__init__(("0.0.0.0", port), Handler)
        self.datafile = datafile
        self.store: dict[str, str] = {}
        if datafile and os.path.exists(datafile):
            with open(datafile) as f:
                self.store = json.load(f)

    def save(self) -> None:
        if self.datafile:
            os.makedirs(os.path.dirname(self.datafile) or ".", exist_ok=True)
            tmp = self.datafile + ".tmp"
            with open(tmp, "w") as f:
                json.dump(self.store, f)
            os.replace(tmp, self.datafile)


def call(host: str, port: int, requests: list[str]) -> list[str]:
    with socket.create_connection((host, port), timeout=10) as sock:
        f = sock.makefile("rwb")
        answers = []
        for request in requests:
            f.write(request.encode() + b"\n")
            f.flush()
            answers.append(f.readline().decode().strip())
        return answers


def main(argv: list[str]) -> int:
    if argv[:1] == ["serve"]:
        server = Server(int(argv[1]), argv[2] if len(argv) > 2 else None)
        print(f"listening on {argv[1]}", flush=True)
        server.serve_forever()
    elif argv[:1] == ["call"]:
        for answer in call(argv[1], int(argv[2]), argv[3:]):
            print(answer)
    else:
        print(__doc__, file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
