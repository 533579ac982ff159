#ifndef PARLEY_MEMORY_HINTS_H
#define PARLEY_MEMORY_HINTS_H

#include <stdint.h>

/// Asks the processor to start loading the `lines` cache lines from `address` (a bit pattern, 0 for
/// none) so that a later read finds them in the cache. Only a hint: it never faults, whatever the
/// address, and does nothing where the compiler has no prefetch instruction.
static inline void parley_prefetch(uintptr_t address, int lines) {
    if (address == 0) return;
    for (int line = 0; line < lines; line++) {
        __builtin_prefetch((const char *)address + 64 * line);
    }
}

#endif
