"""Ethernet-layer elements: removing, restoring, adding and rewriting headers.

Kernels in ethernet.c. Each element drops (and counts, in `dropped` and in
its own extra counter) the packets it cannot handle.
"""

import struct

from middlebox.element import MAC, Element, Int, Param


class Strip(Element):
    """Remove LENGTH bytes from the front of every packet.

    The bytes stay in the buffer's headroom, so Unstrip can put them back.
    Packets shorter than LENGTH are dropped and counted (extra counter
    `short`); Click's Strip would instead strip what is there and pass the
    shortened packet on.

        strip: {class: Strip, length: 14}
    """

    kernel = "strip"
    inputs = 1
    outputs = 1
    xstats = ("short",)
    length = Param(Int(min=0, max=65535), doc="bytes to remove")

    def lower(self, ctx):
        return struct.pack("<I", self.length)


class Unstrip(Element):
    """Put LENGTH bytes back at the front of every packet.

    As in Click, the bytes exposed are whatever lies in front of the data,
    normally the bytes an earlier Strip removed. A packet without LENGTH
    bytes of headroom is dropped and counted (extra counter `no_headroom`).

        unstrip: {class: Unstrip, length: 14}
    """

    kernel = "unstrip"
    inputs = 1
    outputs = 1
    xstats = ("no_headroom",)
    length = Param(Int(min=0, max=65535), doc="bytes to restore")

    def lower(self, ctx):
        return struct.pack("<I", self.length)


class EtherEncap(Element):
    """Prepend a 14-byte Ethernet header: DST, SRC, ETHERTYPE.

    `ethertype` is a 16-bit number, decimal or hex (0x0800). A packet whose
    buffer has no room for 14 more bytes is dropped and counted (extra
    counter `no_room`).

        encap: {class: EtherEncap, ethertype: 0x0800, src: "00:11:22:33:44:55", dst: "66:77:88:99:aa:bb"}
    """

    kernel = "ether_encap"
    inputs = 1
    outputs = 1
    xstats = ("no_room",)
    ethertype = Param(Int(min=0, max=0xFFFF), doc="EtherType, e.g. 0x0800 (IPv4)")
    src = Param(MAC(), doc="source address")
    dst = Param(MAC(), doc="destination address")

    def lower(self, ctx):
        return self.dst + self.src + struct.pack(">H", self.ethertype)


class EtherRewrite(Element):
    """Overwrite the source and destination addresses of every Ethernet frame.

    Frames shorter than 14 bytes are dropped and counted (extra counter
    `short`).

        rw: {class: EtherRewrite, src: "00:11:22:33:44:55", dst: "66:77:88:99:aa:bb"}
    """

    kernel = "ether_rewrite"
    inputs = 1
    outputs = 1
    xstats = ("short",)
    src = Param(MAC(), doc="new source address")
    dst = Param(MAC(), doc="new destination address")

    def lower(self, ctx):
        return self.dst + self.src


class EtherMirror(Element):
    """Swap the source and destination addresses of every Ethernet frame.

    Frames shorter than 14 bytes are dropped and counted (extra counter
    `short`).

        mirror: {class: EtherMirror}
    """

    kernel = "ether_mirror"
    inputs = 1
    outputs = 1
    xstats = ("short",)
