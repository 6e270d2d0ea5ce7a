/*
 * arena.c - a host program built beside each image (middlebox build). It
 * links the same engine, kernels, kernel table and plan as the guest and
 *   arena size            prints the engine arena the guest needs, in bytes;
 *   arena ADDRESS FILE    makes the engine at ADDRESS (where the guest's
 *                         arena is linked) and writes its arena image to
 *                         FILE, for the guest to restore at boot.
 * So plan checks and kernel init run here, once, and a configuration error
 * is a build error. A kernel state that points outside the arena (at this
 * program's code or data) could not be restored in the guest: refused.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#include "engine.h"
#include "guest.h"

static const struct mb_engine_opts opts = {0, GUEST_PKT_BUF, GUEST_PKT_HEADROOM};

/* Name the element whose records hold arena offset off. */
static const char *owner(const struct mb_engine *eng, uint64_t off)
{
    const uint8_t *a = (const uint8_t *)eng;
    uint32_t i;
    for (i = 0; i < eng->nelem; i++) {
        const struct mb_elem *e = &eng->elems[i];
        uint64_t es = (uint64_t)((const uint8_t *)e - a), ss;
        if (off >= es && off < es + sizeof(*e))
            return e->name;
        if (e->state) {
            ss = (uint64_t)((const uint8_t *)e->state - a);
            if (off >= ss && (i + 1 == eng->nelem || !eng->elems[i + 1].state ||
                              off < (uint64_t)((const uint8_t *)eng->elems[i + 1].state - a)))
                return e->name;
        }
    }
    return "(engine)";
}

/* A word of the image that points into this process but not into the
 * arena: the guest would follow it into nothing. */
static int check_pointers(const struct mb_engine *eng, const uint8_t *img, uint64_t len)
{
    FILE *maps = fopen("/proc/self/maps", "r");
    unsigned long lo[512], hi[512];
    uint64_t base = (uint64_t)(uintptr_t)eng, at = 24;
    int n = 0, bad = 0;
    if (!maps)
        return 0;
    while (n < 512 && fscanf(maps, "%lx-%lx%*[^\n]", &lo[n], &hi[n]) == 2)
        n++;
    fclose(maps);
    while (at + 8 <= len) {
        uint32_t off, cnt, j;
        memcpy(&off, img + at, 4);
        memcpy(&cnt, img + at + 4, 4);
        at += 8;
        if (!cnt)
            break;
        for (j = 0; j < cnt; j += 8) {
            uint64_t v;
            int k;
            memcpy(&v, img + at + j, 8);
            if (v >= base && v < base + eng->size)
                continue;
            for (k = 0; k < n; k++)
                if (v >= lo[k] && v < hi[k]) {
                    fprintf(stderr, "element '%s': its kernel state holds a pointer outside "
                            "the engine arena, which a guest image cannot carry\n",
                            owner(eng, off + j));
                    bad = 1;
                    break;
                }
            if (bad)
                return -1;
        }
        at += cnt;
    }
    return 0;
}

int main(int argc, char **argv)
{
    char err[MB_ERRLEN];
    uint64_t size, addr, len;
    struct mb_engine *eng;
    uint8_t *img;
    void *arena;
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
    if (argc != 3) {
        fprintf(stderr, "usage: arena size | arena ADDRESS FILE\n");
        return 2;
    }
    addr = strtoull(argv[1], 0, 0);
    arena = mmap((void *)(uintptr_t)addr, size, PROT_READ | PROT_WRITE,
                 MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED_NOREPLACE | MAP_NORESERVE, -1, 0);
    if (arena == MAP_FAILED || arena != (void *)(uintptr_t)addr) {
        fprintf(stderr, "cannot map the arena at %#llx: %s\n", (unsigned long long)addr,
                strerror(arena == MAP_FAILED ? errno : EEXIST));
        return 1;
    }
    eng = mb_engine_init(arena, size, mb_plan, mb_plan_len, &opts, mb_kernels, mb_nkernels,
                         err, sizeof(err));
    if (!eng) {
        fprintf(stderr, "%s\n", err);
        return 1;
    }
    len = mb_engine_image(eng, 0, 0);
    img = malloc(len);
    if (!img || mb_engine_image(eng, img, len) != len) {
        fprintf(stderr, "out of memory\n");
        return 1;
    }
    if (check_pointers(eng, img, len))
        return 1;
    f = fopen(argv[2], "wb");
    if (!f || fwrite(img, 1, len, f) != len || fclose(f)) {
        fprintf(stderr, "cannot write %s\n", argv[2]);
        return 1;
    }
    return 0;
}
