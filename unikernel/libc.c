/*
 * libc.c - memcpy, memmove, memset, memcmp and string helpers.
 *
 * Built with -fno-builtin and -fno-tree-loop-distribute-patterns so that
 * gcc does not turn these loops back into calls to themselves. Copies move
 * eight bytes at a time: under TCG every loop iteration costs real time.
 */
#include "libc.h"

typedef uint64_t __attribute__((may_alias, aligned(1))) u64u;

void *memcpy(void *dst, const void *src, size_t n)
{
    uint8_t *d = dst;
    const uint8_t *s = src;
    while (n >= 32) {
        u64u a = *(const u64u *)s, b = *(const u64u *)(s + 8);
        u64u c = *(const u64u *)(s + 16), e = *(const u64u *)(s + 24);
        *(u64u *)d = a;
        *(u64u *)(d + 8) = b;
        *(u64u *)(d + 16) = c;
        *(u64u *)(d + 24) = e;
        d += 32;
        s += 32;
        n -= 32;
    }
    while (n >= 8) {
        *(u64u *)d = *(const u64u *)s;
        d += 8;
        s += 8;
        n -= 8;
    }
    while (n--)
        *d++ = *s++;
    return dst;
}

void *memmove(void *dst, const void *src, size_t n)
{
    uint8_t *d = dst;
    const uint8_t *s = src;
    if (d == s || n == 0)
        return dst;
    if (d < s || d >= s + n)
        return memcpy(dst, src, n);
    /* Overlapping, destination above the source: copy backwards. */
    d += n;
    s += n;
    while (n >= 8) {
        d -= 8;
        s -= 8;
        n -= 8;
        *(u64u *)d = *(const u64u *)s;
    }
    while (n--)
        *--d = *--s;
    return dst;
}

void *memset(void *dst, int c, size_t n)
{
    uint8_t *d = dst;
    uint64_t w = (uint8_t)c * 0x0101010101010101ull;
    while (n >= 8) {
        *(u64u *)d = w;
        d += 8;
        n -= 8;
    }
    while (n--)
        *d++ = (uint8_t)c;
    return dst;
}

int memcmp(const void *a, const void *b, size_t n)
{
    const uint8_t *x = a, *y = b;
    for (; n; n--, x++, y++)
        if (*x != *y)
            return *x < *y ? -1 : 1;
    return 0;
}

size_t uk_strlen(const char *s)
{
    size_t n = 0;
    while (s[n])
        n++;
    return n;
}

int uk_streq(const char *a, const char *b)
{
    while (*a && *a == *b) {
        a++;
        b++;
    }
    return *a == *b;
}

int uk_startswith(const char *s, const char *prefix)
{
    while (*prefix)
        if (*s++ != *prefix++)
            return 0;
    return 1;
}

int uk_parse_u64(const char **sp, uint64_t *out)
{
    const char *s = *sp;
    uint64_t v = 0;
    int digits = 0, base = 10;
    if (s[0] == '0' && (s[1] == 'x' || s[1] == 'X')) {
        base = 16;
        s += 2;
    }
    for (;; s++, digits++) {
        uint32_t d;
        char c = *s;
        if (c >= '0' && c <= '9')
            d = (uint32_t)(c - '0');
        else if (base == 16 && c >= 'a' && c <= 'f')
            d = (uint32_t)(c - 'a' + 10);
        else if (base == 16 && c >= 'A' && c <= 'F')
            d = (uint32_t)(c - 'A' + 10);
        else
            break;
        if (v > (~0ull - d) / (uint64_t)base)
            return -1;
        v = v * (uint64_t)base + d;
    }
    if (!digits)
        return -1;
    *sp = s;
    *out = v;
    return 0;
}
