#ifndef GREET_H
#define GREET_H

#include <stddef.h>

/* Write "Hello, NAME!" into buf (at most size bytes, NUL included).
 * Returns the length the full greeting needs, like snprintf. */
int greet(char *buf, size_t size, const char *name);

#endif
