/*
 * platform.c - PVH start_info, init-time memory, CPU exceptions, shutdown.
 *
 * struct hvm_start_info (PVH boot protocol; all fields little-endian):
 *   0 u32 magic 0x336ec578   4 u32 version   8 u32 flags   12 u32 nr_modules
 *   16 u64 modlist_paddr     24 u64 cmdline_paddr          32 u64 rsdp_paddr
 *   40 u64 memmap_paddr      48 u32 memmap_entries (version >= 1)
 * memory map entries (24 bytes): u64 addr, u64 size, u32 type (1 = RAM).
 */
#include "platform.h"
#include "console.h"
#include "libc.h"

#define START_INFO_MAGIC 0x336ec578u
#define E820_RAM 1
#define CMDLINE_MAX 2048
#define MAX_RAM_RANGES 32
#define DEBUG_EXIT_PORT 0xf4    /* -device isa-debug-exit,iobase=0xf4 */
#define FOUR_GIB 0x100000000ull

extern char __image_start[], __image_end[];
extern const uint64_t uk_vectors[32];

static char cmdline[CMDLINE_MAX];
static struct {
    uint64_t start, end;
} ram[MAX_RAM_RANGES];
static uint32_t nram;
static uint64_t heap_next, heap_end, heap_start;
static int image_fits = 1;
static int sealed;

/* --- exceptions ------------------------------------------------------------ */

struct idt_gate {
    uint16_t off_lo;
    uint16_t sel;
    uint8_t ist;
    uint8_t type;
    uint16_t off_mid;
    uint32_t off_hi;
    uint32_t zero;
} __attribute__((packed));

static struct idt_gate idt[32] __attribute__((aligned(16)));

static void idt_init(void)
{
    struct {
        uint16_t limit;
        uint64_t base;
    } __attribute__((packed)) ptr;
    uint32_t i;
    for (i = 0; i < 32; i++) {
        uint64_t a = uk_vectors[i];
        idt[i].off_lo = (uint16_t)a;
        idt[i].sel = 0x08;
        idt[i].ist = 0;
        idt[i].type = 0x8e;     /* present, ring 0, 64-bit interrupt gate */
        idt[i].off_mid = (uint16_t)(a >> 16);
        idt[i].off_hi = (uint32_t)(a >> 32);
        idt[i].zero = 0;
    }
    ptr.limit = sizeof(idt) - 1;
    ptr.base = (uint64_t)(uintptr_t)idt;
    __asm__ volatile("lidt %0" : : "m"(ptr));
}

void uk_fault(uint64_t vector, uint64_t err, uint64_t rip, uint64_t cr2);

__attribute__((noreturn)) void uk_fault(uint64_t vector, uint64_t err, uint64_t rip,
                                        uint64_t cr2)
{
    con_printf("\nmiddlebox: CPU exception %lu (error %lx) at %lx, address %lx\n",
               vector, err, rip, cr2);
    platform_exit(2);
}

/* --- stopping ------------------------------------------------------------- */

void platform_exit(uint32_t code)
{
    outl(DEBUG_EXIT_PORT, code);
    for (;;)
        __asm__ volatile("cli; hlt");
}

void panic(const char *msg)
{
    con_printf("middlebox: error: %s\n", msg);
    platform_exit(1);
}

/* --- start_info ---------------------------------------------------------------- */

static uint32_t rd32(const uint8_t *b)
{
    return *(const uint32_t *)b;
}

static uint64_t rd64(const uint8_t *b)
{
    return *(const uint64_t *)b;
}

static void add_ram(uint64_t start, uint64_t size)
{
    if (nram < MAX_RAM_RANGES && size && start < FOUR_GIB) {
        uint64_t end = start + size;
        ram[nram].start = start;
        ram[nram].end = end > FOUR_GIB ? FOUR_GIB : end;   /* only 4 GiB is mapped */
        nram++;
    }
}

void platform_init(uint32_t si_pa)
{
    const uint8_t *si = (const uint8_t *)(uintptr_t)si_pa;
    uint64_t image_end = (uint64_t)(uintptr_t)__image_end, i;

    idt_init();
    cmdline[0] = 0;
    if (si_pa && rd32(si) == START_INFO_MAGIC) {
        uint64_t cl = rd64(si + 24);
        if (cl && cl < FOUR_GIB - CMDLINE_MAX) {
            const char *c = (const char *)(uintptr_t)cl;
            for (i = 0; i + 1 < CMDLINE_MAX && c[i]; i++)
                cmdline[i] = c[i];
            cmdline[i] = 0;
        }
        if (rd32(si + 4) >= 1) {
            uint64_t mm = rd64(si + 40);
            uint32_t n = rd32(si + 48);
            if (mm && mm < FOUR_GIB && n <= 128)
                for (i = 0; i < n; i++) {
                    const uint8_t *e = (const uint8_t *)(uintptr_t)(mm + 24 * i);
                    if (rd32(e + 16) == E820_RAM)
                        add_ram(rd64(e), rd64(e + 8));
                }
        }
    }
    /* Init-time memory: the RAM range holding the image, from its end. The
     * image includes the engine arena (guest.ld), so it may not fit. */
    for (i = 0; i < nram; i++)
        if (ram[i].start <= image_end && image_end <= ram[i].end) {
            heap_start = heap_next = image_end;
            heap_end = ram[i].end;
        }
    if (nram && !heap_end) {
        image_fits = 0;
        heap_start = heap_next = heap_end = image_end;     /* nothing to hand out */
    } else if (!heap_end) {
        /* No usable map: assume the 16 MiB a boot line asks for at least. */
        add_ram(0, 16u << 20);
        heap_start = heap_next = image_end;
        heap_end = 16u << 20;
    }
}

const char *cmdline_find(const char *key, const char *after)
{
    const char *s = cmdline;
    if (after) {
        s = after;
        while (*s && *s != ' ')
            s++;
    }
    for (;;) {
        const char *k = key;
        while (*s == ' ')
            s++;
        if (!*s)
            return 0;
        while (*k && *s == *k) {
            s++;
            k++;
        }
        if (!*k)
            return s;
        while (*s && *s != ' ')
            s++;
    }
}

/* --- memory ------------------------------------------------------------------ */

void *platform_alloc(uint64_t size, uint64_t align)
{
    uint64_t at = (heap_next + align - 1) & ~(align - 1);
    if (sealed || at < heap_next || size > heap_end - at || at > heap_end)
        return 0;
    heap_next = at + size;
    return (void *)(uintptr_t)at;
}

int platform_image_fits(void)
{
    return image_fits;
}

uint64_t platform_used(void)
{
    return heap_next - (uint64_t)(uintptr_t)__image_start;
}

uint64_t platform_ram(void)
{
    uint64_t total = 0, i;
    for (i = 0; i < nram; i++)
        total += ram[i].end - ram[i].start;
    return total;
}

uint64_t platform_ram_top32(void)
{
    uint64_t top = 0, i;
    for (i = 0; i < nram; i++)
        if (ram[i].end > top)
            top = ram[i].end;   /* ranges are clipped at 4 GiB */
    return top;
}

/* --- mapping beyond 4 GiB ----------------------------------------------------------- */

#define PTE_P 0x001ull
#define PTE_W 0x002ull
#define PTE_PWT 0x008ull
#define PTE_PCD 0x010ull
#define PTE_PS 0x080ull
#define PTE_ADDR 0x000ffffffffff000ull
#define TWO_MIB 0x200000ull

/* The table an entry points to, made (zeroed) if absent; 0 on failure. */
static uint64_t *next_table(uint64_t *entry)
{
    uint64_t *t;
    if (*entry & PTE_P)
        return (*entry & PTE_PS) ? 0 : (uint64_t *)(uintptr_t)(*entry & PTE_ADDR);
    t = platform_alloc(4096, 4096);
    if (!t)
        return 0;
    memset(t, 0, 4096);
    *entry = (uint64_t)(uintptr_t)t | PTE_P | PTE_W;
    return t;
}

int platform_map_mmio(uint64_t pa, uint64_t size)
{
    uint32_t r[4];
    uint64_t end = pa + size, limit = 1ull << 36, cr3, a;
    if (end <= FOUR_GIB)
        return 0;               /* boot.S mapped it */
    cpuid(0x80000000u, 0, r);
    if (r[0] >= 0x80000008u) {
        cpuid(0x80000008u, 0, r);
        limit = 1ull << (r[0] & 0xff);      /* physical address bits */
    }
    if (limit > (1ull << 47))
        limit = 1ull << 47;     /* the lower half of a 4-level address space */
    if (end < pa || end > limit || sealed)
        return -1;
    __asm__ volatile("mov %%cr3, %0" : "=r"(cr3));
    for (a = pa & ~(TWO_MIB - 1); a < end; a += TWO_MIB) {
        uint64_t *pml4 = (uint64_t *)(uintptr_t)(cr3 & PTE_ADDR), *pdpt, *pd;
        if (a < FOUR_GIB)
            continue;
        pdpt = next_table(&pml4[(a >> 39) & 511]);
        pd = pdpt ? next_table(&pdpt[(a >> 30) & 511]) : 0;
        if (!pd)
            return -1;
        pd[(a >> 21) & 511] = a | PTE_P | PTE_W | PTE_PWT | PTE_PCD | PTE_PS;
    }
    __asm__ volatile("mov %0, %%cr3" : : "r"(cr3) : "memory");     /* flush the TLB */
    return 0;
}

void platform_seal(void)
{
    sealed = 1;
}
