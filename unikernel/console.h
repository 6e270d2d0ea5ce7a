/*
 * console.h - the serial console on COM1 (I/O port 0x3f8): the boot line,
 * counters, and commands typed by the operator (or a test) on its input.
 */
#ifndef UK_CONSOLE_H
#define UK_CONSOLE_H

#include <stdarg.h>
#include <stdint.h>

void con_init(void);
void con_write(const char *s, uint32_t n);
void con_puts(const char *s);

/*
 * printf for the guest: %s %c %d %u %x with optional l/ll, a width (or *), and
 * the '-' (left-align) and '0' flags. Output goes out in one burst.
 */
void con_printf(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
void con_vprintf(const char *fmt, va_list ap);

/* One received byte, or -1 when none is waiting. Never blocks. */
int con_getc(void);

#endif
