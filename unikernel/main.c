/*
 * main.c - the guest: set the engine up over the plan linked into the
 * image, bind its logical devices to virtio NICs (plan device order, NICs
 * in ascending MMIO address), then poll forever, as runtime/_engine.pyx
 * does on the host:
 *
 *   per NIC: up to 32 received frames -> mb_engine_rx
 *   mb_engine_pull (sources) -> mb_engine_run
 *   per device: mb_engine_tx -> transmit ring (notify only if asked) -> free
 *
 * The serial console takes commands: stats, quit, help.
 */
#include "clock.h"
#include "console.h"
#include "engine.h"
#include "guest.h"
#include "libc.h"
#include "platform.h"
#include "virtio_net.h"

#define MAX_NICS 16
#define PKT_BUF 2048            /* packet buffer, headroom included */
#define PKT_HEADROOM 128
#define CONSOLE_POLL_NS 1000000 /* look at the serial input once a ms */

static struct vmmio transports[MAX_NICS];
static struct vnet nics[MAX_NICS];
static struct vnet *bound[MAX_NICS];    /* per logical device, or 0 */
static uint64_t unbound_dropped[MAX_NICS];
static struct mb_engine *eng;
static uint64_t ready_ns;
static char line[128];
static uint32_t line_len;

/* --- counters --------------------------------------------------------------- */

static uint32_t digits(uint64_t v)
{
    uint32_t n = 1;
    while (v >= 10) {
        v /= 10;
        n++;
    }
    return n;
}

static uint64_t elem_out(const struct mb_elem *e)
{
    uint64_t out = e->sent;
    uint32_t j;
    for (j = 0; j < e->nout; j++)
        out += e->outs[j].count;
    return out;
}

/* The element's extra counters: "ports=1/2 created=3 count=4 held=5". */
static void print_other(const struct mb_elem *e, uint32_t i)
{
    const char *x = mb_elem_xstats[i];
    uint32_t j, k = 0;
    if (e->nout > 1) {
        con_puts("  ports=");
        for (j = 0; j < e->nout; j++)
            con_printf(j ? "/%lu" : "%lu", e->outs[j].count);
    } else if (e->created || e->held || *x) {
        con_puts(" ");
    }
    if (e->created)
        con_printf(" created=%lu", e->created);
    while (*x && k < MB_XSTATS) {
        const char *w = x;
        char name[48];
        uint32_t len = 0;
        while (*x && *x != ' ')
            x++;
        while (w < x && len + 1 < sizeof(name))
            name[len++] = *w++;
        name[len] = 0;
        con_printf(" %s=%lu", name, e->xstat[k++]);
        while (*x == ' ')
            x++;
    }
    if (e->held)
        con_printf(" held=%lu", e->held);
    con_puts("\n");
}

static void print_stats(void)
{
    uint32_t i, w[5] = {7, 5, 2, 3, 7};
    for (i = 0; i < eng->nelem; i++) {
        const struct mb_elem *e = &eng->elems[i];
        uint32_t a = (uint32_t)uk_strlen(e->name), b = (uint32_t)uk_strlen(mb_elem_class[i]);
        uint32_t c = digits(e->in), d = digits(elem_out(e)), f = digits(e->dropped);
        w[0] = a > w[0] ? a : w[0];
        w[1] = b > w[1] ? b : w[1];
        w[2] = c > w[2] ? c : w[2];
        w[3] = d > w[3] ? d : w[3];
        w[4] = f > w[4] ? f : w[4];
    }
    con_printf("%-*s  %-*s  %*s  %*s  %*s  other\n", (int)w[0], "element", (int)w[1], "class",
               (int)w[2], "in", (int)w[3], "out", (int)w[4], "dropped");
    for (i = 0; i < eng->nelem; i++) {
        const struct mb_elem *e = &eng->elems[i];
        con_printf("%-*s  %-*s  %*lu  %*lu  %*lu", (int)w[0], e->name, (int)w[1],
                   mb_elem_class[i], (int)w[2], e->in, (int)w[3], elem_out(e), (int)w[4],
                   e->dropped);
        print_other(e, i);
    }
    for (i = 0; i < eng->ndev; i++) {
        const struct mb_device *d = &eng->devs[i];
        const struct vnet *n = bound[i];
        con_printf("device %s: rx %lu (dropped %lu), tx %lu\n", d->name, d->rx,
                   d->rx_dropped + (n ? n->st.rx_bad + n->st.rx_oversize + n->st.rx_nomem : 0),
                   d->sent);
        if (n)
            con_printf("  virtio: rx %lu frames %lu bytes, bad %lu, oversize %lu, no buffer %lu;"
                       " tx %lu frames %lu bytes, ring full %lu, bad %lu; notifies %lu\n",
                       n->st.rx, n->st.rx_bytes, n->st.rx_bad, n->st.rx_oversize, n->st.rx_nomem,
                       n->st.tx, n->st.tx_bytes, n->st.tx_full, n->st.tx_bad, n->t->notifies);
        else
            con_printf("  no NIC: %lu packets dropped\n", unbound_dropped[i]);
    }
    con_printf("pool: %u packets, %u free, %lu allocation failures\n", eng->npkts, eng->nfree,
               eng->alloc_failed);
}

/* --- console commands ----------------------------------------------------------- */

static void command(const char *cmd)
{
    while (*cmd == ' ')
        cmd++;
    if (!*cmd)
        return;
    if (uk_streq(cmd, "stats")) {
        print_stats();
    } else if (uk_streq(cmd, "quit") || uk_streq(cmd, "halt")) {
        print_stats();
        con_printf("middlebox: halted after %lu ms\n", (clock_ns() - ready_ns) / 1000000);
        platform_exit(0);
    } else if (uk_streq(cmd, "help")) {
        con_puts("commands: stats (counters of every element and device), "
                 "quit (print counters, power off), help\n");
    } else {
        con_printf("unknown command '%s' (try help)\n", cmd);
    }
}

static void poll_console(void)
{
    int c;
    while ((c = con_getc()) >= 0) {
        if (c == '\r' || c == '\n') {
            if (!line_len && c == '\n')
                continue;           /* the LF of a CR LF */
            con_puts("\n");
            line[line_len] = 0;
            line_len = 0;
            command(line);
        } else if (c == 0x7f || c == 0x08) {
            if (line_len) {
                line_len--;
                con_puts("\b \b");
            }
        } else if (c >= 0x20 && c < 0x7f && line_len + 1 < sizeof(line)) {
            char ch = (char)c;
            line[line_len++] = ch;
            con_write(&ch, 1);      /* echo */
        }
    }
}

/* --- set-up and the loop ------------------------------------------------------------ */

static void print_mac(const uint8_t *m)
{
    con_printf("%02x:%02x:%02x:%02x:%02x:%02x", m[0], m[1], m[2], m[3], m[4], m[5]);
}

static uint32_t setup(void)
{
    char err[MB_ERRLEN];
    struct mb_engine_opts opts;
    uint32_t ntrans, nnet = 0, i;
    uint64_t size;
    void *arena;

    opts.npkts = 0;             /* what the plan asks for, plus slack */
    opts.bufsize = PKT_BUF;
    opts.headroom = PKT_HEADROOM;
    err[0] = 0;
    size = mb_engine_size(mb_plan, mb_plan_len, &opts, mb_kernels, mb_nkernels, err,
                          sizeof(err));
    if (!size)
        panic(err);
    { uint64_t a = clock_ns(); mb_engine_size(mb_plan, mb_plan_len, &opts, mb_kernels, mb_nkernels, err, sizeof(err));
      con_printf("dbg: second size %lu ns\n", clock_ns() - a); }
    arena = platform_alloc(size, 64);
    if (!arena)
        panic("not enough memory for the engine (give the VM more with --mem)");
    con_printf("dbg: size %lu us\n", clock_ns()/1000);
    eng = mb_engine_init(arena, size, mb_plan, mb_plan_len, &opts, mb_kernels, mb_nkernels,
                         err, sizeof(err));
    if (!eng)
        panic(err);

    con_printf("dbg: init %lu us\n", clock_ns()/1000);
    ntrans = vmmio_discover(transports, MAX_NICS);
    con_printf("dbg: discover %lu us\n", clock_ns()/1000);
    for (i = 0; i < ntrans && nnet < eng->ndev && nnet < MAX_NICS; i++) {
        const char *why = "";
        struct vnet *n = &nics[nnet];
        if (transports[i].device_id != VIRTIO_ID_NET)
            continue;
        if (vnet_init(n, &transports[i], PKT_BUF, &why) != 0) {
            con_printf("middlebox: NIC at %lx: %s\n", (uint64_t)transports[i].base, why);
            panic("cannot bring a NIC up");
        }
        bound[nnet] = n;
        con_printf("dbg: vnet %lu us\n", clock_ns()/1000);
        con_printf("middlebox: device %s: virtio-net at %lx (%s)", eng->devs[nnet].name,
                   (uint64_t)transports[i].base, transports[i].version == 2 ? "virtio 1.x" : "legacy");
        if (n->has_mac) {
            con_puts(", mac ");
            print_mac(n->mac);
        }
        con_puts("\n");
        nnet++;
    }
    for (i = nnet; i < eng->ndev; i++)
        con_printf("middlebox: warning: device %s has no NIC; packets sent there are dropped\n",
                   eng->devs[i].name);
    platform_seal();
    con_printf("middlebox: memory %lu KiB used of %lu KiB; engine %lu KiB, %u packets of %u "
               "bytes; clock %lu kHz (%s)\n",
               platform_used() >> 10, platform_ram() >> 10, size >> 10, eng->npkts, PKT_BUF,
               clock_tsc_khz(), clock_source());
    return nnet;
}

static void run(uint32_t nnet)
{
    struct mb_packet *pkts[MB_BATCH];
    uint64_t next_console = rdtsc();
    uint64_t console_cycles = clock_tsc_khz() * (CONSOLE_POLL_NS / 1000) / 1000;
    uint32_t d, ndev = eng->ndev;
    for (;;) {
        int busy = 0;
        uint64_t now;
        for (d = 0; d < nnet; d++) {
            struct vnet *n = bound[d];
            uint32_t got;
            if (!virtq_pending(&n->rxq))
                continue;
            if (!busy)
                eng->now_ns = clock_ns();   /* once per batch */
            busy = 1;
            got = vnet_rx(n, eng, pkts, MB_BATCH);
            if (got)
                mb_engine_rx(eng, d, pkts, got);
        }
        if (eng->nsources) {
            if (!busy)
                eng->now_ns = clock_ns();
            busy |= mb_engine_pull(eng) != 0;
        }
        if (busy)
            mb_engine_run(eng);
        for (d = 0; d < ndev; d++) {
            struct vnet *n = bound[d];
            while (eng->devs[d].tx.n) {
                uint32_t room = n ? vnet_tx_room(n) : MB_BATCH, m, i;
                if (!room)
                    break;          /* the rest waits for the device */
                m = mb_engine_tx(eng, d, pkts, room < MB_BATCH ? room : MB_BATCH);
                if (n)
                    vnet_tx(n, pkts, m);
                else
                    unbound_dropped[d] += m;
                for (i = 0; i < m; i++)
                    mb_free(eng, pkts[i]);
            }
        }
        now = rdtsc();
        if ((int64_t)(now - next_console) >= 0) {
            next_console = now + console_cycles;
            poll_console();
        }
        if (!busy)
            cpu_relax();
    }
}

void guest_main(uint32_t start_info)
{
    uint32_t nnet;
    uint64_t t0 = rdtsc(), t1, t2, t3, t4;
    platform_init(start_info);
    t1 = rdtsc();
    con_init();
    t2 = rdtsc();
    clock_init();
    t3 = rdtsc();
    nnet = setup();
    t4 = rdtsc();
    {
        uint32_t r[4], l;
        con_printf("dbg: entry->main %lu us, platform %lu, con %lu, clock %lu, setup %lu\n",
            clock_tsc_to_ns(t0 - boot_tsc)/1000, clock_tsc_to_ns(t1-t0)/1000, clock_tsc_to_ns(t2-t1)/1000,
            clock_tsc_to_ns(t3-t2)/1000, clock_tsc_to_ns(t4-t3)/1000);
        for (l = 0; l < 0x17; l += 0x15) { }
        cpuid(0, 0, r); con_printf("cpuid0 max %x\n", r[0]);
        cpuid(0x15, 0, r); con_printf("cpuid15 %x %x %x %x\n", r[0], r[1], r[2], r[3]);
        cpuid(0x16, 0, r); con_printf("cpuid16 %x %x %x %x\n", r[0], r[1], r[2], r[3]);
        cpuid(1, 0, r); con_printf("cpuid1 ecx %x\n", r[2]);
        cpuid(0x40000000, 0, r); con_printf("cpuid40000000 %x %x %x %x\n", r[0], r[1], r[2], r[3]);
        con_printf("cmdline: %s\n", platform_cmdline());
    }
    ready_ns = clock_ns();
    con_printf("middlebox: %s ready in %lu us\n", eng->graph_name, ready_ns / 1000);
    run(nnet);
}
