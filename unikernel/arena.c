/*
 * arena.c - a host program built beside each image (middlebox build). It
 * links the same engine, kernels, kernel table and plan as the guest and
 *
 *   arena size          prints the engine arena's size, in bytes;
 *   arena ADDRESS PLAN FILE KERNEL...
 *                       makes the engine at ADDRESS, where the guest's arena
 *                       is linked, for the plan at PLAN, where the guest's
 *                       .mbplan is (the engine points into it: the image
 *                       holds the plan once), and writes the arena up to its
 *                       packet pool to FILE, each element's kernel pointer
 *                       set to the guest address of its kernel (KERNEL...,
 *                       in kernel table order).
 *
 * The build places FILE's non-zero pages in the image at their addresses
 * (guest.ld), so QEMU loads a ready engine: the guest parses no plan and
 * runs no kernel init at boot, and a configuration error is a build error.
 * The engine is plain data at fixed addresses: its pointers point into the
 * arena or the plan, except the kernel pointers set here. A kernel state that holds a
 * pointer to anything else (this program's code or data) could not be
 * carried over, so it is refused.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#include "engine.h"
#include "guest.h"

static const struct mb_engine_opts opts = {0, GUEST_PKT_BUF, GUEST_PKT_HEADROOM, 1};

/* The element whose record or state holds arena offset off. */
static const char *owner(const struct mb_engine *eng, uint64_t off)
{
    const uint8_t *a = (const uint8_t *)eng;
    const char *who = "(engine)";
    uint32_t i;
    for (i = 0; i < eng->nelem; i++) {
        const struct mb_elem *e = &eng->elems[i];
        uint64_t rec = (uint64_t)((const uint8_t *)e - a);
        if (off >= rec && off < rec + sizeof(*e))
            return e->name;
        if (e->state && off >= (uint64_t)((const uint8_t *)e->state - a))
            who = e->name;      /* states are laid out in element order */
    }
    return who;
}

/* 0, or -1 (with a message) when a word of the first n bytes points into
 * this process but not into the arena or the plan. */
static int check_pointers(const struct mb_engine *eng, uint64_t n)
{
    uint64_t plan = (uint64_t)(uintptr_t)eng->plan;
    FILE *maps = fopen("/proc/self/maps", "r");
    unsigned long lo[1024], hi[1024];
    uint64_t base = (uint64_t)(uintptr_t)eng, off;
    int nmaps = 0, k;
    if (!maps) {
        perror("/proc/self/maps");
        return -1;
    }
    while (nmaps < 1024 && fscanf(maps, "%lx-%lx%*[^\n]", &lo[nmaps], &hi[nmaps]) == 2)
        nmaps++;
    fclose(maps);
    for (off = 0; off + 8 <= n; off += 8) {
        uint64_t v;
        memcpy(&v, (const uint8_t *)eng + off, 8);
        /* (an end pointer, one past the last byte, is fine too) */
        if ((v >= base && v <= base + eng->size) || (v >= plan && v <= plan + eng->plan_len))
            continue;
        for (k = 0; k < nmaps; k++)
            if (v >= lo[k] && v < hi[k]) {
                fprintf(stderr, "element '%s': its kernel state holds a pointer outside the "
                        "engine and its plan, which a guest image cannot carry\n", owner(eng, off));
                return -1;
            }
    }
    return 0;
}

/* Memory at exactly addr (a guest address), or 0 with a message. */
static void *place(uint64_t addr, uint64_t size)
{
    void *p = mmap((void *)(uintptr_t)addr, size, PROT_READ | PROT_WRITE,
                   MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED_NOREPLACE | MAP_NORESERVE, -1, 0);
    if (p == MAP_FAILED || p != (void *)(uintptr_t)addr) {
        fprintf(stderr, "cannot map guest memory at %#llx: %s\n", (unsigned long long)addr,
                strerror(p == MAP_FAILED ? errno : EEXIST));
        return 0;
    }
    return p;
}

int main(int argc, char **argv)
{
    char err[MB_ERRLEN];
    uint64_t size, addr, plan_at, page, prefix;
    struct mb_engine *eng;
    uint32_t i;
    void *arena, *plan_map;
    FILE *f;

    err[0] = 0;
    size = mb_engine_size(mb_plan, mb_plan_len, &opts, mb_kernels, mb_nkernels, err,
                          sizeof(err));
    if (!size) {
        fprintf(stderr, "%s\n", err);
        return 1;
    }
    if (argc == 2 && !strcmp(argv[1], "size")) {
        printf("%llu\n", (unsigned long long)size);
        return 0;
    }
    if (argc != 4 + (int)mb_nkernels) {
        fprintf(stderr, "usage: arena size | arena ADDRESS PLAN FILE KERNEL-ADDRESS x %u\n",
                mb_nkernels);
        return 2;
    }
    addr = strtoull(argv[1], 0, 0);
    plan_at = strtoull(argv[2], 0, 0);
    page = plan_at & ~4095ull;
    arena = place(addr, size);
    plan_map = place(page, plan_at + mb_plan_len - page);
    if (!arena || !plan_map)
        return 1;
    memcpy((void *)(uintptr_t)plan_at, mb_plan, mb_plan_len);
    eng = mb_engine_init(arena, size, (const uint8_t *)(uintptr_t)plan_at, mb_plan_len, &opts,
                         mb_kernels, mb_nkernels, err, sizeof(err));
    if (!eng) {
        fprintf(stderr, "%s\n", err);
        return 1;
    }
    prefix = (uint64_t)((uint8_t *)eng->pool - (uint8_t *)arena);
    for (i = 0; i < eng->nelem; i++)
        eng->elems[i].k = 0;
    if (check_pointers(eng, prefix))
        return 1;
    for (i = 0; i < eng->nelem; i++)
        eng->elems[i].k = (const struct mb_kernel *)(uintptr_t)strtoull(
            argv[4 + eng->elems[i].kernel], 0, 0);
    f = fopen(argv[3], "wb");
    if (!f || fwrite(arena, 1, prefix, f) != prefix || fclose(f)) {
        fprintf(stderr, "cannot write %s\n", argv[3]);
        return 1;
    }
    return 0;
}
