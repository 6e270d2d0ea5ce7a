# cython: boundscheck=False, wraparound=False, cdivision=True
"""Host side of the engine: owns the arena (packet pool included), feeds
batches from memory, drains device queues, and bridges Python elements.

Everything per-packet happens in C with the GIL released; Python is called
only for Python elements (with the GIL taken back for their batch).
"""

from libc.stdint cimport uint8_t, uint16_t, uint32_t, uint64_t, int64_t
from libc.stdlib cimport free, malloc, realloc
from libc.string cimport memcpy
from posix.stdlib cimport posix_memalign
from posix.time cimport clock_gettime, timespec, CLOCK_MONOTONIC

import threading

import numpy as np
cimport numpy as cnp

cnp.import_array()


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


# Output collected for one device while running: packet bytes and records.
cdef struct outbuf:
    uint8_t *data
    uint64_t used
    uint64_t cap
    uint64_t *rec        # (offset, length, timestamp) triples
    uint64_t nrec
    uint64_t reccap


cdef int outbuf_add(outbuf *o, mb_packet *p) noexcept nogil:
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

    def run_records(self, list buffers, cnp.uint16_t[:] buf_index, cnp.uint32_t[:] devs,
                    cnp.uint64_t[:] offsets, cnp.uint32_t[:] lengths,
                    cnp.uint64_t[:] timestamps, collect, bint sources=True):
        """Feed packets (packet k: buffers[buf_index[k]][offsets[k]:+lengths[k]],
        entering device devs[k] at timestamps[k]) in order, in batches of
        consecutive packets for one device, then let sources run dry.

        collect: device indices whose transmitted packets are returned as
        {dev: (bytes, offsets, lengths, timestamps)}; packets sent on other
        devices are counted and freed. Returns (outputs, oversize) where
        oversize counts input packets too large for a buffer, per device.
        """
        cdef uint64_t total = lengths.shape[0]
        cdef uint32_t ndev = self.eng.ndev
        cdef uint32_t nbuf = len(buffers)
        cdef const uint8_t **bufp = <const uint8_t **>malloc((nbuf + 1) * sizeof(uint8_t *))
        cdef uint64_t *buflen = <uint64_t *>malloc((nbuf + 1) * sizeof(uint64_t))
        cdef outbuf *outs = <outbuf *>malloc((ndev + 1) * sizeof(outbuf))
        cdef uint8_t *want = <uint8_t *>malloc(ndev + 1)
        cdef uint64_t *oversize = <uint64_t *>malloc((ndev + 1) * sizeof(uint64_t))
        cdef mb_packet *batch[MB_BATCH]
        cdef mb_packet *txb[256]
        cdef uint64_t k = 0, j
        cdef uint32_t nb, d, dev, m, i, maxlen = mb_max_len(self.eng)
        cdef uint32_t made = 0
        cdef int oom = 0
        cdef const uint8_t[:] view
        cdef bint pull = sources
        if not (bufp and buflen and outs and want and oversize):
            free(bufp); free(buflen); free(outs); free(want); free(oversize)
            raise MemoryError()
        keep = []
        for i in range(nbuf):
            view = memoryview(buffers[i]).cast("B")
            keep.append(view)
            bufp[i] = &view[0] if view.shape[0] else NULL
            buflen[i] = view.shape[0]
        for d in range(ndev):
            outs[d].data = NULL; outs[d].used = 0; outs[d].cap = 0
            outs[d].rec = NULL; outs[d].nrec = 0; outs[d].reccap = 0
            want[d] = 0
            oversize[d] = 0
        for d in collect:
            if d < ndev:
                want[d] = 1
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
                            memcpy(batch[nb].data, bufp[buf_index[k]] + offsets[k], lengths[k])
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
                    for d in range(ndev):
                        while True:
                            m = mb_engine_tx(self.eng, d, txb, 256)
                            if m == 0:
                                break
                            for i in range(m):
                                if want[d] and not oom:
                                    if outbuf_add(&outs[d], txb[i]) != 0:
                                        oom = 1
                                mb_free(self.eng, txb[i])
            if oom:
                raise MemoryError("collecting output packets")
            self._check_failure()
            result = {}
            for d in range(ndev):
                if want[d]:
                    data = (<char *>outs[d].data)[:outs[d].used] if outs[d].used else b""
                    rec = np.empty((outs[d].nrec, 3), dtype=np.uint64)
                    for j in range(outs[d].nrec):
                        rec[j, 0] = outs[d].rec[j * 3]
                        rec[j, 1] = outs[d].rec[j * 3 + 1]
                        rec[j, 2] = outs[d].rec[j * 3 + 2]
                    result[d] = (data, rec[:, 0].copy(), rec[:, 1].astype(np.uint32),
                                 rec[:, 2].copy())
            over = {d: oversize[d] for d in range(ndev) if oversize[d]}
            return result, over
        finally:
            self._stop()
            for d in range(ndev):
                free(outs[d].data)
                free(outs[d].rec)
            free(bufp); free(buflen); free(outs); free(want); free(oversize)

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
        cdef uint32_t m, d, i, ndev = self.eng.ndev
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
                        for i in range(m):
                            mb_free(self.eng, txb[i])
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

