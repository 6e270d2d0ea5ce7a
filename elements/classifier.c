/*
 * classifier.c - the kernel of Classifier, IPClassifier and IPFilter: walks
 * a compiled decision program (elements/program.h) and sends each packet to
 * the output its walk ends at. No match: dropped, counted in xstat[1]; a
 * deny rule: dropped, counted in xstat[2]; an IP program and no IPv4 header
 * (nh annotation unset, fewer than 20 bytes): dropped, counted in xstat[0].
 * The plan bytes are the program bytes.
 */
#include "program.h"

static uint32_t classifier_state_size(const uint8_t *cfg, uint32_t len)
{
    return cls_prog_size(cfg, len);
}

static int classifier_init(struct mb_elem *e)
{
    const char *err = cls_prog_load(e->state, e->cfg, e->cfg_len);
    return err ? mb_fail(e, err) : 0;
}

/* Packets are sent in runs: consecutive packets bound for the same output
 * are kept at the front of pkts and emitted together when the output
 * changes, so every queue receives them in the order one-by-one emits
 * would give (dropped packets go to no queue). */
#define CLS_PUSH_LOOP(RUN)                                                    \
    do {                                                                      \
        uint32_t i, k = 0, port = 0;                                          \
        for (i = 0; i < n; i++) {                                             \
            struct mb_packet *p = pkts[i];                                    \
            int32_t t = RUN(pr, p);                                           \
            uint32_t out;                                                     \
            if (MB_UNLIKELY(t <= CLS_NOIP)) {                                 \
                e->xstat[t == CLS_NOIP ? 0 : t == CLS_DROP ? 1 : 2]++;        \
                mb_drop(e, p);                                                \
                continue;                                                     \
            }                                                                 \
            out = (uint32_t)(-(t + 1));                                       \
            if (out != port) {                                                \
                mb_emit_batch(e, port, pkts, k);                              \
                k = 0;                                                        \
                port = out;                                                   \
            }                                                                 \
            pkts[k++] = p;                                                    \
        }                                                                     \
        mb_emit_batch(e, port, pkts, k);                                      \
    } while (0)

static void classifier_push(struct mb_elem *e, struct mb_packet **pkts, uint32_t n)
{
    const struct cls_prog *pr = e->state;

    /* Two loops, so the data-only walk (Classifier) knows it has one base. */
    if (pr->flags & CLS_F_IP)
        CLS_PUSH_LOOP(cls_run_ip);
    else
        CLS_PUSH_LOOP(cls_run_data);
}

MB_KERNEL(classifier) = {
    .name = "classifier",
    .state_size = classifier_state_size,
    .init = classifier_init,
    .push = classifier_push,
};
