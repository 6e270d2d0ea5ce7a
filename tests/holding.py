"""A Python element that can hold a running engine still, so that tests can
issue a handler write that certainly lands mid-run, however fast the
engine is.  Write HOLDING_PASS to MODULE.py beside a graph, use
MODULE.SlowPass in the graph, then call run_held(engine, module, write)."""

import threading
import time


# A pass-through Python element that, once `gate` is cleared, stops the run
# after HOLD_AT packets until the test sets it again: a write issued while it
# waits lands mid-run however fast the engine is.
HOLDING_PASS = """
import threading
from middlebox import PythonElement
gate = threading.Event()
gate.set()
HOLD_AT = 50_000
seen = 0

class SlowPass(PythonElement):
    def process(self, batch):
        global seen
        seen += len(batch)
        if seen >= HOLD_AT and not gate.is_set():
            gate.wait(30)
        return [(0, p) for p in batch]
"""


def run_held(eng, module, write):
    """Run eng's sources in a thread; when the Python element holds the run,
    call write() (which returns once applied between two passes) and let
    the run go on. Returns the element module's `seen` when write began."""
    module.gate.clear()
    t = threading.Thread(target=eng.run_sources)
    t.start()
    try:
        deadline = time.time() + 30
        while module.seen < module.HOLD_AT and t.is_alive() and time.time() < deadline:
            time.sleep(0.01)
        held_at = module.seen
        module.gate.set()           # before write(): it waits for the pass to end
        write()
    finally:
        module.gate.set()
        t.join()
    return held_at
