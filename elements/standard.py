"""Basic elements: dropping, counting, copying, painting and switching packets.

Kernels in standard.c. The switches (Tee, PaintSwitch, RoundRobinSwitch,
HashSwitch) have a configurable number of outputs `n`; without it they have
one output per connected output port (1 + the highest port used).
"""

import struct

from middlebox.element import Element, Int, Param, write_handler

# Most outputs a switch may have (the engine's port numbers are 16-bit; this
# keeps plans small and catches typos).
MAX_OUTPUTS = 1024
N_DOC = "number of outputs; unset: as many as are connected"


def _outputs(n, connected):
    """Output count of a switch: n if configured, else the connected ports."""
    if n is not None:
        return n
    return max(connected, 1)


class Discard(Element):
    """Drop every packet (each counted as dropped).

        drop: {class: Discard}
    """

    kernel = "discard"
    inputs = 1
    outputs = 0


class Counter(Element):
    """Count packets and bytes, and pass every packet through unchanged.

    Extra counters: `count` (packets) and `byte_count` (bytes, whole frames).
    Handlers, as Click's: read `count`, `byte_count`; write `reset` zeroes
    both, between two batches of a running engine.

        cnt: {class: Counter}
    """

    kernel = "counter"
    inputs = 1
    outputs = 1
    xstats = ("count", "byte_count")

    @write_handler("reset")
    def reset(self, value):
        return b"reset"


class Tee(Element):
    """Send a copy of every packet to each output.

    The original goes out of output 0, a copy with its own buffer (same bytes
    and annotations) out of each other output. A copy that cannot be made
    (packet pool exhausted) is counted as created and dropped. `n` is the
    number of outputs; it defaults to the number of connected outputs.

        tee: {class: Tee, n: 3}
    """

    kernel = "tee"
    inputs = 1
    outputs = 1
    outputs_doc = "1 or more (n)"
    n = Param(Int(min=1, max=MAX_OUTPUTS), default=None, doc=N_DOC)

    def noutputs(self, connected=0):
        return _outputs(self.n, connected)

    def created_bound(self, arriving):
        return arriving * max(0, self.nout - 1)


class Paint(Element):
    """Set the paint annotation of every packet to COLOR (0-255).

    PaintSwitch reads the annotation back, as in Click.

        paint: {class: Paint, color: 2}
    """

    kernel = "paint"
    inputs = 1
    outputs = 1
    color = Param(Int(min=0, max=255), doc="paint annotation value")

    def lower(self, ctx):
        return struct.pack("<B", self.color)


class PaintSwitch(Element):
    """Send each packet to the output numbered by its paint annotation.

    A packet whose paint is not below the number of outputs `n` (default: the
    connected outputs) is dropped and counted.

        ps: {class: PaintSwitch, n: 3}
    """

    kernel = "paint_switch"
    inputs = 1
    outputs = 1
    outputs_doc = "1 or more (n)"
    n = Param(Int(min=1, max=256), default=None, doc=N_DOC)

    def noutputs(self, connected=0):
        return _outputs(self.n, connected)


class RoundRobinSwitch(Element):
    """Send packets to the outputs in turn: 0, 1, ..., n-1, 0, 1, ...

    The turn carries over from one batch to the next, so packet k of the run
    goes to output k % n. `n` defaults to the connected outputs.

        rr: {class: RoundRobinSwitch}
    """

    kernel = "round_robin_switch"
    inputs = 1
    outputs = 1
    outputs_doc = "1 or more (n)"
    n = Param(Int(min=1, max=MAX_OUTPUTS), default=None, doc=N_DOC)

    def noutputs(self, connected=0):
        return _outputs(self.n, connected)


class HashSwitch(Element):
    """Send each packet to an output chosen by a hash of LENGTH bytes at OFFSET.

    Packets with the same bytes in [offset, offset+length) always take the
    same output, in every run and on every machine. `n` (default: the
    connected outputs) is the number of outputs. Packets shorter than
    offset+length are dropped and counted (extra counter `short`).

    The hash: the bytes are read as 64-bit little-endian words (the last one
    zero-padded); from h = 0x9E3779B97F4A7C15 each word w does
    h = (h ^ w) * 0xBF58476D1CE4E5B9 (mod 2^64), h ^= h >> 31; then
    h ^= length and the murmur3 64-bit finalizer mixes h. The output is
    h % n.

    Hash the IPv4 source and destination addresses of Ethernet frames:

        hs: {class: HashSwitch, offset: 26, length: 8}
    """

    kernel = "hash_switch"
    inputs = 1
    outputs = 1
    outputs_doc = "1 or more (n)"
    xstats = ("short",)
    offset = Param(Int(min=0, max=65535), doc="first byte hashed")
    length = Param(Int(min=1, max=65535), doc="number of bytes hashed")
    n = Param(Int(min=1, max=MAX_OUTPUTS), default=None, doc=N_DOC)

    def noutputs(self, connected=0):
        return _outputs(self.n, connected)

    def lower(self, ctx):
        return struct.pack("<II", self.offset, self.length)
