"""Where packets enter and leave a graph.

FromDevice/ToDevice name *logical* devices, bound when the graph runs: to
pcap files (`middlebox run --in/--out`), to Linux interfaces on a host, to
virtio NICs in a VM (in order of first appearance in the graph).
FromPcap/ToPcap name files directly. InfiniteSource makes traffic for
benchmarks.
"""

import ipaddress
import struct

from middlebox.element import Element, Hex, Int, Param, Str


class _Device(Element):
    """Common part of the elements bound to a logical device."""

    role = None  # "rx" (packets enter) or "tx" (packets leave)

    def device_name(self):
        return self.device

    def lower(self, ctx):
        return struct.pack("<I", ctx.device_index(self.device_name()))


class FromDevice(_Device):
    """Packets received on a logical device enter the graph here.

    The device is bound when the graph runs: a pcap file
    (`--in lan=in.pcap`), a Linux interface, or a VM's virtio NIC. A
    device has at most one FromDevice.

        lan: {class: FromDevice, device: lan}
    """

    kernel = "from_device"
    role = "rx"
    inputs = 0
    outputs = 1
    device = Param(Str(), doc="logical device name")


class ToDevice(_Device):
    """Packets that reach this element are sent on a logical device.

    Bound like FromDevice (`--out wan=out.pcap`). Its `out` counter counts
    packets handed to the device; packets the device has no room for are
    dropped and counted.

        wan: {class: ToDevice, device: wan}
    """

    kernel = "to_device"
    role = "tx"
    inputs = 1
    outputs = 0
    device = Param(Str(), doc="logical device name")


class FromPcap(_Device):
    """Packets read from a pcap or pcapng file enter the graph here.

    The file is opened when the graph runs on the host (relative paths are
    relative to the current directory); packets enter in timestamp order
    together with any other inputs.

        input: {class: FromPcap, file: traces/in.pcap}
    """

    kernel = "from_device"
    role = "rx"
    inputs = 0
    outputs = 1
    file = Param(Str(), doc="pcap or pcapng file to read")

    def device_name(self):
        return "pcap:" + self.file


class ToPcap(_Device):
    """Packets that reach this element are written to a pcap file.

    A `.pcapng` name writes pcapng, anything else classic pcap.

        capture: {class: ToPcap, file: out.pcap}
    """

    kernel = "to_device"
    role = "tx"
    inputs = 1
    outputs = 0
    file = Param(Str(), doc="pcap or pcapng file to write")

    def device_name(self):
        return "pcap:" + self.file


def _checksum(data):
    if len(data) % 2:
        data += b"\0"
    s = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return ~s & 0xFFFF


def udp_template(length=64, src="10.0.0.1", dst="10.0.1.1", sport=1024, dport=53):
    """An Ethernet/IPv4/UDP frame of `length` bytes with valid checksums."""
    length = max(length, 42)
    payload = bytes(length - 42)
    s, d = ipaddress.IPv4Address(src).packed, ipaddress.IPv4Address(dst).packed
    udp_len = 8 + len(payload)
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + udp_len, 0, 0, 64, 17, 0, s, d)
    ip = ip[:10] + struct.pack("!H", _checksum(ip)) + ip[12:]
    pseudo = s + d + struct.pack("!BBH", 0, 17, udp_len)
    udp = struct.pack("!HHHH", sport, dport, udp_len, 0) + payload
    csum = _checksum(pseudo + udp) or 0xFFFF
    udp = udp[:6] + struct.pack("!H", csum) + udp[8:]
    eth = bytes.fromhex("000000000002" "000000000001" "0800")
    return eth + ip + udp


class InfiniteSource(Element):
    """Makes copies of a template packet, for benchmarks and tests.

    Without `data`, the template is a valid Ethernet/IPv4/UDP frame
    10.0.0.1:1024 -> 10.0.1.1:53 of `length` bytes. With `flows: K`, packet
    i belongs to flow i % K: its IPv4 source address and TCP/UDP source port
    are increased by the flow number, checksums kept valid. Makes up to
    `burst` packets per engine poll (default 32, one batch; Click's default
    is 1) until `limit` packets (-1: no limit).

        src: {class: InfiniteSource, length: 64, limit: 1000000, flows: 1000}
    """

    kernel = "infinite_source"
    source = True
    inputs = 0
    outputs = 1
    data = Param(Hex(), default=None, doc="template packet as hex (default: UDP frame)")
    length = Param(Int(min=14, max=9000), default=None,
                   doc="template length: pads with zeros or truncates (default 64)")
    limit = Param(Int(min=-1), default=-1, doc="packets to make in all, -1 for no limit")
    burst = Param(Int(min=1, max=32), default=32, doc="packets per poll")
    flows = Param(Int(min=1, max=1 << 24), default=1, doc="distinct flows to cycle through")

    def configure(self):
        if self.data is None:
            self.template = udp_template(self.length or 64)
        else:
            t = self.data
            if self.length is not None:
                t = t[: self.length].ljust(self.length, b"\0")
            if not t:
                self.error("parameter 'data': template packet is empty", "data")
            self.template = t

    def lower(self, ctx):
        limit = (1 << 64) - 1 if self.limit < 0 else self.limit
        t = self.template
        return struct.pack("<QIII", limit, self.burst, self.flows, len(t)) + t
