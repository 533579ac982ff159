#include "heap_tuning.h"

// <malloc.h> pulls in <features.h>, which is what defines __GLIBC__.
#if __has_include(<malloc.h>)
#include <malloc.h>
#endif
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

void parley_keep_heap_top(int trim_threshold, int top_pad) {
#if defined(__GLIBC__)
    mallopt(M_TRIM_THRESHOLD, trim_threshold);
    mallopt(M_TOP_PAD, top_pad);
#else
    (void)trim_threshold;
    (void)top_pad;
#endif
}

void parley_raise_malloc_cache(int count, char *const argv[]) {
#if defined(__GLIBC__) && defined(__linux__)
    const char *current = getenv("GLIBC_TUNABLES");
    // Set already (by the operator, or by the run that started this one): nothing to do.
    if (current != NULL && strstr(current, "glibc.malloc.tcache_count") != NULL) return;
    if (getenv("PARLEY_MALLOC_CACHE_SET") != NULL) return;
    char value[4096];
    int length = (current != NULL && current[0] != '\0')
        ? snprintf(value, sizeof value, "%s:glibc.malloc.tcache_count=%d", current, count)
        : snprintf(value, sizeof value, "glibc.malloc.tcache_count=%d", count);
    if (length < 0 || (size_t)length >= sizeof value) return;
    if (setenv("GLIBC_TUNABLES", value, 1) != 0 || setenv("PARLEY_MALLOC_CACHE_SET", "1", 1) != 0) return;
    execv("/proc/self/exe", argv);
    // Not run again: carry on with glibc's default cache, and the environment as it was.
    if (current != NULL) setenv("GLIBC_TUNABLES", current, 1); else unsetenv("GLIBC_TUNABLES");
    unsetenv("PARLEY_MALLOC_CACHE_SET");
#else
    (void)count;
    (void)argv;
#endif
}
