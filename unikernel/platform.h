/*
 * platform.h - what the guest knows about the machine it boots on: the PVH
 * start_info handed over by the loader (command line, RAM map), memory
 * taken once at init, CPU exceptions, port and MMIO access, and shutdown.
 *
 * Nothing here allocates after platform_seal(): the main loop runs on the
 * memory laid out during init.
 */
#ifndef UK_PLATFORM_H
#define UK_PLATFORM_H

#include <stddef.h>
#include <stdint.h>

/* --- port and memory-mapped I/O ------------------------------------------- */

static inline void outb(uint16_t port, uint8_t v)
{
    __asm__ volatile("outb %0, %1" : : "a"(v), "Nd"(port));
}

static inline uint8_t inb(uint16_t port)
{
    uint8_t v;
    __asm__ volatile("inb %1, %0" : "=a"(v) : "Nd"(port));
    return v;
}

static inline void outl(uint16_t port, uint32_t v)
{
    __asm__ volatile("outl %0, %1" : : "a"(v), "Nd"(port));
}

static inline void outw(uint16_t port, uint16_t v)
{
    __asm__ volatile("outw %0, %1" : : "a"(v), "Nd"(port));
}

static inline uint16_t inw(uint16_t port)
{
    uint16_t v;
    __asm__ volatile("inw %1, %0" : "=a"(v) : "Nd"(port));
    return v;
}

static inline uint32_t inl(uint16_t port)
{
    uint32_t v;
    __asm__ volatile("inl %1, %0" : "=a"(v) : "Nd"(port));
    return v;
}

static inline uint32_t mmio_read32(uintptr_t addr)
{
    return *(volatile uint32_t *)addr;
}

static inline void mmio_write32(uintptr_t addr, uint32_t v)
{
    *(volatile uint32_t *)addr = v;
}

static inline uint8_t mmio_read8(uintptr_t addr)
{
    return *(volatile uint8_t *)addr;
}

static inline void mmio_write8(uintptr_t addr, uint8_t v)
{
    *(volatile uint8_t *)addr = v;
}

static inline uint16_t mmio_read16(uintptr_t addr)
{
    return *(volatile uint16_t *)addr;
}

static inline void mmio_write16(uintptr_t addr, uint16_t v)
{
    *(volatile uint16_t *)addr = v;
}

/* Compiler barrier; full barrier (store then load ordering). */
#define barrier() __asm__ volatile("" ::: "memory")
#define mb_full() __asm__ volatile("mfence" ::: "memory")

static inline uint64_t rdtsc(void)
{
    uint32_t lo, hi;
    __asm__ volatile("rdtsc" : "=a"(lo), "=d"(hi));
    return ((uint64_t)hi << 32) | lo;
}

static inline void cpuid(uint32_t leaf, uint32_t sub, uint32_t r[4])
{
    __asm__ volatile("cpuid"
                     : "=a"(r[0]), "=b"(r[1]), "=c"(r[2]), "=d"(r[3])
                     : "a"(leaf), "c"(sub));
}

static inline void cpu_relax(void)
{
    __asm__ volatile("pause" ::: "memory");
}

/* --- boot information --------------------------------------------------- */

/* TSC read by the first instruction of the 32-bit entry (boot.S). */
extern uint64_t boot_tsc;

/* Read the PVH start_info at physical address si (identity mapped): copy
 * the command line, note the RAM ranges, set up exception handlers. */
void platform_init(uint32_t si);

/* The next word of the command line that starts with key, after the word
 * `after` points into (0: from the first word): a pointer just past key in
 * it, or 0 when there is none. With key "name=" that is the value, which
 * ends at a space or the end of the line; a bare flag "name" matches as
 * the whole word (*p == ' ' or 0). One pass, little code: under TCG every
 * distinct piece of code run before ready costs boot time. */
const char *cmdline_find(const char *key, const char *after);

/* --- init-time memory ------------------------------------------------------ */

/* `size` bytes aligned to `align` (a power of two) from RAM after the
 * image, or 0 when RAM is exhausted. Not zeroed. Only before seal. */
void *platform_alloc(uint64_t size, uint64_t align);

/* 0 when RAM ends before the image does (its engine arena included). */
int platform_image_fits(void);

/* Bytes handed out so far and RAM the guest has. */
uint64_t platform_used(void);
uint64_t platform_ram(void);

/* Highest end of RAM below 4 GiB (where a PCI window may start). */
uint64_t platform_ram_top32(void);

/* Make [pa, pa + size) reachable at the same virtual address (the first
 * 4 GiB always are; beyond, 2 MiB pages with caching off, page tables
 * from init-time memory). 0, or -1 when it cannot. Only before seal. */
int platform_map_mmio(uint64_t pa, uint64_t size);

/* End init: later platform_alloc calls fail. */
void platform_seal(void);

/* --- stopping -------------------------------------------------------------- */

/* Leave QEMU through isa-debug-exit (exit status (code << 1) | 1), or halt
 * forever if the device is absent. */
__attribute__((noreturn)) void platform_exit(uint32_t code);

/* Print a message and stop with exit code 2. */
__attribute__((noreturn)) void panic(const char *msg);

#endif
