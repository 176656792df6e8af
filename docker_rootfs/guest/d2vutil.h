/* d2vutil.h: what d2vinit.c and dhcp.c share (d2vutil.c). */
#ifndef D2V_UTIL_H
#define D2V_UTIL_H

#include <stddef.h>

/* One line on stderr (the console), newline added. */
void msg(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

/* CLOCK_MONOTONIC in seconds. */
double now(void);

/* A whole file (DIR/NAME, or NAME when DIR is NULL); malloc'd,
 * NUL-terminated, size in *len. NULL if absent. */
char *slurp(const char *dir, const char *name, size_t *len);

/* The first line of a file (no newline), malloc'd; "" if absent. */
char *line_of(const char *dir, const char *name);

/* Write DATA (a string) to PATH, created 0644; FLAGS adds open flags
 * (O_TRUNC, O_EXCL). 0 or -1. */
int write_file(const char *path, const char *data, int flags);

#endif
