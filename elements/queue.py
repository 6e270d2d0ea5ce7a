"""Queue: where packets wait (Click's Queue). Kernel in queue.c."""

import struct

from middlebox.element import Element, Int, Param

MAX_CAPACITY = 1 << 14    # every stored packet needs a pool buffer


class Queue(Element):
    """Store packets in FIFO order; release them when the engine polls.

    The one place packets wait between passes, as Click's Queue sits between
    push and pull: arriving packets are stored, and each engine poll takes
    up to 32 of them out of output 0, oldest first. A packet that arrives
    when `capacity` packets are stored is dropped and counted (`drops`).
    Stored packets count as `held`; `highwater` is the most ever stored.

        q: {class: Queue, capacity: 1000}
    """

    kernel = "queue"
    inputs = 1
    outputs = 1
    source = True
    xstats = ("drops", "highwater")
    capacity = Param(Int(min=1, max=MAX_CAPACITY), default=1000, doc="most packets stored")

    def held_capacity(self):
        return self.capacity

    def emit_bound(self, arriving):
        return 32

    def created_bound(self, arriving):
        return 0                    # releases what it stored; makes nothing

    def lower(self, ctx):
        return struct.pack("<I", self.capacity)
