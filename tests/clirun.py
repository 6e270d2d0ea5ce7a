"""Running the `middlebox` command from tests: one call (`mb`), the one-line
error check (`fails`), and a `run --control SOCKET --linger` in the
background with a `ctl` client (`Controlled`)."""

import os
import subprocess
import sys
import time

ENTRY = os.path.join(os.path.dirname(sys.executable), "middlebox")
MIDDLEBOX = [sys.executable, "-m", "middlebox"]


def mb(*args, cwd=None, entry=False, timeout=60):
    """Run the command; stderr must never hold a traceback."""
    cmd = [ENTRY] if entry else MIDDLEBOX
    r = subprocess.run(cmd + [str(a) for a in args], cwd=cwd, capture_output=True, text=True,
                       timeout=timeout)
    assert "Traceback" not in r.stderr, r.stderr
    return r


def fails(r, code, *phrases):
    """Exit code `code` and exactly one line on stderr, holding each phrase."""
    lines = r.stderr.splitlines()
    assert r.returncode == code, r.stderr
    assert len(lines) == 1, r.stderr
    assert "usage:" not in r.stderr.lower()
    for p in phrases:
        assert p in lines[0], lines[0]
    return lines[0]


class Controlled:
    """`middlebox run ARGS --control SOCK --linger` in the background.
    ctl(...) runs `middlebox ctl SOCK ...`; read_until(handler, value)
    waits for a handler to read value (the run may still be going);
    finish() waits for the process and returns (stdout, stderr); leaving
    the block kills it if it still runs."""

    def __init__(self, sock, *run_args):
        self.sock = str(sock)
        self.proc = subprocess.Popen(
            MIDDLEBOX + ["run", *map(str, run_args), "--control", self.sock, "--linger"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    def __enter__(self):
        deadline = time.time() + 30
        while not os.path.exists(self.sock) and time.time() < deadline:
            time.sleep(0.05)
        return self

    def ctl(self, *a):
        return subprocess.run(MIDDLEBOX + ["ctl", self.sock, *a], capture_output=True, text=True)

    def read_until(self, handler, value):
        for _ in range(100):
            r = self.ctl("read", handler)
            if r.stdout.strip() == value:
                break
            time.sleep(0.05)
        return r

    def finish(self, timeout=30):
        return self.proc.communicate(timeout=timeout)

    @property
    def returncode(self):
        return self.proc.returncode

    def __exit__(self, *exc):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        return False
