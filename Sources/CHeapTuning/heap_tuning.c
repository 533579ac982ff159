#include "heap_tuning.h"

// <malloc.h> pulls in <features.h>, which is what defines __GLIBC__.
#if __has_include(<malloc.h>)
#include <malloc.h>
#endif

void parley_keep_heap_top(int trim_threshold, int top_pad) {
#if defined(__GLIBC__)
    mallopt(M_TRIM_THRESHOLD, trim_threshold);
    mallopt(M_TOP_PAD, top_pad);
#else
    (void)trim_threshold;
    (void)top_pad;
#endif
}
