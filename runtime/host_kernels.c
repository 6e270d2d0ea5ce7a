/*
 * host_kernels.c - kernels that exist only in the host engine. The
 * "python" kernel hands its batch to the Cython bridge, which runs the
 * element's Python process() with the GIL held. The guest build never
 * links this file, which is how `middlebox build` refuses Python elements.
 */
#include "mb.h"

static uint32_t python_state_size(const uint8_t *cfg, uint32_t len)
{
    (void)cfg;
    (void)len;
    return 0;
}

MB_KERNEL(python) = {
    .name = "python",
    .state_size = python_state_size,
    .init = 0,
    .push = mb_host_push,
};
