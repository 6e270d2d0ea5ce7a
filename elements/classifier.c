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

static inline void cls_finish(struct mb_elem *e, struct mb_packet *p, int32_t t)
{
    if (MB_LIKELY(t > CLS_NOIP)) {
        mb_emit(e, (uint32_t)(-(t + 1)), p);
    } else {
        e->xstat[t == CLS_NOIP ? 0 : t == CLS_DROP ? 1 : 2]++;
        mb_drop(e, p);
    }
}

static void classifier_push(struct mb_elem *e, struct mb_packet **pkts, uint32_t n)
{
    const struct cls_prog *pr = e->state;
    uint32_t i;

    /* Two loops, so the data-only walk (Classifier) knows it has one base. */
    if (pr->flags & CLS_F_IP) {
        for (i = 0; i < n; i++)
            cls_finish(e, pkts[i], cls_run_ip(pr, pkts[i]));
    } else {
        for (i = 0; i < n; i++)
            cls_finish(e, pkts[i], cls_run_data(pr, pkts[i]));
    }
}

MB_KERNEL(classifier) = {
    .name = "classifier",
    .state_size = classifier_state_size,
    .init = classifier_init,
    .push = classifier_push,
};
