/*
 * harness.c - drives the freestanding engine and every kernel from a plain
 * C program, so they can run under AddressSanitizer and UBSan without
 * Python in the way (tests/test_sanitize.py builds and runs it).
 *
 *   harness PLAN PACKETS [--polls N] [--fix-checksum]
 *
 * PACKETS holds records (u32 device, u32 length, bytes), little-endian.
 * Exit 0: ran, and every element kept in + created == out + sent + dropped + held
 * and the pool got every packet back. Exit 4: the engine refused the plan
 * (a clean refusal is the right answer to a corrupt plan). Exit 3: an
 * invariant broke. Sanitizer reports abort with their own exit code.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "engine.h"

extern const struct mb_kernel *const mb_kernels[];
extern const uint32_t mb_nkernels;

static uint8_t *slurp(const char *path, uint32_t *len)
{
    FILE *f = fopen(path, "rb");
    uint8_t *b;
    long n;
    if (!f) {
        perror(path);
        exit(2);
    }
    fseek(f, 0, SEEK_END);
    n = ftell(f);
    fseek(f, 0, SEEK_SET);
    /* An exact-size heap copy, so ASan sees reads past the end. */
    b = malloc(n ? (size_t)n : 1);
    if (!b || fread(b, 1, (size_t)n, f) != (size_t)n) {
        perror(path);
        exit(2);
    }
    fclose(f);
    *len = (uint32_t)n;
    return b;
}

static uint32_t fnv1a(const uint8_t *b, uint32_t n)
{
    uint32_t h = 2166136261u;
    for (uint32_t i = 0; i < n; i++) {
        h ^= b[i];
        h *= 16777619u;
    }
    return h;
}

static void drain(struct mb_engine *eng)
{
    struct mb_packet *out[64];
    for (uint32_t d = 0; d < eng->ndev; d++) {
        uint32_t m;
        while ((m = mb_engine_tx(eng, d, out, 64)) != 0)
            for (uint32_t i = 0; i < m; i++) {
                /* Touch every byte, as a device would. */
                volatile uint8_t x = 0;
                for (uint32_t j = 0; j < out[i]->len; j++)
                    x ^= out[i]->data[j];
                (void)x;
                mb_free(eng, out[i]);
            }
    }
}

int main(int argc, char **argv)
{
    uint32_t plen, klen, polls = 8, pos = 0;
    int fix = 0;
    char err[MB_ERRLEN];
    struct mb_engine_opts opts = {0, 2048 + 128, 128, 0};
    uint8_t *plan, *pk;
    void *arena;
    uint64_t size;
    struct mb_engine *eng;

    if (argc < 3) {
        fprintf(stderr, "usage: harness PLAN PACKETS [--polls N] [--fix-checksum]\n");
        return 2;
    }
    for (int i = 3; i < argc; i++) {
        if (!strcmp(argv[i], "--polls") && i + 1 < argc)
            polls = (uint32_t)atoi(argv[++i]);
        else if (!strcmp(argv[i], "--fix-checksum"))
            fix = 1;
    }
    plan = slurp(argv[1], &plen);
    pk = slurp(argv[2], &klen);
    if (fix && plen >= 16) {
        uint32_t h = fnv1a(plan + 16, plen - 16);
        memcpy(plan + 12, &h, 4);
    }
    size = mb_engine_size(plan, plen, &opts, mb_kernels, mb_nkernels, err, sizeof err);
    if (!size) {
        printf("refused: %s\n", err);
        free(plan);
        free(pk);
        return 4;
    }
    if (size > (1ull << 32) || posix_memalign(&arena, 64, size)) {
        printf("refused: arena of %llu bytes\n", (unsigned long long)size);
        free(plan);
        free(pk);
        return 4;
    }
    eng = mb_engine_init(arena, size, plan, plen, &opts, mb_kernels, mb_nkernels, err, sizeof err);
    if (!eng) {
        printf("refused: %s\n", err);
        free(arena);
        free(plan);
        free(pk);
        return 4;
    }
    while (pos + 8 <= klen) {
        struct mb_packet *batch[MB_BATCH];
        uint32_t nb = 0, dev = mb_le32(pk + pos);
        while (pos + 8 <= klen && nb < MB_BATCH && mb_le32(pk + pos) == dev) {
            uint32_t len = mb_le32(pk + pos + 4);
            if (len > klen - pos - 8)
                len = klen - pos - 8;
            if (len <= mb_max_len(eng)) {
                struct mb_packet *p = mb_alloc(eng);
                if (!p)
                    break;
                memcpy(p->data, pk + pos + 8, len);
                p->len = len;
                p->ts_ns = eng->now_ns += 1000;
                batch[nb++] = p;
            }
            pos += 8 + len;
        }
        mb_engine_rx(eng, dev % (eng->ndev ? eng->ndev : 1), batch, nb);
        mb_engine_run(eng);
        drain(eng);
    }
    for (uint32_t i = 0; i < polls; i++) {
        if (!mb_engine_pull(eng))
            break;
        mb_engine_run(eng);
        drain(eng);
    }
    uint64_t held = 0;
    for (uint32_t i = 0; i < eng->nelem; i++) {
        struct mb_elem *e = &eng->elems[i];
        held += e->held;
        uint64_t out = e->sent + e->dropped + e->held;
        for (uint32_t j = 0; j < e->nout; j++)
            out += e->outs[j].count;
        if (e->in + e->created != out || e->q.n) {
            printf("invariant broken at %s: in %llu + created %llu != out+sent+dropped %llu\n",
                   e->name, (unsigned long long)e->in, (unsigned long long)e->created,
                   (unsigned long long)out);
            return 3;
        }
    }
    if (eng->nfree + held != eng->npkts) {
        printf("pool leak: %u of %u packets free, %llu held\n", eng->nfree, eng->npkts,
               (unsigned long long)held);
        return 3;
    }
    printf("ok: %u elements\n", eng->nelem);
    free(arena);
    free(plan);
    free(pk);
    return 0;
}
