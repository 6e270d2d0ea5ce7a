/*
 * clock.h - time from the TSC, whose rate is found once at boot.
 *
 * Sources, first that answers wins (clock_source() names it):
 *   cmdline    mb.tsc_khz=N on the kernel command line (the launcher knows)
 *   kvmclock   KVM's pvclock scale for the TSC (KVM guests)
 *   cpuid-4010 hypervisor timing leaf 0x40000010 (TSC kHz)
 *   cpuid-15   CPUID 0x15: TSC/crystal ratio times the crystal clock
 *   lapic      the local APIC timer, which QEMU and KVM both run at 1 GHz,
 *              counted against the TSC from clock_init() to clock_ready()
 *              (the boot itself; at least CLOCK_CAL_NS nanoseconds), then
 *              again over CLOCK_REFINE_NS by clock_refine() (the source
 *              becomes "lapic-refined")
 *   cpuid-16   CPUID 0x16 base frequency (MHz), a nominal figure
 * With none of them, 1 GHz is assumed and the source says "guess".
 */
#ifndef UK_CLOCK_H
#define UK_CLOCK_H

#include <stdint.h>

#define CLOCK_CAL_NS 20000          /* shortest LAPIC calibration window */
#define CLOCK_REFINE_NS 100000000   /* and the longer one after it */

/* Find the TSC rate, or start measuring it (LAPIC). */
void clock_init(void);
/* Before the first clock_ns() that matters (the ready line): finish a
 * LAPIC measurement begun by clock_init(). Until then clock_ns() runs at a
 * provisional rate. */
void clock_ready(void);
/* Call now and then from the main loop: once CLOCK_REFINE_NS have passed
 * since a LAPIC calibration, measure the rate again over that whole time
 * (one APIC read) and continue at it without a jump. Cheap otherwise. */
void clock_refine(void);
/* Nanoseconds since the guest's first instruction. */
uint64_t clock_ns(void);
/* Convert a TSC difference to nanoseconds. */
uint64_t clock_tsc_to_ns(uint64_t cycles);
uint64_t clock_tsc_khz(void);
const char *clock_source(void);

#endif
