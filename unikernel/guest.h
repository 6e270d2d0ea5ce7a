/*
 * guest.h - what `middlebox build` generates for one graph (plan.c and
 * kernel_table.c in the build directory) and the guest's main loop reads.
 */
#ifndef UK_GUEST_H
#define UK_GUEST_H

#include "mb.h"

/* Engine packet buffers in the guest: a full Ethernet frame (1514 bytes)
 * and more fit after the headroom. arena.c uses the same figures. */
#define GUEST_PKT_BUF 2048
#define GUEST_PKT_HEADROOM 128

/* The compiled plan, in its own section (.mbplan) so tools can read it back. */
extern const uint8_t mb_plan[];
extern const uint32_t mb_plan_len;

/* Per element, in plan order: its Python class name, and the names of its
 * kernel counters (xstat[0..]) separated by spaces ("" when none). */
extern const char *const mb_elem_class[];
extern const char *const mb_elem_xstats[];

/* The engine, made at build time by arena.c and loaded with the image
 * (guest.ld). */
extern uint8_t mb_arena[];

/* Kernels this image holds (only the ones the plan uses). */
extern const struct mb_kernel *const mb_kernels[];
extern const uint32_t mb_nkernels;

/* Entered from boot.S in long mode with the PVH start_info address. */
void guest_main(uint32_t start_info);

#endif
