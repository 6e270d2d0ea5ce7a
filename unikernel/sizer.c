/*
 * sizer.c - a host program built beside each image (middlebox build): it
 * links the same engine, kernels, kernel table and plan, and prints the
 * engine arena the guest will ask for, in bytes, so that `middlebox boot`
 * can give the VM enough memory without booting it first.
 */
#include <stdio.h>

#include "engine.h"
#include "guest.h"

int main(void)
{
    char err[MB_ERRLEN];
    struct mb_engine_opts opts = {0, GUEST_PKT_BUF, GUEST_PKT_HEADROOM};
    uint64_t size = mb_engine_size(mb_plan, mb_plan_len, &opts, mb_kernels, mb_nkernels, err,
                                   sizeof(err));
    if (!size) {
        fprintf(stderr, "%s\n", err);
        return 1;
    }
    printf("%llu\n", (unsigned long long)size);
    return 0;
}
