"""Reading and writing packet captures: classic pcap and pcapng.

A capture is held as a few flat arrays over one byte buffer, never as one
Python object per packet, so the C engine can take it as it is::

    cap = read("in.pcap")
    cap.linktype        # 1 = Ethernet
    cap.data            # bytes: the file's bytes (packets are slices of it)
    cap.offsets         # uint64[n]: where packet i starts in data
    cap.lengths         # uint32[n]: its captured length
    cap.timestamps      # uint64[n]: nanoseconds since the epoch
    write("out.pcapng", cap)
    write_records("out.pcap", 1, data, offsets, lengths, timestamps)

For a run, open_capture() gives a classic pcap as a ClassicFile instead:
the mapped file, whose records the engine reads in place while it runs
(no arrays, no numpy); Engine.run_to_files() writes outputs the same way.

Reading understands classic pcap (microsecond and nanosecond magic, either
byte order) and pcapng (either byte order, several sections, if_tsresol and
if_tsoffset, enhanced, simple and obsolete packet blocks; other blocks are
skipped). Every failure is a RunError with a one-line message naming the file.
Packets are numbered from 1 in messages, as Wireshark numbers them.
"""

import os
import stat
import struct
from array import array

from middlebox.errors import RunError


class _Numpy:
    """numpy, imported on first use: `middlebox run` over classic pcaps
    (open_capture, file_header) never needs it, and its import is a large
    part of that command's start-up."""

    def __getattr__(self, name):
        global np
        import numpy
        np = numpy
        return getattr(numpy, name)


np = _Numpy()

__all__ = ["Capture", "ClassicFile", "read", "open_capture", "parse", "write", "write_records",
           "file_header", "MAX_CAPLEN"]

#: Largest captured length accepted when reading (lenient: tcpdump's default
#: snap length is 262144).
MAX_CAPLEN = 256 * 1024

_NS = 1_000_000_000

# classic pcap magics, as read little-endian from the first four bytes
_MAGIC_US = 0xA1B2C3D4
_MAGIC_NS = 0xA1B23C4D
_CLASSIC = {
    _MAGIC_US: ("<", False), _MAGIC_NS: ("<", True),
    0xD4C3B2A1: (">", False), 0x4D3CB2A1: (">", True),
}
_PCAPNG_SHB = 0x0A0D0D0A
_BYTE_ORDER_MAGIC = 0x1A2B3C4D

# pcapng block types
_IDB, _OPB, _SPB, _EPB = 1, 2, 3, 6
# pcapng IDB options
_OPT_ENDOFOPT, _IF_TSRESOL, _IF_TSOFFSET = 0, 9, 14

# bytes of packet data placed per chunk when writing (bounds temporary memory)
_WRITE_CHUNK = 1 << 25
_WRITE_CHUNK_PACKETS = 1 << 20
# bytes of records written per chunk when every packet has the same length
_WRITE_BUFFER = 1 << 22


class Capture:
    """Packets of one link type, as arrays over one byte buffer.

    ``data`` is any bytes-like object; ``offsets`` (uint64), ``lengths``
    (uint32) and ``timestamps`` (uint64, ns since the epoch) have one entry
    per packet. ``nanos`` tells whether the source had nanosecond
    resolution (it selects the classic pcap magic when writing).
    """

    __slots__ = ("linktype", "data", "offsets", "lengths", "timestamps", "nanos")

    def __init__(self, linktype, data, offsets, lengths, timestamps, nanos=False):
        self.linktype = int(linktype)
        self.data = data
        self.offsets = np.ascontiguousarray(offsets, dtype=np.uint64)
        self.lengths = np.ascontiguousarray(lengths, dtype=np.uint32)
        self.timestamps = np.ascontiguousarray(timestamps, dtype=np.uint64)
        self.nanos = bool(nanos)
        n = len(self.offsets)
        if len(self.lengths) != n or len(self.timestamps) != n:
            raise ValueError("offsets, lengths and timestamps differ in length")

    def __len__(self):
        return len(self.offsets)

    def __repr__(self):
        return (f"<Capture linktype={self.linktype} packets={len(self)} "
                f"{'ns' if self.nanos else 'us'}>")

    def packet(self, i):
        """The bytes of packet i (0-based; negative counts from the end)."""
        o = int(self.offsets[i])
        end = o + int(self.lengths[i])
        data = self.data
        if isinstance(data, bytes):
            return data[o:end]
        return bytes(memoryview(data).cast("B")[o:end])

    def timestamp(self, i):
        """The timestamp of packet i in nanoseconds since the epoch."""
        return int(self.timestamps[i])

    def __iter__(self):
        """Yield (timestamp_ns, bytes) for every packet, in order."""
        data = self.data
        if not isinstance(data, bytes):
            data = memoryview(data).cast("B")
        for o, n, t in zip(self.offsets.tolist(), self.lengths.tolist(),
                           self.timestamps.tolist()):
            yield t, bytes(data[o:o + n])

    @classmethod
    def from_packets(cls, packets, linktype=1, nanos=None):
        """Build a Capture from an iterable of packets.

        Each item is bytes-like, a (timestamp_ns, bytes) tuple, or a scapy
        packet (``bytes(p)`` and ``p.time`` in seconds). A bytes item has no
        time: it gets ``i * 1000`` ns (i = its position), so order is kept.
        ``nanos=None`` sets nanosecond resolution when some timestamp is not
        a whole microsecond.
        """
        if isinstance(packets, Capture):
            return packets
        chunks, stamps = [], []
        for i, p in enumerate(packets):
            if isinstance(p, (bytes, bytearray, memoryview)):
                chunks.append(bytes(p))
                stamps.append(i * 1000)
            elif isinstance(p, tuple):
                if len(p) != 2:
                    raise TypeError(f"packet {i}: expected (timestamp_ns, bytes), "
                                    f"got a {len(p)}-tuple")
                stamps.append(int(p[0]))
                chunks.append(bytes(p[1]))
            elif hasattr(p, "time") and hasattr(p, "__bytes__"):
                chunks.append(bytes(p))
                stamps.append(_seconds_to_ns(p.time))
            else:
                raise TypeError(f"packet {i}: cannot use a {type(p).__name__} "
                                f"as a packet")
        lengths = np.fromiter((len(c) for c in chunks), dtype=np.uint64,
                              count=len(chunks))
        offsets = np.zeros(len(chunks), dtype=np.uint64)
        if len(chunks) > 1:
            np.cumsum(lengths[:-1], out=offsets[1:])
        for t in stamps:
            if t < 0 or t >= 1 << 64:
                raise ValueError(f"timestamp {t} ns is out of range")
        ts = np.array(stamps, dtype=np.uint64)
        if nanos is None:
            nanos = bool(np.any(ts % np.uint64(1000)))
        return cls(linktype, b"".join(chunks), offsets, lengths, ts, nanos)


def _seconds_to_ns(t):
    """Seconds (int, float, Decimal, or scapy's EDecimal) to integer ns."""
    if isinstance(t, int):
        return t * _NS
    from decimal import Decimal, ROUND_HALF_EVEN
    d = t if isinstance(t, Decimal) else Decimal(repr(float(t)))
    return int((d * _NS).to_integral_value(rounding=ROUND_HALF_EVEN))


# --------------------------------------------------------------------------
# reading

def read(path, map=False):
    """Read a classic pcap or pcapng file into a Capture (data: bytes).

    ``map=True`` maps a regular file into memory (read-only) instead of
    copying it: the Capture's data is then an mmap of the file itself, which
    must not change while the Capture is used."""
    name = os.fspath(path)
    return parse(_load(name, map), name)


def _load(name, map):
    """A file's bytes (or a read-only mapping of them); errors as RunError."""
    try:
        with open(name, "rb") as f:
            buf = _map(f) if map else None
            if buf is None:
                buf = f.read()
    except FileNotFoundError:
        raise RunError(f"{name}: no such file") from None
    except IsADirectoryError:
        raise RunError(f"{name}: is a directory") from None
    except PermissionError:
        raise RunError(f"{name}: permission denied") from None
    except OSError as e:
        raise RunError(f"{name}: {_reason(e)}") from None
    return buf


def _map(f):
    """A read-only mapping of a regular, non-empty file, or None."""
    import mmap
    try:
        st = os.fstat(f.fileno())
        if not stat.S_ISREG(st.st_mode) or st.st_size == 0:
            return None
        flags = mmap.MAP_SHARED | getattr(mmap, "MAP_POPULATE", 0)
        return mmap.mmap(f.fileno(), st.st_size, flags=flags, prot=mmap.PROT_READ)
    except (OSError, ValueError, OverflowError):
        return None


class ClassicFile:
    """A classic pcap file held whole in memory (mapped, usually), whose
    records the engine reads in place as packets enter (open_capture): no
    index arrays, no pass over the file before the run."""

    __slots__ = ("name", "data", "linktype", "nanos", "swapped")

    def __init__(self, name, data, linktype, nanos, swapped):
        self.name, self.data, self.linktype = name, data, linktype
        self.nanos, self.swapped = nanos, swapped

    def __repr__(self):
        return (f"<ClassicFile {self.name!r} linktype={self.linktype} "
                f"{'ns' if self.nanos else 'us'}>")


def open_capture(path, map=True):
    """A capture file ready for a run: a ClassicFile for classic pcap (its
    header checked; a bad record is reported when the run reaches it, as
    record_error says), else a Capture read whole (pcapng). Errors are
    read()'s."""
    name = os.fspath(path)
    buf = _load(name, map)
    if len(buf) >= 4:
        magic = struct.unpack_from("<I", buf, 0)[0]
        if magic in _CLASSIC:
            endian, nanos = _CLASSIC[magic]
            if len(buf) < 24:
                raise RunError(f"{name}: truncated pcap file header")
            network = struct.unpack_from(endian + "I", buf, 20)[0]
            return ClassicFile(name, buf, network & 0xFFFF, nanos, endian == ">")
    return parse(buf, name)


def record_error(name, problem):
    """The RunError for a bad classic pcap record: problem is ("truncated",
    byte position) or ("caplen", packet number, captured length)."""
    if problem[0] == "truncated":
        return RunError(f"{name}: truncated packet record at byte {problem[1]}")
    return RunError(f"{name}: packet {problem[1]} has captured length "
                    f"{problem[2]}, over the snap length")


def parse(buf, name="<capture>"):
    """Parse the bytes of a whole capture file; ``name`` is used in errors.
    ``buf`` is bytes-like (a read-only mmap is used as it is)."""
    if not isinstance(buf, bytes) and type(buf).__name__ != "mmap":
        buf = bytes(buf)
    if len(buf) < 4:
        raise RunError(f"{name}: not a pcap or pcapng file")
    magic = struct.unpack_from("<I", buf, 0)[0]
    if magic in _CLASSIC:
        endian, nanos = _CLASSIC[magic]
        return _parse_classic(buf, name, endian, nanos)
    if magic == _PCAPNG_SHB:
        return _parse_pcapng(buf, name)
    raise RunError(f"{name}: not a pcap or pcapng file")


def _parse_classic(buf, name, endian, nanos):
    size = len(buf)
    if size < 24:
        raise RunError(f"{name}: truncated pcap file header")
    _, _, _, _, _, network = struct.unpack_from(endian + "HHiIII", buf, 4)
    linktype = network & 0xFFFF  # upper bits may carry FCS information
    index = _index_classic_c()
    if index is not None:
        # one walk over the record headers, in C (middlebox.runtime._engine)
        offsets, lengths, timestamps, problem = index(buf, endian == ">", nanos, MAX_CAPLEN)
        if problem is None:
            return Capture(linktype, buf, offsets, lengths, timestamps, nanos)
        raise record_error(name, problem)
    u32 = np.dtype(endian + "u4")

    data_pos = None
    if size == 24:
        data_pos = np.zeros(0, dtype=np.uint64)
    elif size >= 40:
        # Fast path: every packet has the first packet's captured length.
        # If all records at that stride say so, they are all real headers
        # (by induction from the first one), and every header field is a
        # strided view of the file: no gathering.
        first = struct.unpack_from(endian + "I", buf, 32)[0]
        stride = 16 + first
        if first <= MAX_CAPLEN and (size - 24) % stride == 0:
            n = (size - 24) // stride

            # one pass over the file copies the record headers out
            hdr = np.ascontiguousarray(np.ndarray((n, 4), dtype=u32, buffer=buf,
                                                  offset=24, strides=(stride, 4)))
            if np.all(hdr[:, 2] == first):
                data_pos = np.arange(np.uint64(40), np.uint64(40 + n * stride),
                                     np.uint64(stride), dtype=np.uint64)
                lengths = np.full(n, first, dtype=np.uint32)
                timestamps = hdr[:, 0].astype(np.uint64)
                timestamps *= np.uint64(_NS)
                if nanos:
                    timestamps += hdr[:, 1]
                else:
                    timestamps += hdr[:, 1].astype(np.uint64) * np.uint64(1000)
                return Capture(linktype, buf, data_pos, lengths, timestamps, nanos)
    if data_pos is None:
        data_pos = _index_classic(buf, name, endian)

    n = len(data_pos)
    if n:
        # the 16-byte record headers, gathered in one pass as (n, 4) words
        words = _void_view(buf, 16, len(buf) - 15)[data_pos - np.uint64(16)].view(u32)
        words = words.reshape(n, 4)
        secs = words[:, 0].astype(np.uint64)
        frac = words[:, 1].astype(np.uint64)
        lengths = words[:, 2].astype(np.uint32)
        if not nanos:
            frac *= np.uint64(1000)
        timestamps = secs * np.uint64(_NS) + frac
    else:
        lengths = np.zeros(0, dtype=np.uint32)
        timestamps = np.zeros(0, dtype=np.uint64)
    return Capture(linktype, buf, data_pos, lengths, timestamps, nanos)


def _index_classic_c():
    """The C indexer of classic pcap records, or None if the host extension
    is not built (the numpy code below then does the same)."""
    try:
        from middlebox.runtime._engine import index_classic
    except ImportError:
        return None
    return index_classic


def _index_classic(buf, name, endian):
    """Start of each packet's data, walking the records one by one."""
    unpack = struct.Struct(endian + "I").unpack_from
    size = len(buf)
    out = array("Q")
    append = out.append
    pos = 24
    while pos < size:
        if pos + 16 > size:
            raise RunError(f"{name}: truncated packet record at byte {pos}")
        caplen = unpack(buf, pos + 8)[0]
        if caplen > MAX_CAPLEN:
            raise RunError(f"{name}: packet {len(out) + 1} has captured length "
                           f"{caplen}, over the snap length")
        end = pos + 16 + caplen
        if end > size:
            raise RunError(f"{name}: truncated packet record at byte {pos}")
        append(pos + 16)
        pos = end
    return np.frombuffer(out, dtype=np.uint64) if out else np.zeros(0, np.uint64)


class _Iface:
    __slots__ = ("linktype", "snaplen", "div", "mul", "shift", "offset", "nanos")

    def __init__(self, linktype, snaplen):
        self.linktype = linktype
        self.snaplen = snaplen
        self.set_resolution(6, False)
        self.offset = 0  # if_tsoffset, seconds

    def set_resolution(self, exp, binary):
        # units of 10**-exp or 2**-exp seconds
        self.mul = self.div = 1
        self.shift = 0
        if binary:
            self.shift = exp
            self.mul = _NS
            self.nanos = exp > 19  # finer than a microsecond
        elif exp <= 9:
            self.mul = 10 ** (9 - exp)
            self.nanos = exp > 6
        else:
            self.div = 10 ** (exp - 9)
            self.nanos = True

    def to_ns(self, units):
        """Convert a uint64 array of time units to ns since the epoch;
        None if some result does not fit in 64 bits (or is negative)."""
        off = self.offset * _NS
        if self.shift == 0 and self.div == 1 and off >= 0:
            if len(units) == 0 or int(units.max()) <= (2 ** 64 - 1 - off) // self.mul:
                ns = units * np.uint64(self.mul)
                return ns + np.uint64(off) if off else ns
        # the rest (rare resolutions, offsets, overflow): exact integers
        vals = [(((u * self.mul) >> self.shift) // self.div) + off
                for u in units.tolist()]
        if vals and (min(vals) < 0 or max(vals) >= 2 ** 64):
            return None
        return np.array(vals, dtype=np.uint64)


def _parse_pcapng(buf, name):
    size = len(buf)
    pos = 0
    e = "<"
    ifaces = []          # this section's interfaces, as indexes into all_ifaces
    all_ifaces = []
    # per packet: data position, captured length, interface (index into
    # all_ifaces), timestamp in the interface's units
    data_pos, caplens, ifidx, units = (array("Q"), array("Q"), array("Q"),
                                       array("Q"))
    bulk = []            # (data_pos, caplens, ifidx, units) numpy chunks
    count = 0            # packets before the current array chunk
    tried_bulk = False
    walk_from = 0        # where _epb_run may next be tried
    u32 = epb = None

    def add_chunk(got):
        """Close the packets indexed one by one so far, then add a chunk
        indexed at once (the numpy views keep the old arrays alive)."""
        nonlocal data_pos, caplens, ifidx, units, count
        if data_pos:
            bulk.append(_as_arrays(data_pos, caplens, ifidx, units))
            count += len(data_pos)
            data_pos, caplens, ifidx, units = (array("Q") for _ in range(4))
        bulk.append(got)
        count += len(got[0])

    def too_long(number, caplen):
        return RunError(f"{name}: packet {number} has captured length "
                        f"{caplen}, over the snap length")

    while pos < size:
        if pos + 12 > size:
            raise RunError(f"{name}: truncated pcapng block at byte {pos}")
        if buf[pos:pos + 4] == b"\x0a\x0d\x0d\x0a":
            bom = buf[pos + 8:pos + 12]
            if bom == b"\x4d\x3c\x2b\x1a":
                e = "<"
            elif bom == b"\x1a\x2b\x3c\x4d":
                e = ">"
            else:
                raise RunError(f"{name}: bad pcapng section header at byte {pos}")
            u32 = struct.Struct(e + "I").unpack_from
            epb = struct.Struct(e + "IIIIIII").unpack_from
            ifaces = []
            tried_bulk = False
        if pos + 28 <= size:
            btype, blen, iface, hi, lo, caplen, _ = epb(buf, pos)
        else:
            btype, blen = struct.unpack_from(e + "II", buf, pos)
        if blen < 12 or blen % 4:
            raise RunError(f"{name}: bad pcapng block length {blen} at byte {pos}")
        end = pos + blen
        if end > size:
            if btype in (_EPB, _SPB, _OPB):
                raise RunError(f"{name}: truncated packet record at byte {pos}")
            raise RunError(f"{name}: truncated pcapng block at byte {pos}")
        if u32(buf, end - 4)[0] != blen:
            raise RunError(f"{name}: corrupt pcapng block at byte {pos} "
                           f"(its two lengths differ)")

        if btype == _EPB:
            number = count + len(data_pos) + 1
            if blen < 32:
                raise RunError(f"{name}: bad packet block at byte {pos}")
            if iface >= len(ifaces):
                raise RunError(f"{name}: packet {number} refers to interface "
                               f"{iface}, which is not described")
            if caplen > MAX_CAPLEN:
                raise too_long(number, caplen)
            if caplen > blen - 32:
                raise RunError(f"{name}: packet {number} has captured length "
                               f"{caplen}, longer than its block at byte {pos}")
            if not tried_bulk:
                tried_bulk = True
                got = _uniform_epbs(buf, pos, blen, e, ifaces)
                if got is not None:
                    add_chunk(got)
                    break
            if pos >= walk_from:
                # a run of packet blocks: walk it lean, check it with numpy;
                # if something in it is wrong, the loop below finds and names it
                got, stop = _epb_run(buf, pos, e, ifaces)
                walk_from = stop
                if got is not None:
                    add_chunk(got)
                    pos = stop
                    continue
            data_pos.append(pos + 28)
            caplens.append(caplen)
            ifidx.append(ifaces[iface])
            units.append((hi << 32) | lo)
        elif btype == _OPB:
            number = count + len(data_pos) + 1
            if blen < 32:
                raise RunError(f"{name}: bad packet block at byte {pos}")
            iface, _, hi, lo, caplen, _ = struct.unpack_from(e + "HHIIII", buf, pos + 8)
            if iface >= len(ifaces):
                raise RunError(f"{name}: packet {number} refers to interface "
                               f"{iface}, which is not described")
            if caplen > MAX_CAPLEN:
                raise too_long(number, caplen)
            if caplen > blen - 32:
                raise RunError(f"{name}: packet {number} has captured length "
                               f"{caplen}, longer than its block at byte {pos}")
            data_pos.append(pos + 28)
            caplens.append(caplen)
            ifidx.append(ifaces[iface])
            units.append((hi << 32) | lo)
        elif btype == _SPB:
            number = count + len(data_pos) + 1
            if blen < 16:
                raise RunError(f"{name}: bad packet block at byte {pos}")
            if not ifaces:
                raise RunError(f"{name}: packet {number} refers to interface 0, "
                               f"which is not described")
            caplen = min(u32(buf, pos + 8)[0], blen - 16)
            snap = all_ifaces[ifaces[0]].snaplen
            if snap:
                caplen = min(caplen, snap)
            if caplen > MAX_CAPLEN:
                raise too_long(number, caplen)
            data_pos.append(pos + 12)
            caplens.append(caplen)
            ifidx.append(ifaces[0])
            units.append(0)
        elif btype == _IDB:
            if blen < 20:
                raise RunError(f"{name}: bad interface description block "
                               f"at byte {pos}")
            lt, _, snaplen = struct.unpack_from(e + "HHI", buf, pos + 8)
            itf = _Iface(lt, snaplen)
            _read_idb_options(buf, pos + 16, end - 4, e, itf, name, pos)
            ifaces.append(len(all_ifaces))
            all_ifaces.append(itf)
        # section headers were handled above; other blocks are skipped
        pos = end

    if data_pos:
        bulk.append(_as_arrays(data_pos, caplens, ifidx, units))
    n = sum(len(b[0]) for b in bulk)
    if n == 0:
        linktype = all_ifaces[0].linktype if all_ifaces else 1
        return Capture(linktype, buf, np.zeros(0, np.uint64), np.zeros(0, np.uint32),
                       np.zeros(0, np.uint64), any(i.nanos for i in all_ifaces))
    positions, lengths, ifarr, units_arr = (
        np.concatenate([b[k] for b in bulk]) for k in range(4))
    linktype = all_ifaces[int(ifarr[0])].linktype
    used = np.unique(ifarr).tolist()
    for k in used:
        if all_ifaces[k].linktype != linktype:
            first = int(np.argmax(ifarr == k)) + 1
            raise RunError(f"{name}: packet {first} has link type "
                           f"{all_ifaces[k].linktype}, unlike packet 1 "
                           f"(link type {linktype}); mixed link types are not "
                           f"supported")
    timestamps = np.empty(n, dtype=np.uint64)
    for k in used:
        sel = slice(None) if len(used) == 1 else ifarr == k
        ns = all_ifaces[k].to_ns(units_arr[sel])
        if ns is None:
            raise RunError(f"{name}: a packet timestamp is out of range "
                           f"(before 1970 or after 2554)")
        timestamps[sel] = ns
    nanos = any(all_ifaces[k].nanos for k in used)
    return Capture(linktype, buf, positions, lengths.astype(np.uint32),
                   timestamps, nanos)


def _as_arrays(*arrays):
    return tuple(np.frombuffer(a, dtype=np.uint64) for a in arrays)


def _epb_run(buf, pos, e, ifaces):
    """The enhanced packet blocks from pos up to the first block of another
    type (or with a bad length), indexed at once if every one is sound:
    ((data_pos, caplens, ifidx, units) or None, where the run stops)."""
    unpack = struct.Struct(e + "II").unpack_from
    size = len(buf)
    starts = array("Q")
    append = starts.append
    while pos + 32 <= size:
        btype, blen = unpack(buf, pos)
        if btype != _EPB or blen < 32 or blen & 3 or pos + blen > size:
            break
        append(pos)
        pos += blen
    n = len(starts)
    if n < 2:
        return None, pos
    at = np.frombuffer(starts, dtype=np.uint64)
    u32 = np.dtype(e + "u4")
    words = _void_view(buf, 28, size - 27)[at].view(u32).reshape(n, 7)
    blen = words[:, 1]
    trail = _void_view(buf, 4, size - 3)[at + blen - np.uint64(4)].view(u32)
    iface, caplen = words[:, 2], words[:, 5]
    if not (np.array_equal(trail, blen) and int(iface.max()) < len(ifaces)
            and int(caplen.max()) <= MAX_CAPLEN and bool(np.all(caplen <= blen - 32))):
        return None, pos
    units = (words[:, 3].astype(np.uint64) << np.uint64(32)) | words[:, 4]
    ifidx = np.asarray(ifaces, dtype=np.uint64)[iface]
    return (at + np.uint64(28), caplen.astype(np.uint64), ifidx, units), pos


def _uniform_epbs(buf, pos, blen, e, ifaces):
    """If the rest of the file is enhanced packet blocks of length blen on
    one interface, index them all at once; else None."""
    rest = len(buf) - pos
    if rest % blen or rest // blen < 2:
        return None
    n = rest // blen
    words = np.ndarray((n, 7), dtype=np.dtype(e + "u4"), buffer=buf, offset=pos,
                       strides=(blen, 4))
    trail = np.ndarray((n,), dtype=np.dtype(e + "u4"), buffer=buf,
                       offset=pos + blen - 4, strides=(blen,))
    caplen = words[:, 5]
    if not (np.all(words[:, 0] == _EPB) and np.all(words[:, 1] == blen)
            and np.all(trail == blen) and np.all(words[:, 2] == words[0, 2])
            and int(caplen.max()) <= min(blen - 32, MAX_CAPLEN)):
        return None
    positions = np.arange(n, dtype=np.uint64) * np.uint64(blen) + np.uint64(pos + 28)
    units = (words[:, 3].astype(np.uint64) << np.uint64(32)) | words[:, 4]
    ifidx = np.full(n, ifaces[int(words[0, 2])], dtype=np.uint64)
    return positions, caplen.astype(np.uint64), ifidx, units


def _read_idb_options(buf, pos, end, e, itf, name, block_pos):
    while pos + 4 <= end:
        code, length = struct.unpack_from(e + "HH", buf, pos)
        if code == _OPT_ENDOFOPT:
            break
        value = pos + 4
        if value + length > end:
            raise RunError(f"{name}: bad interface option at byte {pos} "
                           f"(block at byte {block_pos})")
        if code == _IF_TSRESOL and length >= 1:
            v = buf[value]
            itf.set_resolution(v & 0x7F, bool(v & 0x80))
        elif code == _IF_TSOFFSET and length >= 8:
            itf.offset = struct.unpack_from(e + "q", buf, value)[0]
        pos = value + length + (-length % 4)


# --------------------------------------------------------------------------
# writing

def write(path, capture_or_packets, linktype=None, format=None):
    """Write a Capture (or an iterable of packets, as Capture.from_packets
    takes them) to path. format is "pcap", "pcapng", or None to choose by
    extension (.pcapng is pcapng; anything else is classic pcap)."""
    cap = capture_or_packets
    if not isinstance(cap, Capture):
        cap = Capture.from_packets(cap, linktype=1 if linktype is None else linktype)
    lt = cap.linktype if linktype is None else linktype
    write_records(path, lt, cap.data, cap.offsets, cap.lengths, cap.timestamps,
                  format=format, nanos=cap.nanos)


def write_records(path, linktype, data, offsets, lengths, timestamps,
                  format=None, nanos=True):
    """Write packets given as arrays (as in Capture) to path.

    Classic pcap uses the nanosecond magic when nanos is true, else the
    microsecond one (timestamps are truncated to microseconds); pcapng
    always records nanoseconds (if_tsresol = 9).
    """
    name = os.fspath(path)
    fmt = _choose_format(name, format)
    offsets = np.ascontiguousarray(offsets, dtype=np.uint64)
    lengths = np.ascontiguousarray(lengths, dtype=np.uint32)
    timestamps = np.ascontiguousarray(timestamps, dtype=np.uint64)
    n = len(offsets)
    if len(lengths) != n or len(timestamps) != n:
        raise ValueError("offsets, lengths and timestamps differ in length")
    if isinstance(data, np.ndarray):
        src = data.reshape(-1).view(np.uint8)
    else:
        src = np.frombuffer(memoryview(data).cast("B"), dtype=np.uint8)
    if n:
        over = offsets + lengths > np.uint64(len(src))
        if over.any():
            i = int(np.argmax(over))
            raise ValueError(f"packet {i} lies outside the data buffer")
    maxlen = int(lengths.max()) if n else 0
    snaplen = max(65535, maxlen)

    if fmt == "pcap":
        secs = timestamps // np.uint64(_NS)
        if n and int(secs.max()) > 0xFFFFFFFF:
            i = int(np.argmax(secs > np.uint64(0xFFFFFFFF)))
            raise RunError(f"cannot write {name}: packet {i + 1} has a timestamp "
                           f"beyond what classic pcap can hold")
        frac = timestamps % np.uint64(_NS)
        if not nanos:
            frac //= np.uint64(1000)
        header = file_header("pcap", linktype, snaplen, nanos)
        rec = np.empty((n, 4), dtype="<u4")
        rec[:, 0] = secs
        rec[:, 1] = frac
        rec[:, 2] = lengths
        rec[:, 3] = lengths
        prefix = rec.view(np.uint8)
        suffix = None
        align = 1
    else:
        header = file_header("pcapng", linktype, snaplen)
        padded = (lengths.astype(np.uint64) + np.uint64(3)) & ~np.uint64(3)
        total = padded + np.uint64(32)
        rec = np.empty((n, 7), dtype="<u4")
        rec[:, 0] = _EPB
        rec[:, 1] = total
        rec[:, 2] = 0                      # interface 0
        rec[:, 3] = timestamps >> np.uint64(32)
        rec[:, 4] = timestamps & np.uint64(0xFFFFFFFF)
        rec[:, 5] = lengths
        rec[:, 6] = lengths
        prefix = rec.view(np.uint8)
        suffix = total.astype("<u4").reshape(n, 1).view(np.uint8)
        align = 4

    try:
        with open(name, "wb") as f:
            f.write(header)
            _write_body(f, src, offsets, lengths, prefix, suffix, align)
    except OSError as e:
        raise RunError(f"cannot write {name}: {_reason(e)}") from None


def _reason(e):
    """An OSError's reason, lowercase as in the project's messages."""
    text = e.strerror or str(e)
    return text[:1].lower() + text[1:]


def file_header(fmt, linktype, snaplen=65535, nanos=True):
    """The bytes a capture file of format fmt ("pcap" or "pcapng") starts
    with, as write_records writes them: the classic file header (ns or us
    magic), or a section header and one interface (if_tsresol 9)."""
    if fmt == "pcap":
        return struct.pack("<IHHiIII", _MAGIC_NS if nanos else _MAGIC_US,
                           2, 4, 0, 0, snaplen, linktype)
    return _pcapng_header(linktype, snaplen)


def choose_format(name, format=None):
    """"pcap" or "pcapng" for an output path (by extension unless format)."""
    return _choose_format(os.fspath(name), format)


def _choose_format(name, format):
    if format is None:
        return "pcapng" if name.lower().endswith(".pcapng") else "pcap"
    if format not in ("pcap", "pcapng"):
        raise RunError(f"unknown capture format '{format}' (use pcap or pcapng)")
    return format


def _pcapng_header(linktype, snaplen):
    shb = struct.pack("<IIIHHqI", _PCAPNG_SHB, 28, _BYTE_ORDER_MAGIC, 1, 0, -1, 28)
    opts = struct.pack("<HHB3x", _IF_TSRESOL, 1, 9) + struct.pack("<HH", 0, 0)
    blen = 16 + len(opts) + 4
    idb = (struct.pack("<IIHHI", _IDB, blen, linktype, 0, snaplen) + opts
           + struct.pack("<I", blen))
    return shb + idb


def _void_view(buf, item, count):
    """Overlapping view of buf as `count` items of `item` bytes, one per byte
    offset: fancy-indexing it copies whole byte runs at arbitrary offsets."""
    return np.ndarray((count,), dtype=np.dtype(("V", item)), buffer=buf,
                      strides=(1,))


def _write_uniform(f, src, offsets, size, pre, suf, P, S, align):
    """Write records of packets that all have `size` bytes: prefix, packet,
    padding, suffix. A few MB at a time through one reused buffer (a
    (packets, record) array); packets that lie back to back in src, as the
    engine's output does, are copied as one strided block."""
    n = len(offsets)
    padded = size if align == 1 else (size + align - 1) & ~(align - 1)
    rec = P + padded + S
    step = max(1, min(n, _WRITE_BUFFER // rec))
    buf = np.zeros((step, rec), dtype=np.uint8)   # padding stays zero
    pre8 = pre.view(np.uint8).reshape(n, P)
    suf8 = suf.view(np.uint8).reshape(n, S) if S else None
    nsrc = len(src)
    gather = _void_view(src, size, nsrc - size + 1) if size and nsrc >= size else None
    for i in range(0, n, step):
        j = min(i + step, n)
        m = j - i
        out = buf[:m]
        out[:, :P] = pre8[i:j]
        if S:
            out[:, P + padded:] = suf8[i:j]
        if size:
            offs = offsets[i:j]
            o0 = int(offs[0])
            if (int(offs[-1]) - o0 == (m - 1) * size
                    and (m < 3 or bool(np.all(np.diff(offs) == np.uint64(size))))):
                out[:, P:P + size] = src[o0:o0 + m * size].reshape(m, size)
            else:
                out[:, P:P + size] = gather[offs].view(np.uint8).reshape(m, size)
        f.write(memoryview(out).cast("B"))


def _write_body(f, src, offsets, lengths, prefix, suffix, align):
    """Write records: prefix[i], packet i's bytes, zero padding to align, suffix[i].

    Works a chunk of packets at a time. Prefixes and suffixes are placed with
    one fancy-indexed copy each; packet bytes with one copy per distinct
    length, so there is no Python loop over packets.
    """
    n = len(lengths)
    if n == 0:
        return
    P = prefix.shape[1]
    S = 0 if suffix is None else suffix.shape[1]
    pre = np.ascontiguousarray(prefix).view(np.dtype(("V", P))).reshape(n)
    suf = (np.ascontiguousarray(suffix).view(np.dtype(("V", S))).reshape(n)
           if S else None)
    size = int(lengths[0])
    if int(lengths.min()) == size == int(lengths.max()):
        _write_uniform(f, src, offsets, size, pre, suf, P, S, align)
        return
    lens = lengths.astype(np.int64)
    offs = offsets.astype(np.int64)
    cum = np.cumsum(lens)
    nsrc = len(src)
    i = 0
    while i < n:
        base = int(cum[i - 1]) if i else 0
        j = int(np.searchsorted(cum, base + _WRITE_CHUNK, side="right"))
        j = min(max(j, i + 1), n, i + _WRITE_CHUNK_PACKETS)
        L = lens[i:j]
        padded = L if align == 1 else (L + (align - 1)) & ~(align - 1)
        size = P + padded + S
        ends = np.cumsum(size)
        starts = ends - size
        nout = int(ends[-1])
        out = (np.zeros if align > 1 else np.empty)(nout, dtype=np.uint8)
        _void_view(out, P, nout - P + 1)[starts] = pre[i:j]
        if S:
            _void_view(out, S, nout - S + 1)[starts + P + padded] = suf[i:j]
        order = np.argsort(L, kind="stable")
        sizes, first, counts = np.unique(L[order], return_index=True,
                                         return_counts=True)
        dst = starts + P
        src_off = offs[i:j]
        for size_, k, c in zip(sizes.tolist(), first.tolist(), counts.tolist()):
            if size_ == 0:
                continue
            sel = order[k:k + c]
            _void_view(out, size_, nout - size_ + 1)[dst[sel]] = \
                _void_view(src, size_, nsrc - size_ + 1)[src_off[sel]]
        f.write(memoryview(out))
        i = j
