"""The control socket: Click-style handlers of a running engine, over a
local (Unix) socket, one JSON object per line each way.

    -> {"op": "read", "handler": "cnt.count"}
    <- {"ok": true, "value": "1042"}
    -> {"op": "write", "handler": "lb.backends", "value": "10.0.1.1 10.0.1.2"}
    <- {"ok": true, "value": ""}
    -> {"op": "list"}            <- {"ok": true, "value": "cnt.count r\\n..."}
    -> {"op": "quit"}            (ends a `middlebox run --linger`)

`middlebox run GRAPH ... --control PATH` serves it; `middlebox ctl PATH
read|write|list` is the client.
"""

import json
import os
import socket
import threading

from middlebox.errors import RunError


class Server:
    """Serves an Engine's handlers on a Unix socket, in a thread."""

    def __init__(self, engine, path):
        self.engine = engine
        self.path = path
        self.quit = threading.Event()
        if os.path.exists(path):
            os.unlink(path)
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            self.sock.bind(path)
        except OSError as e:
            raise RunError(f"control socket {path}: {e.strerror}") from None
        self.sock.listen(8)
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self):
        while not self.quit.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with conn, conn.makefile("rw") as f:
                for line in f:
                    reply = self._answer(line)
                    f.write(json.dumps(reply) + "\n")
                    f.flush()
                    if self.quit.is_set():
                        break

    def _answer(self, line):
        try:
            req = json.loads(line)
            op = req.get("op")
            if op == "read":
                return {"ok": True, "value": self.engine.read(req["handler"])}
            if op == "write":
                self.engine.write(req["handler"], req.get("value", ""))
                return {"ok": True, "value": ""}
            if op == "list":
                rows = [f"{h} {mode}" for h, mode in self.engine.handlers().items()]
                return {"ok": True, "value": "\n".join(rows)}
            if op == "quit":
                self.quit.set()
                return {"ok": True, "value": ""}
            return {"ok": False, "error": f"unknown op {op!r}"}
        except RunError as e:
            return {"ok": False, "error": str(e)}
        except (ValueError, KeyError, TypeError) as e:
            return {"ok": False, "error": f"bad request: {e}"}

    def close(self):
        self.quit.set()
        try:
            self.sock.close()
        finally:
            if os.path.exists(self.path):
                os.unlink(self.path)


def request(path, op, handler=None, value=None, timeout=10.0):
    """Send one request to a control socket; returns the value or raises RunError."""
    msg = {"op": op}
    if handler is not None:
        msg["handler"] = handler
    if value is not None:
        msg["value"] = value
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(timeout)
            s.connect(path)
            with s.makefile("rw") as f:
                f.write(json.dumps(msg) + "\n")
                f.flush()
                line = f.readline()
    except OSError as e:
        raise RunError(f"control socket {path}: {e.strerror or e}") from None
    if not line:
        raise RunError(f"control socket {path}: no answer")
    reply = json.loads(line)
    if not reply.get("ok"):
        raise RunError(reply.get("error", "failed"))
    return reply.get("value", "")
