/*
 * console.c - COM1 16550 UART with its 16-byte FIFOs on, so that long
 * handler messages typed by the host arrive 16 bytes per VM exit. Turning
 * the FIFOs on clears them (QEMU clears the receive side whenever the
 * enable bit changes), and input piped in while the guest booted is
 * waiting: without FIFOs one byte sits in the receive register, and each
 * read of it makes QEMU put the next one there soon after. So con_init
 * first drains the register into `early` (up to EARLY_MAX bytes) until no
 * more comes for a while, then turns the FIFOs on; con_getc() hands out
 * those bytes first. (A byte QEMU delivers in the few instructions between
 * the last empty status read and the FIFO switch is still lost; input
 * that arrives once the guest is up goes through the FIFOs.) Output waits for the transmit holding register to empty before
 * each byte, with a bound so a stuck UART cannot hang the guest; input is
 * polled.
 */
#include "console.h"
#include "libc.h"
#include "platform.h"

#define COM1 0x3f8
#define REG_DATA 0
#define REG_IER 1
#define REG_FCR 2
#define REG_LCR 3
#define REG_LSR 5
#define LSR_DR 0x01     /* a received byte is waiting */
#define LSR_THRE 0x20   /* transmit holding register empty */
#define SPIN_LIMIT 1000000

#define EARLY_MAX 256
#define EARLY_POLLS 2000      /* status reads to wait for a next early byte */

static int present;
static uint8_t early[EARLY_MAX];    /* received before the FIFOs were on */
static uint32_t early_n, early_at;

void con_init(void)
{
    uint8_t lsr;
    outb(COM1 + REG_IER, 0x00);     /* no interrupts: the guest polls */
    outb(COM1 + REG_LCR, 0x03);     /* 8 bits, no parity, one stop bit */
    lsr = inb(COM1 + REG_LSR);
    /* No UART answers 0xff on every port. */
    present = lsr != 0xff;
    /* Reading the register lets QEMU deliver the next waiting byte, from
     * its I/O thread, a moment later: take them all, waiting up to
     * EARLY_POLLS status reads for each next one, or a byte would be lost
     * when the FIFOs are cleared below. Without early input this costs
     * one status read. */
    if (present && (lsr & LSR_DR)) {
        uint32_t polls = 0;
        while (early_n < EARLY_MAX && polls < EARLY_POLLS) {
            if (lsr & LSR_DR) {
                early[early_n++] = inb(COM1 + REG_DATA);
                polls = 0;
            } else {
                polls++;
            }
            lsr = inb(COM1 + REG_LSR);
        }
    }
    /* FIFOs on (and cleared), receive trigger level 14: QEMU hands over
     * as many bytes at once as the trigger level allows. */
    outb(COM1 + REG_FCR, 0xc7);
}

static void put(char c)
{
    uint32_t spins = 0;
    while (!(inb(COM1 + REG_LSR) & LSR_THRE))
        if (++spins == SPIN_LIMIT)
            return;             /* stuck: lose a byte rather than hang */
    outb(COM1 + REG_DATA, (uint8_t)c);
}

void con_write(const char *s, uint32_t n)
{
    for (; n && present; n--, s++) {
        if (*s == '\n')
            put('\r');         /* a terminal wants CR LF */
        put(*s);
    }
}

void con_puts(const char *s)
{
    con_write(s, (uint32_t)uk_strlen(s));
}

int con_getc(void)
{
    if (early_at < early_n)
        return early[early_at++];
    if (!present || !(inb(COM1 + REG_LSR) & LSR_DR))
        return -1;
    return inb(COM1 + REG_DATA);
}

/* --- formatting ---------------------------------------------------------- */

struct out {
    char buf[256];
    uint32_t n;
};

static void out_c(struct out *o, char c)
{
    if (o->n == sizeof(o->buf)) {
        con_write(o->buf, o->n);
        o->n = 0;
    }
    o->buf[o->n++] = c;
}

static void out_pad(struct out *o, const char *s, uint32_t len, uint32_t width,
                    int left, char pad)
{
    uint32_t i;
    if (!left)
        for (i = len; i < width; i++)
            out_c(o, pad);
    for (i = 0; i < len; i++)
        out_c(o, s[i]);
    if (left)
        for (i = len; i < width; i++)
            out_c(o, ' ');
}

void con_vprintf(const char *fmt, va_list ap)
{
    struct out o;
    o.n = 0;
    for (; *fmt; fmt++) {
        char tmp[24], pad = ' ';
        const char *s;
        uint32_t width = 0, len = 0, longs = 0;
        int left = 0, neg = 0;
        uint64_t v;
        if (*fmt != '%') {
            out_c(&o, *fmt);
            continue;
        }
        fmt++;
        for (;; fmt++) {
            if (*fmt == '-')
                left = 1;
            else if (*fmt == '0')
                pad = '0';
            else
                break;
        }
        if (*fmt == '*') {
            int w = va_arg(ap, int);
            width = w > 0 ? (uint32_t)w : 0;
            fmt++;
        }
        while (*fmt >= '0' && *fmt <= '9')
            width = width * 10 + (uint32_t)(*fmt++ - '0');
        while (*fmt == 'l') {
            longs++;
            fmt++;
        }
        switch (*fmt) {
        case 's':
            s = va_arg(ap, const char *);
            if (!s)
                s = "(null)";
            out_pad(&o, s, (uint32_t)uk_strlen(s), width, left, ' ');
            break;
        case 'c':
            tmp[0] = (char)va_arg(ap, int);
            out_pad(&o, tmp, 1, width, left, ' ');
            break;
        case 'd':
        case 'u':
        case 'x': {
            uint32_t base = *fmt == 'x' ? 16 : 10, i = sizeof(tmp);
            if (*fmt == 'd') {
                int64_t sv = longs ? va_arg(ap, int64_t) : va_arg(ap, int);
                neg = sv < 0;
                v = neg ? (uint64_t)0 - (uint64_t)sv : (uint64_t)sv;
            } else {
                v = longs ? va_arg(ap, uint64_t) : va_arg(ap, unsigned int);
            }
            do {
                tmp[--i] = "0123456789abcdef"[v % base];
                v /= base;
            } while (v);
            if (neg)
                tmp[--i] = '-';
            len = (uint32_t)sizeof(tmp) - i;
            out_pad(&o, tmp + i, len, width, left, pad);
            break;
        }
        case '%':
            out_c(&o, '%');
            break;
        case 0:
            fmt--;
            break;
        default:
            out_c(&o, '%');
            out_c(&o, *fmt);
        }
    }
    con_write(o.buf, o.n);
}

void con_printf(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    con_vprintf(fmt, ap);
    va_end(ap);
}
