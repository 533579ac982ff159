#ifndef PARLEY_HEAP_TUNING_H
#define PARLEY_HEAP_TUNING_H

/// Keeps up to `trim_threshold` bytes of free heap top (and pads each heap growth by `top_pad`)
/// instead of giving it back to the system at once. glibc only; elsewhere it does nothing.
void parley_keep_heap_top(int trim_threshold, int top_pad);

/// Runs this program again (same process, arguments and descriptors) with glibc's per-thread cache
/// of freed blocks raised to `count` blocks per size, which glibc reads only from the environment at
/// start-up (GLIBC_TUNABLES). Returns without doing so when GLIBC_TUNABLES already sets it, after one
/// such run, off glibc, or when the program cannot be run again (it then carries on as it is).
void parley_raise_malloc_cache(int count, char *const argv[]);

#endif
