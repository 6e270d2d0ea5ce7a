/*
 * main.c - the guest: set the engine up over the plan linked into the
 * image, bind its logical devices to virtio NICs (plan device order;
 * virtio-mmio NICs first, in ascending address, then virtio-pci ones in
 * ascending bus:device.function), then poll forever, as
 * runtime/_engine.pyx does on the host:
 *
 *   per NIC: up to 32 received frames -> mb_engine_rx
 *   mb_engine_pull (sources) -> mb_engine_run
 *   per device: mb_engine_tx -> transmit ring (notify only if asked) -> free
 *
 * The serial console takes commands: stats, info, quit, help, and element
 * handler messages (control, query) from the host.
 */
#include "clock.h"
#include "console.h"
#include "engine.h"
#include "guest.h"
#include "libc.h"
#include "platform.h"
#include "virtio_mmio.h"
#include "virtio_net.h"
#include "virtio_pci.h"

#define MAX_NICS 16
#define PKT_BUF GUEST_PKT_BUF   /* packet buffer, headroom included */
#define CONSOLE_POLL_NS 1000000 /* look at the serial input once a ms */

static struct vmmio mmio_devs[MAX_NICS];
static struct vpci pci_devs[MAX_NICS];
static struct vdev *transports[2 * MAX_NICS];
static struct vnet nics[MAX_NICS];
static struct vnet *bound[MAX_NICS];    /* per logical device, or 0 */
static uint64_t unbound_dropped[MAX_NICS];
static struct mb_engine *eng;
static uint64_t ready_ns;

static void print_info(void);
static char line[128];
static uint32_t line_len;

/* Handler messages typed on the console ("control INDEX HEX..."), decoded
 * as they arrive; also the buffer query answers are written to. Not in
 * .bss: clearing it would cost boot time, and it is written before use. */
#define MSG_MAX (256u << 10)
static uint8_t msg[MSG_MAX] __attribute__((section(".noinit"), aligned(64)));
static uint32_t msg_len;
static int hex_mode;            /* the rest of the line is the message in hex */
static int hex_half;            /* a first hex digit is waiting for its pair */
static int msg_bad;             /* not hex, or too long */
static uint8_t hex_acc;

/* Boot phases, printed after the ready line when the command line has
 * mb.trace (where the boot time goes). */
#define MAX_MARKS 16
static const char *mark_name[MAX_MARKS];
static uint64_t mark_tsc[MAX_MARKS];
static uint32_t nmarks;
static const char *const nic_mark[8] = {"nic0", "nic1", "nic2", "nic3", "nic4", "nic5",
                                        "nic6", "nic7"};

static void mark(const char *what)
{
    if (nmarks < MAX_MARKS) {
        mark_tsc[nmarks] = rdtsc();
        mark_name[nmarks++] = what;
    }
}

static void print_marks(void)
{
    const char *flag = cmdline_find("mb.trace", 0);
    uint64_t prev = boot_tsc;
    uint32_t i;
    if (!flag || (*flag && *flag != ' '))
        return;
    con_puts("middlebox: boot trace (us):");
    for (i = 0; i < nmarks; i++) {
        con_printf(" %s %lu", mark_name[i], clock_tsc_to_ns(mark_tsc[i] - prev) / 1000);
        prev = mark_tsc[i];
    }
    con_puts("\n");
}

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

/* Parse "N" or "N M" unsigned decimals from s. */
static int parse_uints(const char *s, uint64_t *a, uint64_t *b)
{
    if (uk_parse_u64(&s, a))
        return -1;
    if (!b)
        return *s ? -1 : 0;
    if (*s++ != ' ' || uk_parse_u64(&s, b) || *s)
        return -1;
    return 0;
}

static void print_hex(const uint8_t *b, uint32_t n)
{
    char buf[256];
    uint32_t i, k = 0;
    for (i = 0; i < n; i++) {
        buf[k++] = "0123456789abcdef"[b[i] >> 4];
        buf[k++] = "0123456789abcdef"[b[i] & 15];
        if (k == sizeof(buf)) {
            con_write(buf, k);
            k = 0;
        }
    }
    con_write(buf, k);
}

/*
 * Handlers, for the host (qemu.Guest.read/write turn element handlers into
 * these, as the host engine does): between two passes of the engine,
 *   control INDEX HEX   the kernel of element INDEX applies the message
 *   query INDEX WHAT    the kernel of element INDEX answers query WHAT
 */
static void handler_command(const char *cmd)
{
    uint64_t index, what;
    if (uk_startswith(cmd, "control ")) {
        const char *p = cmd + 8;
        if (uk_parse_u64(&p, &index) || index >= eng->nelem) {
            con_puts("control: error: no such element\n");
        } else if (msg_bad || hex_half) {
            con_printf("control: error: the message must be hex, at most %u bytes\n", MSG_MAX);
        } else if (mb_engine_control(eng, (uint32_t)index, msg, msg_len) != 0) {
            con_printf("control: error: %s\n", eng->err);
        } else {
            con_puts("control: ok\n");
        }
    } else if (parse_uints(cmd + 6, &index, &what) || index >= eng->nelem || what > 0xffffffffu) {
        con_puts("query: error: expected query INDEX WHAT\n");
    } else {
        uint32_t n = mb_engine_query(eng, (uint32_t)index, (uint32_t)what, msg, MSG_MAX);
        con_puts("query: ");
        print_hex(msg, n < MSG_MAX ? n : MSG_MAX);
        con_puts("\n");
    }
}

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
    } else if (uk_streq(cmd, "info")) {
        print_info();
    } else if (uk_startswith(cmd, "control ") || uk_startswith(cmd, "query ")) {
        handler_command(cmd);
    } else if (uk_streq(cmd, "help")) {
        con_puts("commands: stats (counters of every element and device), info (NICs, "
                 "memory, clock), quit (print counters and power off), control INDEX HEX, "
                 "query INDEX WHAT (element handlers), help\n");
    } else {
        con_printf("unknown command '%s' (try help)\n", cmd);
    }
}

static int hex_digit(int c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

/* After "control N " the line is a message in hex: decode as it comes. */
static void hex_char(int c)
{
    int d = hex_digit(c);
    if (d < 0) {
        msg_bad |= c != ' ';
        return;
    }
    if (!hex_half) {
        hex_acc = (uint8_t)(d << 4);
        hex_half = 1;
        return;
    }
    hex_half = 0;
    if (msg_len < MSG_MAX)
        msg[msg_len++] = (uint8_t)(hex_acc | d);
    else
        msg_bad = 1;
}

/* Is the line so far "control DIGITS "? Then the message follows. */
static int starts_message(void)
{
    uint32_t i = 8;
    if (line_len < 10 || line[line_len - 1] != ' ' || !uk_startswith(line, "control "))
        return 0;
    for (; i < line_len - 1; i++)
        if (line[i] < '0' || line[i] > '9')
            return 0;
    return 1;
}

/* Take what the console has; returns how many bytes came. */
static uint32_t poll_console(void)
{
    uint32_t got = 0;
    int c;
    while ((c = con_getc()) >= 0) {
        got++;
        if (c == '\r' || c == '\n') {
            if (!line_len && c == '\n')
                continue;           /* the LF of a CR LF */
            con_puts("\n");
            line[line_len] = 0;
            command(line);
            line_len = 0;
            msg_len = 0;
            hex_mode = hex_half = msg_bad = 0;
        } else if (hex_mode) {
            hex_char(c);
        } else if (c == 0x7f || c == 0x08) {
            if (line_len) {
                line_len--;
                con_puts("\b \b");
            }
        } else if (c >= 0x20 && c < 0x7f && line_len + 1 < sizeof(line)) {
            char ch = (char)c;
            line[line_len++] = ch;
            con_write(&ch, 1);      /* echo */
            hex_mode = starts_message();
        }
    }
    return got;
}

/* --- set-up and the loop ------------------------------------------------------------ */

/* Where a device is: "feb00000" (virtio-mmio), "pci 00:02.0 (febf4000)"
 * (virtio-pci: its common configuration). */
static void print_where(const struct vdev *t)
{
    if (t->pci < 0)
        con_printf("%lx", t->addr);
    else
        con_printf("pci %02x:%02x.%x (%lx)", (uint32_t)t->pci >> 8,
                   ((uint32_t)t->pci >> 3) & 31, (uint32_t)t->pci & 7, t->addr);
}

static void print_mac(const uint8_t *m)
{
    con_printf("%02x:%02x:%02x:%02x:%02x:%02x", m[0], m[1], m[2], m[3], m[4], m[5]);
}

/* The `info` command: devices, memory, clock. */
static void print_info(void)
{
    uint32_t i;
    for (i = 0; i < eng->ndev; i++) {
        const struct vnet *n = bound[i];
        con_printf("device %s: ", eng->devs[i].name);
        if (!n) {
            con_puts("no NIC\n");
            continue;
        }
        con_puts("virtio-net at ");
        print_where(n->t);
        con_printf(" (%s, %u-byte header, %u/%u descriptors), mac ",
                   n->t->modern ? "virtio 1.x" : "legacy",
                   n->hdr_len, n->rxq.size, n->txq.size);
        if (n->has_mac)
            print_mac(n->mac);
        else
            con_puts("none");
        con_puts("\n");
    }
    con_printf("memory: %lu KiB used of %lu KiB (engine %lu KiB: %u packets of %u bytes)\n",
               platform_used() >> 10, platform_ram() >> 10, eng->size >> 10, eng->npkts,
               PKT_BUF);
    con_printf("clock: TSC %lu kHz (%s); up %lu ms; ready in %lu us\n", clock_tsc_khz(),
               clock_source(), (clock_ns() - ready_ns) / 1000000, ready_ns / 1000);
}

static uint32_t setup(void)
{
    uint32_t ntrans, nmmio, npci = 0, nnet = 0, i;
    int pci;

    /* The engine was made at build time (arena.c) and loaded with the
     * image: nothing to do but check that it is there. */
    if (!platform_image_fits())
        panic("not enough memory for the image and its engine (give the VM more with --mem)");
    eng = (struct mb_engine *)mb_arena;
    if (!eng->size || eng->nelem == 0)
        panic("this image holds no engine (not made by middlebox build?)");
    mark("engine");

    /* microvm's virtio-mmio windows are probed only where there is no
     * PCI: on a PC that address range may belong to a PCI BAR. */
    pci = pci_present();
    nmmio = vmmio_discover(mmio_devs, MAX_NICS, !pci);
    if (pci)
        npci = vpci_discover(pci_devs, MAX_NICS);
    for (ntrans = 0; ntrans < nmmio; ntrans++)
        transports[ntrans] = &mmio_devs[ntrans].v;
    for (i = 0; i < npci; i++)
        transports[ntrans++] = &pci_devs[i].v;
    mark("discover");
    for (i = 0; i < ntrans && nnet < eng->ndev && nnet < MAX_NICS; i++) {
        const char *why = "";
        if (transports[i]->device_id != VIRTIO_ID_NET)
            continue;
        if (vnet_init(&nics[nnet], transports[i], PKT_BUF, &why) != 0) {
            con_puts("middlebox: error: NIC at ");
            print_where(transports[i]);
            con_printf(": %s\n", why);
            platform_exit(1);
        }
        bound[nnet] = &nics[nnet];
        mark(nic_mark[nnet & 7]);
        nnet++;
    }
    for (i = nnet; i < eng->ndev; i++)
        con_printf("middlebox: warning: device %s has no NIC; packets sent there are dropped\n",
                   eng->devs[i].name);
    platform_seal();
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
            /* While input flows, look again next pass: long handler
             * messages arrive a FIFO's worth at a time. */
            next_console = poll_console() ? now : now + console_cycles;
            clock_refine();
        }
        if (!busy)
            cpu_relax();
    }
}

/* "middlebox: NAME ready in N us", without printf: under TCG every new
 * piece of code run costs microseconds to translate, so the boot path
 * runs as little code as it can. */
static void ready_line(void)
{
    char num[24];
    uint64_t us = ready_ns / 1000;
    uint32_t i = sizeof(num);
    num[--i] = 0;
    do {
        num[--i] = (char)('0' + us % 10);
        us /= 10;
    } while (us);
    con_puts("middlebox: ");
    con_puts(eng->graph_name);
    con_puts(" ready in ");
    con_puts(num + i);
    con_puts(" us\n");
}

void guest_main(uint32_t start_info)
{
    uint32_t nnet;
    mark("entry");
    platform_init(start_info);
    mark("platform");
    clock_init();               /* starts the LAPIC count the boot is timed by */
    mark("clock-start");
    con_init();
    mark("console");
    nnet = setup();
    clock_ready();
    mark("clock");
    ready_ns = clock_ns();
    ready_line();
    print_marks();
    run(nnet);
}
