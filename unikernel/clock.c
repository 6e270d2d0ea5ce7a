/*
 * clock.c - TSC rate calibration and conversion. The scale is a 32.32
 * fixed-point nanoseconds-per-cycle factor, applied with one 64x64->128
 * multiply, so clock_ns() costs an rdtsc and a multiply.
 */
#include "clock.h"
#include "libc.h"
#include "platform.h"

#define MSR_APIC_BASE 0x1b
#define MSR_KVM_SYSTEM_TIME_NEW 0x4b564d01
#define KVM_FEATURE_CLOCKSOURCE2 (1u << 3)
#define APIC_LVT_TIMER 0x320
#define APIC_TIMER_INIT 0x380
#define APIC_TIMER_CUR 0x390
#define APIC_TIMER_DIV 0x3e0
#define APIC_BUS_HZ 1000000000ull   /* QEMU's and KVM's emulated APIC */

static uint64_t tsc_khz;
static uint64_t scale;      /* ns per cycle, 32.32 fixed point */
static uint64_t base_tsc;   /* clock_ns() = base_ns + scale * (tsc - base_tsc) */
static uint64_t base_ns;
static const char *source = "guess";
static int lapic_pending;   /* started by clock_init, read by clock_ready */
static uint64_t fallback_khz;
static uintptr_t apic;      /* local APIC, while its timer refines the rate */
static uint32_t cal_c0;
static uint64_t cal_t0;
static int refining;

static inline uint64_t rdmsr(uint32_t msr)
{
    uint32_t lo, hi;
    __asm__ volatile("rdmsr" : "=a"(lo), "=d"(hi) : "c"(msr));
    return ((uint64_t)hi << 32) | lo;
}

static inline void wrmsr(uint32_t msr, uint64_t v)
{
    __asm__ volatile("wrmsr" : : "c"(msr), "a"((uint32_t)v), "d"((uint32_t)(v >> 32)));
}

static uint64_t from_cmdline(void)
{
    const char *p = cmdline_find("mb.tsc_khz=", 0);
    uint64_t v;
    if (!p || uk_parse_u64(&p, &v) || (*p && *p != ' '))
        return 0;
    return v;
}

/* The pvclock structure KVM fills in once enabled (32 bytes). */
struct pvclock {
    uint32_t version;
    uint32_t pad0;
    uint64_t tsc_timestamp;
    uint64_t system_time;
    uint32_t mul;
    int8_t shift;
    uint8_t flags;
    uint8_t pad[2];
};

static struct pvclock pvclock __attribute__((aligned(64)));

static uint64_t from_kvmclock(uint32_t hv_max)
{
    uint32_t r[4];
    uint32_t mul = 0, spins;
    int8_t shift = 0;
    cpuid(0x40000000, 0, r);
    /* "KVMKVMKVM\0\0\0" */
    if (r[1] != 0x4b4d564b || r[2] != 0x564b4d56 || r[3] != 0x0000004d || hv_max < 0x40000001)
        return 0;
    cpuid(0x40000001, 0, r);
    if (!(r[0] & KVM_FEATURE_CLOCKSOURCE2))
        return 0;
    wrmsr(MSR_KVM_SYSTEM_TIME_NEW, (uint64_t)(uintptr_t)&pvclock | 1);
    for (spins = 0; spins < 1000000; spins++) {
        uint32_t v = *(volatile uint32_t *)&pvclock.version;
        barrier();
        mul = *(volatile uint32_t *)&pvclock.mul;
        shift = *(volatile int8_t *)&pvclock.shift;
        barrier();
        if (!(v & 1) && v == *(volatile uint32_t *)&pvclock.version && mul)
            break;
    }
    wrmsr(MSR_KVM_SYSTEM_TIME_NEW, 0);  /* one reading is all we need */
    if (!mul)
        return 0;
    /* ns = (cycles << shift) * mul / 2^32, so kHz = 1e6 * 2^32 / (mul << shift). */
    if (shift >= 0)
        return (1000000ull << 32) / ((uint64_t)mul << shift);
    if (shift < -10)
        return 0;
    return (1000000ull << (32 - shift)) / mul;
}

/*
 * The local APIC timer against the TSC. lapic_start() sets the timer
 * counting down from 2^32 - 1 at 1 GHz and takes the first sample (the
 * APIC, then the TSC, back to back); lapic_rate() takes the second, at
 * least CLOCK_CAL_NS later, and returns the TSC rate in kHz. clock_init()
 * starts it and clock_ready() reads it, so the window is the boot itself:
 * no time is spent waiting unless the boot took less than CLOCK_CAL_NS.
 * The timer keeps running for clock_refine().
 */
static int lapic_start(void)
{
    uint64_t base = rdmsr(MSR_APIC_BASE);
    if (!(base & (1u << 11)))
        return 0;           /* APIC disabled */
    apic = (uintptr_t)(base & 0xfffff000u);
    mmio_write32(apic + APIC_TIMER_DIV, 0xb);           /* divide by 1 */
    mmio_write32(apic + APIC_LVT_TIMER, 1u << 16);      /* masked, one-shot */
    mmio_write32(apic + APIC_TIMER_INIT, 0xffffffffu);
    cal_c0 = mmio_read32(apic + APIC_TIMER_CUR);
    cal_t0 = rdtsc();
    return 1;
}

static uint64_t lapic_rate(void)
{
    uint64_t t = 0;
    uint32_t c = cal_c0, i;
    for (i = 0; i < 10000000; i++) {
        c = mmio_read32(apic + APIC_TIMER_CUR);
        t = rdtsc();
        if (cal_c0 - c >= CLOCK_CAL_NS || c == 0 || c > cal_c0)
            break;
    }
    if (c >= cal_c0 || c == 0 || t <= cal_t0) {
        mmio_write32(apic + APIC_TIMER_INIT, 0);
        return 0;
    }
    refining = 1;
    /* cycles per APIC tick times the APIC rate, in kHz */
    return (t - cal_t0) * (APIC_BUS_HZ / 1000) / (cal_c0 - c);
}

static void set_rate(uint64_t khz)
{
    tsc_khz = khz;
    scale = ((1000000ull << 32) + khz / 2) / khz;
}

void clock_refine(void)
{
    uint64_t t, khz;
    uint32_t c;
    if (!refining || clock_tsc_to_ns(rdtsc() - cal_t0) < CLOCK_REFINE_NS)
        return;
    refining = 0;
    c = mmio_read32(apic + APIC_TIMER_CUR);
    t = rdtsc();
    mmio_write32(apic + APIC_TIMER_INIT, 0);            /* stop it */
    if (c == 0 || c >= cal_c0)
        return;     /* ran out, or went backwards: keep the first figure */
    khz = (t - cal_t0) * (APIC_BUS_HZ / 1000) / (cal_c0 - c);
    if (!khz)
        return;
    /* Continue from the current time at the new rate: no jump. */
    base_ns = clock_ns();
    base_tsc = rdtsc();
    set_rate(khz);
    source = "lapic-refined";
}

void clock_init(void)
{
    uint32_t r[4], max, hv_max = 0;
    uint64_t khz = 0;
    cpuid(0, 0, r);
    max = r[0];
    cpuid(1, 0, r);
    if (r[2] & (1u << 31)) {    /* running under a hypervisor */
        cpuid(0x40000000, 0, r);
        hv_max = r[0];
    }
    if ((khz = from_cmdline()))
        source = "cmdline";
    else if ((khz = from_kvmclock(hv_max)))
        source = "kvmclock";
    if (!khz && hv_max >= 0x40000010 && hv_max < 0x40010000) {
        cpuid(0x40000010, 0, r);
        if ((khz = r[0]))
            source = "cpuid-4010";
    }
    if (!khz && max >= 0x15) {
        cpuid(0x15, 0, r);
        if (r[0] && r[1] && r[2] && (khz = (uint64_t)r[2] * r[1] / r[0] / 1000))
            source = "cpuid-15";
    }
    if (!khz && max >= 0x16) {
        cpuid(0x16, 0, r);
        fallback_khz = (uint64_t)(r[0] & 0xffff) * 1000;
    }
    if (!khz && lapic_start()) {
        lapic_pending = 1;      /* the rate comes in clock_ready() */
        source = "lapic";
    } else if (!khz && (khz = fallback_khz)) {
        source = "cpuid-16";
    }
    if (!khz)
        khz = fallback_khz ? fallback_khz : 1000000;   /* until clock_ready() */
    base_tsc = boot_tsc;
    base_ns = 0;
    set_rate(khz);
}

void clock_ready(void)
{
    uint64_t khz;
    if (!lapic_pending)
        return;
    lapic_pending = 0;
    if ((khz = lapic_rate())) {
        set_rate(khz);
    } else if (fallback_khz) {
        set_rate(fallback_khz);
        source = "cpuid-16";
    } else {
        set_rate(1000000);
        source = "guess";
    }
}

uint64_t clock_tsc_to_ns(uint64_t cycles)
{
    return (uint64_t)(((unsigned __int128)cycles * scale) >> 32);
}

uint64_t clock_ns(void)
{
    return base_ns + clock_tsc_to_ns(rdtsc() - base_tsc);
}

uint64_t clock_tsc_khz(void)
{
    return tsc_khz;
}

const char *clock_source(void)
{
    return source;
}
