# cython: boundscheck=False, wraparound=False, cdivision=True
"""Host side of the engine: owns the arena (packet pool included), feeds
batches from memory, drains device queues, and bridges Python elements.

Everything per-packet happens in C with the GIL released; Python is called
only for Python elements (with the GIL taken back for their batch).
"""

from libc.stdint cimport uint8_t, uint16_t, uint32_t, uint64_t, int64_t
from libc.errno cimport EINTR, EIO, errno
from libc.stdlib cimport calloc, free, malloc, realloc
from libc.string cimport memcpy, memset
from posix.unistd cimport write
from posix.stdlib cimport posix_memalign
from cython.view cimport array as cvarray
from posix.time cimport clock_gettime, timespec, CLOCK_MONOTONIC

import threading

# numpy is imported where arrays are made, not here: `middlebox run` over
# classic pcaps never needs it (its import is a fifth of the start-up).


cdef extern from "mb.h":
    enum: MB_BATCH
    enum: MB_XSTATS

    struct mb_packet:
        uint8_t *data
        uint32_t len
        uint16_t port
        uint8_t paint
        uint8_t flags
        uint64_t ts_ns
        uint8_t *nh
        uint32_t dst_ip
        uint32_t room
        uint32_t seq
        uint8_t *head

    struct mb_out:
        void *dst
        uint16_t dst_port
        uint64_t count

    struct mb_queue:
        mb_packet **pkts
        uint32_t n
        uint32_t cap

    struct mb_kernel:
        const char *name

    struct mb_elem:
        const mb_kernel *k
        uint32_t index
        const char *name
        mb_out *outs
        uint16_t nout
        uint16_t nin
        mb_queue q
        uint64_t in_ "in"
        uint64_t created
        uint64_t dropped
        uint64_t sent
        uint64_t held
        uint64_t xstat[MB_XSTATS]

    mb_packet *mb_alloc(mb_engine *eng) nogil
    void mb_free(mb_engine *eng, mb_packet *p) nogil
    void mb_free_batch(mb_engine *eng, mb_packet **pkts, uint32_t n) nogil
    void mb_emit(mb_elem *e, uint32_t port, mb_packet *p) nogil
    void mb_drop(mb_elem *e, mb_packet *p) nogil
    uint32_t mb_max_len(const mb_engine *eng) nogil


cdef extern from "engine.h":
    ctypedef void (*mb_host_push_fn)(void *host, mb_elem *e, mb_packet **pkts, uint32_t n)

    struct mb_device:
        const char *name
        void *from_ "from"
        mb_queue tx
        uint64_t rx
        uint64_t rx_dropped
        uint64_t sent

    struct mb_engine:
        uint32_t nelem
        uint32_t ndev
        mb_elem *elems
        mb_device *devs
        uint32_t nfree
        uint32_t npkts
        uint32_t bufsize
        uint32_t headroom
        uint64_t alloc_failed
        uint64_t now_ns
        char err[192]
        void *host
        mb_host_push_fn host_push
        const char *graph_name

    struct mb_engine_opts:
        uint32_t npkts
        uint32_t bufsize
        uint32_t headroom
        uint32_t shared_plan

    uint32_t mb_plan_checksum(const uint8_t *b, uint32_t n) nogil
    uint64_t mb_engine_size(const uint8_t *plan, uint32_t len, const mb_engine_opts *opts,
                            const mb_kernel *const *kernels, uint32_t nkernels,
                            char *err, uint32_t errlen)
    mb_engine *mb_engine_init(void *arena, uint64_t size, const uint8_t *plan, uint32_t len,
                              const mb_engine_opts *opts, const mb_kernel *const *kernels,
                              uint32_t nkernels, char *err, uint32_t errlen)
    uint32_t mb_engine_rx(mb_engine *eng, uint32_t dev, mb_packet **pkts, uint32_t n) nogil
    uint32_t mb_engine_pull(mb_engine *eng) nogil
    void mb_engine_run(mb_engine *eng) nogil
    uint32_t mb_engine_tx(mb_engine *eng, uint32_t dev, mb_packet **out, uint32_t max) nogil
    int mb_engine_control(mb_engine *eng, uint32_t elem, const uint8_t *msg, uint32_t len)
    uint32_t mb_engine_query(mb_engine *eng, uint32_t elem, uint32_t what, uint8_t *out,
                             uint32_t cap)


cdef extern from *:
    """
    extern const struct mb_kernel *const mb_kernels[];
    extern const uint32_t mb_nkernels;
    """
    const mb_kernel *const mb_kernels[]
    const uint32_t mb_nkernels


class EngineError(Exception):
    """The engine refused a plan or failed while running."""


class WriteError(EngineError):
    """Writing a device's capture failed while running: .dev (device
    index), .errno (0: a timestamp classic pcap cannot hold), .packet
    (1-based number of the packet being written)."""

    def __init__(self, dev, errno, packet):
        super().__init__(f"device {dev}: write failed")
        self.dev, self.errno, self.packet = dev, errno, packet


# What happens to a device's transmitted packets while running.
cdef enum:
    SINK_NONE = 0       # counted and freed
    SINK_MEMORY = 1     # collected: packet bytes + (offset, length, timestamp) records
    SINK_FILE = 2       # written to a file as capture records

# Record formats of a file sink.
cdef enum:
    FMT_PCAP_US = 0
    FMT_PCAP_NS = 1
    FMT_PCAPNG = 2

# Bytes a file sink gathers before one write() (plus room for one record).
cdef enum:
    SINK_FILE_BUFFER = 1 << 20


cdef struct sink:
    int mode
    int fmt
    int fd
    int err              # errno of a failed write; -1: timestamp out of range
    uint8_t *data
    uint64_t used
    uint64_t cap
    uint64_t *rec        # memory: (offset, length, timestamp) triples
    uint64_t nrec
    uint64_t reccap
    uint64_t count       # file: records written into the buffer


cdef int sink_memory_add(sink *o, mb_packet *p) noexcept nogil:
    cdef uint64_t need = o.used + p.len
    cdef uint64_t ncap
    cdef void *np_
    if need > o.cap:
        ncap = o.cap * 2 if o.cap else 65536
        while ncap < need:
            ncap *= 2
        np_ = realloc(o.data, ncap)
        if np_ == NULL:
            return -1
        o.data = <uint8_t *>np_
        o.cap = ncap
    if o.nrec == o.reccap:
        ncap = o.reccap * 2 if o.reccap else 1024
        np_ = realloc(o.rec, ncap * 3 * sizeof(uint64_t))
        if np_ == NULL:
            return -1
        o.rec = <uint64_t *>np_
        o.reccap = ncap
    memcpy(o.data + o.used, p.data, p.len)
    o.rec[o.nrec * 3] = o.used
    o.rec[o.nrec * 3 + 1] = p.len
    o.rec[o.nrec * 3 + 2] = p.ts_ns
    o.nrec += 1
    o.used = need
    return 0


cdef inline void put_le32(uint8_t *b, uint32_t v) noexcept nogil:
    b[0] = <uint8_t>v
    b[1] = <uint8_t>(v >> 8)
    b[2] = <uint8_t>(v >> 16)
    b[3] = <uint8_t>(v >> 24)


cdef int sink_flush(sink *o) noexcept nogil:
    """Write out what the buffer holds; -1 (errno in o.err) on failure."""
    cdef uint64_t done = 0
    cdef ssize_t r
    while done < o.used:
        r = write(o.fd, o.data + done, o.used - done)
        if r < 0:
            if errno == EINTR:
                continue
            o.err = errno
            return -1
        if r == 0:
            o.err = EIO
            return -1
        done += <uint64_t>r
    o.used = 0
    return 0


cdef int sink_file_add(sink *o, mb_packet *p) noexcept nogil:
    """Append p as one capture record (classic pcap or pcapng EPB)."""
    cdef uint32_t n = p.len
    cdef uint32_t padded = (n + 3) & ~(<uint32_t>3)
    cdef uint64_t need = (32 + padded) if o.fmt == FMT_PCAPNG else (16 + n)
    cdef uint64_t secs, frac
    cdef uint8_t *b
    if o.used + need > o.cap and sink_flush(o) != 0:
        return -1
    b = o.data + o.used
    if o.fmt == FMT_PCAPNG:
        put_le32(b, 6)                                  # enhanced packet block
        put_le32(b + 4, <uint32_t>need)
        put_le32(b + 8, 0)                              # interface 0
        put_le32(b + 12, <uint32_t>(p.ts_ns >> 32))     # if_tsresol 9: ns
        put_le32(b + 16, <uint32_t>p.ts_ns)
        put_le32(b + 20, n)
        put_le32(b + 24, n)
        memcpy(b + 28, p.data, n)
        if padded != n:
            memset(b + 28 + n, 0, padded - n)
        put_le32(b + 28 + padded, <uint32_t>need)
    else:
        secs = p.ts_ns // 1000000000ULL
        if secs > 0xFFFFFFFFULL:
            o.err = -1
            return -1
        frac = p.ts_ns % 1000000000ULL
        if o.fmt == FMT_PCAP_US:
            frac //= 1000
        put_le32(b, <uint32_t>secs)
        put_le32(b + 4, <uint32_t>frac)
        put_le32(b + 8, n)
        put_le32(b + 12, n)
        memcpy(b + 16, p.data, n)
    o.used += need
    o.count += 1
    return 0


cdef int sinks_drain(mb_engine *eng, sink *sinks, uint32_t ndev) noexcept nogil:
    """Take every device's transmitted packets into its sink and free them.
    Returns -1 once a sink failed (packets are still taken and freed)."""
    cdef mb_packet *txb[256]
    cdef uint32_t d, m, i
    cdef int rc = 0
    cdef sink *o
    for d in range(ndev):
        o = &sinks[d]
        while True:
            m = mb_engine_tx(eng, d, txb, 256)
            if m == 0:
                break
            if o.mode == SINK_MEMORY and rc == 0:
                for i in range(m):
                    if sink_memory_add(o, txb[i]) != 0:
                        rc = -1
                        break
            elif o.mode == SINK_FILE and rc == 0:
                for i in range(m):
                    if sink_file_add(o, txb[i]) != 0:
                        rc = -1
                        break
            mb_free_batch(eng, txb, m)
    return rc


cdef sink *sinks_new(uint32_t ndev):
    cdef sink *s = <sink *>calloc(ndev + 1, sizeof(sink))
    if s == NULL:
        raise MemoryError()
    return s


cdef void sinks_free(sink *s, uint32_t ndev) noexcept:
    cdef uint32_t d
    if s == NULL:
        return
    for d in range(ndev):
        free(s[d].data)
        free(s[d].rec)
    free(s)


cdef object sink_collected(sink *o):
    """A memory sink's packets as (data, offsets, lengths, timestamps); the
    data buffer is handed over, not copied."""
    cdef cvarray owner
    cdef uint64_t[:, ::1] recv
    import numpy as np
    if o.used:
        owner = cvarray(shape=(o.used,), itemsize=1, format="B", mode="c",
                        allocate_buffer=False)
        owner.data = <char *>o.data
        owner.callback_free_data = free
        o.data = NULL
        data = np.asarray(owner)
    else:
        data = b""
    rec = np.empty((o.nrec, 3), dtype=np.uint64)
    if o.nrec:
        recv = rec
        memcpy(&recv[0, 0], o.rec, o.nrec * 3 * sizeof(uint64_t))
    return (data, rec[:, 0].copy(), rec[:, 1].astype(np.uint32), rec[:, 2].copy())


class ReadError(EngineError):
    """A classic pcap input turned out bad while running: .input (its index
    in run_inputs' list), .problem: ("truncated", byte position of the
    record) or ("caplen", packet number, captured length)."""

    def __init__(self, input, problem):
        super().__init__(f"input {input}: bad record")
        self.input, self.problem = input, problem


# How run_inputs reads a capture.
cdef enum:
    SRC_ARRAYS = 0      # index arrays over a buffer (middlebox.pcap.Capture)
    SRC_CLASSIC = 1     # a classic pcap file's records, read in place as they enter


cdef struct source:
    int kind
    const uint8_t *buf
    uint64_t buflen
    uint32_t dev
    # SRC_ARRAYS: packet k is buf[off[k]:+len[k]], time ts[k]
    const uint64_t *off
    const uint32_t *len
    const uint64_t *ts
    uint64_t n
    uint64_t k
    # SRC_CLASSIC: the next record header is at pos
    uint64_t pos
    uint64_t mul         # ns per unit of the timestamp fraction (1 or 1000)
    uint32_t maxcap
    int swapped
    uint64_t nread       # records read
    int err              # 1: truncated record at err_pos; 2: caplen err_caplen
    uint64_t err_pos
    uint64_t err_caplen
    # the next packet, if has
    int has
    uint64_t h_off
    uint32_t h_len
    uint64_t h_ts


cdef inline uint32_t rd32(const uint8_t *b, int swapped) noexcept nogil:
    if swapped:
        return (<uint32_t>b[0] << 24) | (<uint32_t>b[1] << 16) | (<uint32_t>b[2] << 8) | b[3]
    return (<uint32_t>b[3] << 24) | (<uint32_t>b[2] << 16) | (<uint32_t>b[1] << 8) | b[0]


cdef extern from *:
    """
    #define MB_PREFETCH(p) __builtin_prefetch((const void *)(p))
    """
    void MB_PREFETCH(const void *p) nogil

# How far ahead of the record being read a classic pcap is prefetched: the
# walk from record to record is a chain of dependent loads, which the
# hardware prefetcher does not run far enough ahead of (page boundaries).
cdef enum:
    READ_AHEAD = 4096


cdef inline int source_next(source *s) noexcept nogil:
    """Load the place and time of s's next packet (has = 0 at the end).
    -1 on a bad classic record (has = 0, err set)."""
    cdef uint64_t caplen, pos = s.pos
    if s.kind == SRC_ARRAYS:
        if s.k < s.n:
            if s.off[s.k] < s.buflen and s.buflen - s.off[s.k] > READ_AHEAD:
                MB_PREFETCH(s.buf + s.off[s.k] + READ_AHEAD)
            s.h_off = s.off[s.k]
            s.h_len = s.len[s.k]
            s.h_ts = s.ts[s.k]
            s.k += 1
            s.has = 1
        else:
            s.has = 0
        return 0
    s.has = 0
    if pos >= s.buflen:
        return 0
    if s.buflen - pos > READ_AHEAD:
        MB_PREFETCH(s.buf + pos + READ_AHEAD)
    if s.buflen - pos < 16:
        s.err = 1
        s.err_pos = pos
        return -1
    caplen = rd32(s.buf + pos + 8, s.swapped)
    if caplen > s.maxcap:
        s.err = 2
        s.err_caplen = caplen
        return -1
    if caplen > s.buflen - pos - 16:
        s.err = 1
        s.err_pos = pos
        return -1
    s.h_off = pos + 16
    s.h_len = <uint32_t>caplen
    s.h_ts = (<uint64_t>rd32(s.buf + pos, s.swapped) * 1000000000ULL
              + <uint64_t>rd32(s.buf + pos + 4, s.swapped) * s.mul)
    s.pos = pos + 16 + caplen
    s.nread += 1
    s.has = 1
    return 0


cdef inline int pick_input(source *src, uint32_t nin) noexcept nogil:
    """The input whose next packet is earliest (ties: the earlier input), or -1."""
    cdef int best = -1
    cdef uint32_t i
    cdef uint64_t t = 0
    for i in range(nin):
        if src[i].has and (best < 0 or src[i].h_ts < t):
            best = i
            t = src[i].h_ts
    return best


cdef uint64_t now_ns() noexcept nogil:
    cdef timespec ts
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return <uint64_t>ts.tv_sec * 1000000000ULL + <uint64_t>ts.tv_nsec


cdef void host_push(void *host, mb_elem *e, mb_packet **pkts, uint32_t n) noexcept with gil:
    (<Engine>host)._python_push(e, pkts, n)


cdef class Engine:
    """One engine instance over one plan.

    Engine(plan_bytes, packets=0, buffer_size=2048+128, headroom=128)
    """

    cdef mb_engine *eng
    cdef void *arena
    cdef bytes plan
    cdef dict python_elements
    cdef object failure
    cdef int failed
    cdef object packet_class
    # Handlers: requests from other threads wait in `mailbox` until the
    # running loop reaches the end of a pass (`pending` tells it to look).
    cdef int pending
    cdef int running
    cdef object mailbox
    cdef object lock

    def __cinit__(self, bytes plan, uint32_t packets=0, uint32_t buffer_size=10240,
                  uint32_t headroom=128):
        cdef char err[192]
        cdef mb_engine_opts opts
        cdef uint64_t size
        self.eng = NULL
        self.arena = NULL
        self.plan = plan
        self.python_elements = {}
        self.failure = None
        self.failed = 0
        self.pending = 0
        self.running = 0
        self.mailbox = []
        self.lock = threading.Lock()
        opts.npkts = packets
        opts.bufsize = buffer_size
        opts.headroom = headroom
        opts.shared_plan = 0
        err[0] = 0
        size = mb_engine_size(<const uint8_t *>plan, <uint32_t>len(plan), &opts,
                              mb_kernels, mb_nkernels, err, sizeof(err))
        if size == 0:
            raise EngineError(err.decode(errors="replace"))
        if posix_memalign(&self.arena, 64, size) != 0:
            raise MemoryError(f"engine arena of {size} bytes")
        self.eng = mb_engine_init(self.arena, size, <const uint8_t *>plan,
                                  <uint32_t>len(plan), &opts, mb_kernels, mb_nkernels,
                                  err, sizeof(err))
        if self.eng == NULL:
            raise EngineError(err.decode(errors="replace"))
        self.eng.host = <void *>self
        self.eng.host_push = host_push

    def __dealloc__(self):
        if self.arena != NULL:
            free(self.arena)

    # -- set-up ------------------------------------------------------------

    def attach(self, uint32_t index, element):
        """Run Python element `element` for plan element `index`."""
        from middlebox.element import Packet
        self.packet_class = Packet
        if index >= self.eng.nelem:
            raise IndexError(index)
        self.python_elements[index] = element

    @property
    def graph_name(self):
        return self.eng.graph_name.decode()

    @property
    def max_packet(self):
        return mb_max_len(self.eng)

    @property
    def pool(self):
        return {"packets": self.eng.npkts, "free": self.eng.nfree,
                "buffer_size": self.eng.bufsize, "headroom": self.eng.headroom,
                "alloc_failed": self.eng.alloc_failed}

    def device_names(self):
        return [self.eng.devs[i].name.decode() for i in range(self.eng.ndev)]

    # -- Python elements ----------------------------------------------------

    cdef void _python_push(self, mb_elem *e, mb_packet **pkts, uint32_t n):
        cdef uint32_t i, port, length
        cdef mb_packet *p
        cdef const uint8_t[:] view
        cdef list batch
        cdef list used
        if self.failed:
            for i in range(n):
                mb_drop(e, pkts[i])
            return
        element = self.python_elements.get(e.index)
        Packet = self.packet_class
        batch = []
        for i in range(n):
            p = pkts[i]
            batch.append(Packet((<char *>p.data)[:p.len], p.port, p.ts_ns, p.paint))
        used = [False] * n
        ids = {id(obj): i for i, obj in enumerate(batch)}
        try:
            if element is None:
                raise EngineError("no Python object attached")
            result = element.process(batch)
            for item in (result or ()):
                port_obj, obj = item
                port = port_obj
                i = ids.get(id(obj), n)
                if i < n and not used[i]:
                    p = pkts[i]
                    used[i] = True
                else:
                    p = mb_alloc(self.eng)
                    if p == NULL:
                        e.dropped += 1
                        continue
                    e.created += 1
                    if i < n:
                        p.ts_ns = pkts[i].ts_ns
                        p.seq = pkts[i].seq
                view = memoryview(obj.data).cast("B")
                length = view.shape[0]
                if length > mb_max_len(self.eng):
                    mb_drop(e, p)
                    continue
                p.data = p.head + self.eng.headroom
                if length:
                    memcpy(p.data, &view[0], length)
                p.len = length
                p.nh = NULL
                p.paint = obj.paint
                mb_emit(e, port, p)
        except Exception as ex:  # user code: stop the run, report one line
            self.failed = 1
            self.failure = f"element '{e.name.decode()}': {type(ex).__name__}: {ex}"
        for i in range(n):
            if not used[i]:
                mb_drop(e, pkts[i])

    cdef _check_failure(self):
        if self.failed:
            msg = self.failure
            self.failed = 0
            self.failure = None
            raise EngineError(msg)

    # -- handlers ----------------------------------------------------------------

    def between_passes(self, kind, uint32_t elem, payload, timeout=10.0):
        """Run a control message (kind "control", payload bytes) or a query
        (kind "query", payload an int) on element `elem` at the end of a
        pass: now if the engine is idle, else when the running loop gets
        there. Returns the query's bytes, or None; raises EngineError."""
        req = [kind, elem, payload, threading.Event(), None, None]
        with self.lock:
            if not self.running:
                self._apply(req)
            else:
                self.mailbox.append(req)
                self.pending = 1
        if not req[3].wait(timeout):
            raise EngineError("the running engine did not reach the end of a pass in time")
        if req[5] is not None:
            raise EngineError(req[5])
        return req[4]

    cdef void _apply(self, list req):
        cdef bytes msg
        cdef bytearray buf
        cdef uint32_t n
        kind, elem, payload = req[0], req[1], req[2]
        if kind == "control":
            msg = bytes(payload)
            if mb_engine_control(self.eng, elem, <const uint8_t *>msg, <uint32_t>len(msg)) != 0:
                req[5] = self.eng.err.decode(errors="replace")
        else:
            buf = bytearray(1 << 22)
            n = mb_engine_query(self.eng, elem, <uint32_t>payload, <uint8_t *><char *>buf,
                                <uint32_t>len(buf))
            req[4] = bytes(buf[:n])
        req[3].set()

    cdef void _service(self) noexcept with gil:
        with self.lock:
            reqs, self.mailbox = self.mailbox, []
            self.pending = 0
            for req in reqs:
                self._apply(req)

    cdef _start(self):
        with self.lock:
            self.running = 1

    cdef _stop(self):
        with self.lock:
            self.running = 0
            reqs, self.mailbox = self.mailbox, []
            self.pending = 0
            for req in reqs:
                self._apply(req)

    # -- running over memory -------------------------------------------------

    def run_records(self, list buffers, uint16_t[:] buf_index, uint32_t[:] devs,
                    uint64_t[:] offsets, uint32_t[:] lengths,
                    uint64_t[:] timestamps, collect, bint sources=True):
        """Feed packets (packet k: buffers[buf_index[k]][offsets[k]:+lengths[k]],
        entering device devs[k] at timestamps[k]) in order, in batches of
        consecutive packets for one device, then let sources run dry.

        collect: device indices whose transmitted packets are returned as
        {dev: (bytes, offsets, lengths, timestamps)}; packets sent on other
        devices are counted and freed. Returns (outputs, oversize) where
        oversize counts input packets too large for a buffer, per device.
        (Engine.run uses run_inputs, which merges inputs itself.)
        """
        cdef uint64_t total = lengths.shape[0]
        cdef uint32_t ndev = self.eng.ndev
        cdef uint32_t nbuf = len(buffers)
        cdef const uint8_t **bufp = <const uint8_t **>malloc((nbuf + 1) * sizeof(uint8_t *))
        cdef uint64_t *buflen = <uint64_t *>malloc((nbuf + 1) * sizeof(uint64_t))
        cdef uint64_t *oversize = <uint64_t *>calloc(ndev + 1, sizeof(uint64_t))
        cdef sink *sinks = NULL
        cdef mb_packet *batch[MB_BATCH]
        cdef uint64_t k = 0
        cdef uint32_t nb, d, dev, i, maxlen = mb_max_len(self.eng)
        cdef uint32_t made = 0
        cdef int oom = 0
        cdef const uint8_t[:] view
        cdef bint pull = sources
        if not (bufp and buflen and oversize):
            free(bufp); free(buflen); free(oversize)
            raise MemoryError()
        if (buf_index.shape[0] != total or devs.shape[0] != total or
                offsets.shape[0] != total or timestamps.shape[0] != total):
            free(bufp); free(buflen); free(oversize)
            raise ValueError("record arrays differ in length")
        keep = []
        try:
            sinks = sinks_new(ndev)
            for i in range(nbuf):
                view = memoryview(buffers[i]).cast("B")
                keep.append(view)
                bufp[i] = &view[0] if view.shape[0] else NULL
                buflen[i] = view.shape[0]
            for d in collect:
                if d < ndev:
                    sinks[d].mode = SINK_MEMORY
            self._start()
            try:
                with nogil:
                    while (k < total or pull) and not self.failed and not oom:
                        # Input first; once it is used up, poll until sources
                        # and queues (which emit from pull) have nothing left.
                        nb = 0
                        if k < total:
                            dev = devs[k]
                            self.eng.now_ns = timestamps[k]
                            while k < total and devs[k] == dev and nb < MB_BATCH:
                                if (lengths[k] > maxlen or buf_index[k] >= nbuf or
                                        offsets[k] > buflen[buf_index[k]] or
                                        lengths[k] > buflen[buf_index[k]] - offsets[k]):
                                    if dev < ndev:
                                        oversize[dev] += 1
                                    k += 1
                                    continue
                                batch[nb] = mb_alloc(self.eng)
                                if batch[nb] == NULL:
                                    break
                                memcpy(batch[nb].data, bufp[buf_index[k]] + offsets[k],
                                       lengths[k])
                                batch[nb].len = lengths[k]
                                batch[nb].ts_ns = timestamps[k]
                                nb += 1
                                k += 1
                            if nb:
                                mb_engine_rx(self.eng, dev, batch, nb)
                        if pull:
                            made = mb_engine_pull(self.eng)
                            if nb == 0 and k >= total and made == 0:
                                break
                        mb_engine_run(self.eng)
                        if self.pending:
                            self._service()
                        if sinks_drain(self.eng, sinks, ndev) != 0:
                            oom = 1
            finally:
                self._stop()
            if oom:
                raise MemoryError("collecting output packets")
            self._check_failure()
            result = {d: sink_collected(&sinks[d]) for d in range(ndev)
                      if sinks[d].mode == SINK_MEMORY}
            over = {d: oversize[d] for d in range(ndev) if oversize[d]}
            return result, over
        finally:
            sinks_free(sinks, ndev)
            free(bufp); free(buflen); free(oversize)

    def run_inputs(self, list inputs, dict outputs, bint sources=True):
        """Run captures through the graph, then let sources run dry.

        inputs, one tuple per capture:
          ("arrays", data, offsets, lengths, timestamps, dev): packet k is
            data[offsets[k]:+lengths[k]] (offsets uint64, lengths uint32,
            timestamps uint64 ns: any C-contiguous buffers);
          ("classic", data, swapped, nanos, max_caplen, dev): data is a whole
            classic pcap file (its 24-byte header first); records are read
            in place as packets enter. A bad record stops the run (after the
            pass under way) with ReadError.
        Inputs are merged as they go: the next packet is the earliest head,
        ties to the earlier input, each input in its own order. Packets
        enter in batches of up to MB_BATCH consecutive ones for one device.

        outputs: {dev: None} collects a device's packets in memory;
        {dev: (fd, format, header)} writes them to fd as capture records
        (format 0 classic pcap in us, 1 in ns, 2 pcapng enhanced packet
        blocks on interface 0), after the header bytes, one large write at
        a time; other devices' packets are counted and freed.

        Returns (collected {dev: (data, offsets, lengths, timestamps)},
        oversize {dev: input packets too large for a buffer or lying
        outside their data}, written {dev: records written}). A failed
        write raises WriteError; what was written before stays written.
        """
        cdef uint32_t nin = len(inputs)
        cdef uint32_t ndev = self.eng.ndev
        cdef source *src = <source *>calloc(nin + 1, sizeof(source))
        cdef uint64_t *oversize = <uint64_t *>calloc(ndev + 1, sizeof(uint64_t))
        cdef sink *sinks = NULL
        cdef mb_packet *batch[MB_BATCH]
        cdef mb_packet *p
        cdef uint64_t off
        cdef uint32_t nb, d, dev, i, n, maxlen = mb_max_len(self.eng)
        cdef uint32_t made = 0
        cdef int cur = -1, stop = 0, oom = 0
        cdef source *s
        cdef const uint8_t[::1] view
        cdef const uint64_t[::1] offs, stamps
        cdef const uint32_t[::1] lens
        cdef bytes header
        cdef bint pull = sources
        if src == NULL or oversize == NULL:
            free(src); free(oversize)
            raise MemoryError()
        keep = []
        try:
            sinks = sinks_new(ndev)
            for i in range(nin):
                spec = inputs[i]
                view = memoryview(spec[1]).cast("B")
                s = &src[i]
                s.buf = &view[0] if view.shape[0] else NULL
                s.buflen = view.shape[0]
                s.dev = spec[5]
                if spec[0] == "arrays":
                    offs = spec[2]
                    lens = spec[3]
                    stamps = spec[4]
                    keep.append((view, offs, lens, stamps))
                    if not (offs.shape[0] == lens.shape[0] == stamps.shape[0]):
                        raise ValueError("offsets, lengths and timestamps differ in length")
                    s.kind = SRC_ARRAYS
                    s.n = lens.shape[0]
                    if s.n:
                        s.off = &offs[0]
                        s.len = &lens[0]
                        s.ts = &stamps[0]
                elif spec[0] == "classic":
                    keep.append(view)
                    s.kind = SRC_CLASSIC
                    s.swapped = bool(spec[2])
                    s.mul = 1 if spec[3] else 1000
                    s.maxcap = spec[4]
                    s.pos = 24
                else:
                    raise ValueError(f"unknown input kind {spec[0]!r}")
            for d_, spec in outputs.items():
                d = d_
                if d >= ndev:
                    continue
                if spec is None:
                    sinks[d].mode = SINK_MEMORY
                    continue
                fd_, fmt_, header = spec
                if fmt_ not in (FMT_PCAP_US, FMT_PCAP_NS, FMT_PCAPNG):
                    raise ValueError(f"unknown capture record format {fmt_}")
                sinks[d].mode = SINK_FILE
                sinks[d].fd = fd_
                sinks[d].fmt = fmt_
                sinks[d].cap = SINK_FILE_BUFFER + maxlen + 64 + len(header)
                sinks[d].data = <uint8_t *>malloc(sinks[d].cap)
                if sinks[d].data == NULL:
                    raise MemoryError()
                memcpy(sinks[d].data, <const char *>header, len(header))
                sinks[d].used = len(header)
            self._start()
            try:
                with nogil:
                    for i in range(nin):
                        if source_next(&src[i]) != 0:
                            stop = 1
                    cur = pick_input(src, nin)
                    while (cur >= 0 or pull) and not self.failed and not stop:
                        nb = 0
                        if cur >= 0:
                            s = &src[cur]
                            dev = s.dev
                            self.eng.now_ns = s.h_ts
                            while nb < MB_BATCH:
                                n = s.h_len
                                off = s.h_off
                                if n > maxlen or off > s.buflen or n > s.buflen - off:
                                    if dev < ndev:
                                        oversize[dev] += 1
                                else:
                                    p = mb_alloc(self.eng)
                                    if p == NULL:
                                        break       # the pool is empty: retry next pass
                                    memcpy(p.data, s.buf + off, n)
                                    p.len = n
                                    p.ts_ns = s.h_ts
                                    batch[nb] = p
                                    nb += 1
                                if source_next(s) != 0:
                                    stop = 1        # after this pass
                                if nin > 1:
                                    cur = pick_input(src, nin)
                                elif not s.has:
                                    cur = -1
                                if stop or cur < 0:
                                    break
                                s = &src[cur]
                                if s.dev != dev:
                                    break
                            if nb:
                                mb_engine_rx(self.eng, dev, batch, nb)
                        if pull and not stop:
                            made = mb_engine_pull(self.eng)
                            if nb == 0 and cur < 0 and made == 0:
                                break
                        mb_engine_run(self.eng)
                        if self.pending:
                            self._service()
                        if sinks_drain(self.eng, sinks, ndev) != 0:
                            oom = 1
                            break
                    # what was processed is written, even if an input was bad
                    if not oom:
                        for d in range(ndev):
                            if sinks[d].mode == SINK_FILE and sink_flush(&sinks[d]) != 0:
                                break
            finally:
                self._stop()
            for d in range(ndev):
                if sinks[d].mode == SINK_FILE and sinks[d].err:
                    raise WriteError(d, max(sinks[d].err, 0), sinks[d].count + 1)
            if oom:
                raise MemoryError("collecting output packets")
            for i in range(nin):
                if src[i].err == 1:
                    raise ReadError(i, ("truncated", src[i].err_pos))
                if src[i].err == 2:
                    raise ReadError(i, ("caplen", src[i].nread + 1, src[i].err_caplen))
            self._check_failure()
            result = {d: sink_collected(&sinks[d]) for d in range(ndev)
                      if sinks[d].mode == SINK_MEMORY}
            over = {d: oversize[d] for d in range(ndev) if oversize[d]}
            written = {d: sinks[d].count for d in range(ndev) if sinks[d].mode == SINK_FILE}
            return result, over, written
        finally:
            sinks_free(sinks, ndev)
            free(src); free(oversize)

    def run_sources(self, uint64_t max_packets=0):
        """Poll sources until they stop (or max_packets made), running the
        graph and discarding what devices send. Returns (made, seconds)."""
        cdef uint64_t made = 0, t0 = 0, t1 = 0
        self._start()
        try:
            self._run_sources(max_packets, &made, &t0, &t1)
        finally:
            self._stop()
        self._check_failure()
        return made, (t1 - t0) / 1e9

    cdef void _run_sources(self, uint64_t max_packets, uint64_t *made_out, uint64_t *t0_out,
                           uint64_t *t1_out):
        cdef uint64_t made = 0, t0, t1
        cdef uint32_t m, d, ndev = self.eng.ndev
        cdef mb_packet *txb[256]
        with nogil:
            t0 = now_ns()
            while not self.failed:
                # Sources stamp packets with the engine clock and stateful
                # elements age flows by it: one clock read per pass.
                self.eng.now_ns = now_ns()
                m = mb_engine_pull(self.eng)
                if m == 0:
                    break
                made += m
                mb_engine_run(self.eng)
                if self.pending:
                    self._service()
                for d in range(ndev):
                    while True:
                        m = mb_engine_tx(self.eng, d, txb, 256)
                        if m == 0:
                            break
                        mb_free_batch(self.eng, txb, m)
                if max_packets and made >= max_packets:
                    break
            t1 = now_ns()
        made_out[0] = made
        t0_out[0] = t0
        t1_out[0] = t1

    # -- running on live interfaces (runtime/live.c) ---------------------------

    def run_live(self, list ports, double duration=0.0, bint busy_poll=False,
                 int poll_ms=0, bint signals=True):
        """Receive from and send to LivePorts until SIGINT/SIGTERM, `duration`
        seconds (0: no limit), live_stop() or a Python element's failure.
        The loop runs in C without the GIL; handler requests are served
        between passes. Returns the seconds it ran."""
        return _run_live(self, ports, duration, busy_poll, poll_ms, signals)

    # -- counters --------------------------------------------------------------

    def stats(self):
        """[{name, kernel, in, out, dropped, created, ports, xstat}] in plan order."""
        cdef uint32_t i, j
        cdef mb_elem *e
        out = []
        for i in range(self.eng.nelem):
            e = &self.eng.elems[i]
            ports = [e.outs[j].count for j in range(e.nout)]
            out.append({
                "name": e.name.decode(), "kernel": e.k.name.decode(),
                "in": e.in_, "out": sum(ports) + e.sent, "dropped": e.dropped,
                "created": e.created, "held": e.held, "ports": ports,
                "xstat": [e.xstat[j] for j in range(MB_XSTATS)],
            })
        return out

    def device_stats(self):
        cdef uint32_t i
        return [{"name": self.eng.devs[i].name.decode(), "rx": self.eng.devs[i].rx,
                 "rx_dropped": self.eng.devs[i].rx_dropped, "tx": self.eng.devs[i].sent}
                for i in range(self.eng.ndev)]


# --- capture files: classic pcap indexing, plan checksum -------------------------

cdef object owned_array(void *data, uint64_t n, uint32_t itemsize, str fmt):
    """A numpy array of n items over malloc'd data, which it takes over."""
    cdef cvarray owner
    import numpy as np
    if n == 0:
        free(data)
        return np.empty(0, dtype=np.uint64 if itemsize == 8 else np.uint32)
    owner = cvarray(shape=(n,), itemsize=itemsize, format=fmt, mode="c",
                    allocate_buffer=False)
    owner.data = <char *>data
    owner.callback_free_data = free
    return np.asarray(owner)


def index_classic(data, bint swapped, bint nanos, uint32_t max_caplen):
    """Index the records of a classic pcap file (data: the whole file, its
    24-byte header included) in one walk over their headers.

    swapped: big-endian fields; nanos: the fraction is in ns (else us).
    Returns (offsets uint64, lengths uint32, timestamps uint64 ns, None),
    or (None, None, None, problem) where problem is ("truncated", byte
    position of the record) or ("caplen", packet number, captured length)
    for the first record that is wrong.
    """
    cdef const uint8_t[::1] view = memoryview(data).cast("B")
    cdef source s
    cdef uint64_t n = 0, cap = 0, ncap, guess = 1024
    cdef uint64_t *offs = NULL
    cdef uint32_t *lens = NULL
    cdef uint64_t *stamps = NULL
    cdef void *a
    cdef void *b
    cdef void *c
    cdef int oom = 0
    memset(&s, 0, sizeof(s))
    s.kind = SRC_CLASSIC
    s.buf = &view[0] if view.shape[0] else NULL
    s.buflen = view.shape[0]
    s.swapped = swapped
    s.mul = 1 if nanos else 1000
    s.maxcap = max_caplen
    s.pos = 24
    with nogil:
        if s.buflen > 40:    # first guess: every record as long as the first
            guess = (s.buflen - 24) // (16 + <uint64_t>rd32(s.buf + 32, swapped)) + 16
        while source_next(&s) == 0 and s.has:
            if n == cap:
                ncap = cap * 2 if cap else guess
                a = realloc(offs, ncap * 8)
                b = realloc(lens, ncap * 4)
                c = realloc(stamps, ncap * 8)
                if a != NULL: offs = <uint64_t *>a
                if b != NULL: lens = <uint32_t *>b
                if c != NULL: stamps = <uint64_t *>c
                if a == NULL or b == NULL or c == NULL:
                    oom = 1
                    break
                cap = ncap
            offs[n] = s.h_off
            lens[n] = s.h_len
            stamps[n] = s.h_ts
            n += 1
    if oom or s.err:
        free(offs); free(lens); free(stamps)
        if oom:
            raise MemoryError()
        if s.err == 1:
            return None, None, None, ("truncated", s.err_pos)
        return None, None, None, ("caplen", s.nread + 1, s.err_caplen)
    # arrays of exactly n items (shrinking in place does not move them)
    if n and n < cap:
        offs = <uint64_t *>realloc(offs, n * 8)
        lens = <uint32_t *>realloc(lens, n * 4)
        stamps = <uint64_t *>realloc(stamps, n * 8)
    return (owned_array(offs, n, 8, "Q"), owned_array(lens, n, 4, "I"),
            owned_array(stamps, n, 8, "Q"), None)


def plan_checksum(data):
    """The checksum a plan header carries (FNV-1a), by the engine's own code."""
    cdef const uint8_t[::1] view = memoryview(data).cast("B")
    if view.shape[0] == 0:
        return mb_plan_checksum(NULL, 0)
    return mb_plan_checksum(&view[0], <uint32_t>view.shape[0])


# --- live interfaces (runtime/live.c, docs/live.md) ----------------------------

cdef extern from "live.h":
    enum: MB_LIVE_PACKET
    enum: MB_LIVE_TAP
    enum: MB_LIVE_RING_V3
    enum: MB_LIVE_RING_V2
    enum: MB_LIVE_MAX_PORTS

    struct mb_live_counters:
        uint64_t rx
        uint64_t rx_bytes
        uint64_t tx
        uint64_t tx_bytes
        uint64_t tx_errors
        uint64_t tx_dropped
        uint64_t oversize
        uint64_t csum_fixed
        uint64_t kernel_drops
        uint64_t kernel_freezes

    struct mb_live_port:
        int kind
        int fd
        int fd2
        int ifindex
        uint32_t mtu
        uint32_t dev
        int rx
        int tx
        int created
        int was_up
        uint32_t fanout_id
        int in_fanout
        char ifname[16]
        mb_live_counters c

    struct mb_live_cfg:
        int kind
        const char *ifname
        uint32_t dev
        int rx
        int tx
        int ring_version
        uint32_t ring_bytes
        uint32_t retire_ms
        int fanout
        int fanout_join
        uint32_t fanout_id

    struct mb_live_hooks:
        int *pending
        void (*service)(void *arg) noexcept
        int *failed
        void *arg

    struct mb_live_opts:
        uint64_t duration_ns
        int busy_poll
        int poll_ms

    int mb_live_open(mb_live_port *p, const mb_live_cfg *cfg, char *err, uint32_t errlen)
    void mb_live_close(mb_live_port *p)
    void mb_live_kernel_stats(mb_live_port *p)
    int mb_live_run(mb_engine *eng, mb_live_port **ports, uint32_t nports,
                    const mb_live_opts *o, const mb_live_hooks *h, char *err,
                    uint32_t errlen) nogil
    void mb_live_signals_install()
    void mb_live_signals_restore()
    void mb_live_stop()
    int mb_live_stopping()


cdef class LivePort:
    """One graph device bound to a Linux interface (AF_PACKET ring) or a TAP.

    LivePort(kind "packet"|"tap", ifname, dev index, rx, tx, ring "v3"|"v2",
             ring_bytes=0, retire_ms=0, fanout=False, fanout_id=None)
    fanout: join PACKET_FANOUT_HASH group fanout_id, or make a new one (None).
    Raises EngineError with one line when the kernel refuses.
    """

    cdef mb_live_port p
    cdef public str device
    cdef int opened

    def __cinit__(self, str kind, str ifname, uint32_t dev, bint rx, bint tx,
                  str ring="v3", uint32_t ring_bytes=0, uint32_t retire_ms=0,
                  bint fanout=False, fanout_id=None, str device=""):
        cdef mb_live_cfg cfg
        cdef char err[192]
        cdef bytes name = ifname.encode()
        self.opened = 0
        self.device = device
        if kind not in ("packet", "tap"):
            raise ValueError(f"unknown port kind {kind!r}")
        if ring not in ("v3", "v2"):
            raise ValueError(f"unknown ring {ring!r} (v3 or v2)")
        cfg.kind = MB_LIVE_TAP if kind == "tap" else MB_LIVE_PACKET
        cfg.ifname = name
        cfg.dev = dev
        cfg.rx = rx
        cfg.tx = tx
        cfg.ring_version = MB_LIVE_RING_V2 if ring == "v2" else MB_LIVE_RING_V3
        cfg.ring_bytes = ring_bytes
        cfg.retire_ms = retire_ms
        cfg.fanout = fanout
        cfg.fanout_join = fanout_id is not None
        cfg.fanout_id = fanout_id if fanout_id is not None else 0
        err[0] = 0
        if mb_live_open(&self.p, &cfg, err, sizeof(err)) != 0:
            raise EngineError(err.decode(errors="replace"))
        self.opened = 1

    def __dealloc__(self):
        if self.opened:
            mb_live_close(&self.p)

    def close(self):
        """Unmap the ring and close the sockets (a TAP we made goes away)."""
        if self.opened:
            mb_live_close(&self.p)
            self.opened = 0

    @property
    def kind(self):
        return "tap" if self.p.kind == MB_LIVE_TAP else "packet"

    @property
    def ifname(self):
        return self.p.ifname.decode()

    @property
    def dev(self):
        return self.p.dev

    @property
    def fanout_id(self):
        """The PACKET_FANOUT group joined, or None."""
        return self.p.fanout_id if self.p.in_fanout else None

    @property
    def created(self):
        return bool(self.p.created)

    @property
    def was_up(self):
        return bool(self.p.was_up)

    @property
    def mtu(self):
        return self.p.mtu

    def counters(self):
        """Port counters; reads (and folds in) the kernel's ring drops."""
        if self.opened:
            mb_live_kernel_stats(&self.p)
        c = self.p.c
        return {"rx": c.rx, "rx_bytes": c.rx_bytes, "tx": c.tx, "tx_bytes": c.tx_bytes,
                "tx_errors": c.tx_errors, "tx_dropped": c.tx_dropped,
                "oversize": c.oversize, "csum_fixed": c.csum_fixed,
                "kernel_drops": c.kernel_drops, "kernel_freezes": c.kernel_freezes}


def live_signals(bint install):
    """Install (True) or restore (False) the SIGINT/SIGTERM handlers that
    stop a live run; installs nest."""
    if install:
        mb_live_signals_install()
    else:
        mb_live_signals_restore()


def live_stop():
    """Ask a running live loop (any engine in this process) to stop."""
    mb_live_stop()


def live_stopping():
    return bool(mb_live_stopping())


cdef void live_service(void *arg) noexcept with gil:
    (<Engine>arg)._service()


def _run_live(Engine self, list ports, double duration=0.0, bint busy_poll=False,
              int poll_ms=0, bint signals=True):
    """Drive the engine from live ports until SIGINT/SIGTERM, `duration`
    seconds, live_stop() or a Python element's failure. Returns seconds."""
    cdef mb_live_port *arr[MB_LIVE_MAX_PORTS]
    cdef mb_live_opts opts
    cdef mb_live_hooks hooks
    cdef char err[192]
    cdef int rc = 0
    cdef uint32_t n = len(ports), i
    cdef LivePort lp
    cdef uint64_t t0, t1
    if n > MB_LIVE_MAX_PORTS:
        raise EngineError(f"at most {MB_LIVE_MAX_PORTS} live devices")
    for i in range(n):
        lp = ports[i]
        if not lp.opened:
            raise EngineError(f"{lp.ifname}: port is closed")
        if lp.p.dev >= self.eng.ndev:
            raise EngineError(f"{lp.ifname}: no device {lp.p.dev} in the graph")
        arr[i] = &lp.p
    opts.duration_ns = <uint64_t>(duration * 1e9) if duration > 0 else 0
    opts.busy_poll = busy_poll
    opts.poll_ms = poll_ms
    hooks.pending = &self.pending
    hooks.failed = &self.failed
    hooks.service = live_service
    hooks.arg = <void *>self
    err[0] = 0
    self._start()
    if signals:
        mb_live_signals_install()
    try:
        with nogil:
            t0 = now_ns()
            rc = mb_live_run(self.eng, arr, n, &opts, &hooks, err, sizeof(err))
            t1 = now_ns()
    finally:
        if signals:
            mb_live_signals_restore()
        self._stop()
    self._check_failure()
    if rc != 0:
        raise EngineError(err.decode(errors="replace"))
    return (t1 - t0) / 1e9

