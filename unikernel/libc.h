/*
 * libc.h - the few C library routines the guest needs. memcpy, memmove,
 * memset and memcmp are declared by mb.h (the kernels use them); the
 * string helpers below are for the guest runtime only.
 */
#ifndef UK_LIBC_H
#define UK_LIBC_H

#include "mb.h"

size_t uk_strlen(const char *s);
int uk_streq(const char *a, const char *b);
/* 1 if s starts with prefix. */
int uk_startswith(const char *s, const char *prefix);
/* Parse an unsigned number (decimal, or hex after 0x) from *s, advancing
 * *s past it; -1 when there is no digit or it overflows 64 bits. */
int uk_parse_u64(const char **s, uint64_t *out);

#endif
