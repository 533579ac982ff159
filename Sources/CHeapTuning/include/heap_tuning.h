#ifndef PARLEY_HEAP_TUNING_H
#define PARLEY_HEAP_TUNING_H

/// Keeps up to `trim_threshold` bytes of free heap top (and pads each heap growth by `top_pad`)
/// instead of giving it back to the system at once. glibc only; elsewhere it does nothing.
void parley_keep_heap_top(int trim_threshold, int top_pad);

#endif
