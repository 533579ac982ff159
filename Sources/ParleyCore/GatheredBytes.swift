import NIOCore

/// One connection's output between two hand-overs to its channel, in memory of its own. Appending a
/// copy of a message is a bounds check and a `memcpy`: appending to a `ByteBuffer` also checked its
/// storage's uniqueness twice and made a runtime exclusivity check on the storage (NIO's code, inlined
/// here), about 25 ns of every copy in fan-out over IRC. The bytes move into a `ByteBuffer` once per
/// hand-over, one copy for the pass's worth. Holds no memory while empty, so an idle connection costs
/// nothing here.
struct GatheredBytes: ~Copyable {
    private var base: UnsafeMutableRawPointer?
    private(set) var count = 0
    private var capacity = 0
    /// How much the last hand-over held: the next one starts that big. A busy member's pass is about
    /// the same size each time, and growing to it from 1 KiB took three reallocations (large blocks,
    /// each a `malloc_consolidate`) and as many copies per hand-over.
    private var lastCount = 0

    init() {}

    deinit { base?.deallocate() }

    /// Appends `bytes`; the first append of a hand-over reserves at least `minimumCapacity`, or what
    /// the last hand-over held.
    @inline(__always)
    mutating func append(_ bytes: UnsafeRawBufferPointer, minimumCapacity: Int = 1024) {
        guard let source = bytes.baseAddress, !bytes.isEmpty else { return }
        if count + bytes.count > capacity { grow(toHold: count + bytes.count, minimumCapacity: minimumCapacity) }
        // `grow` made `base` non-nil: capacity is above zero only while it is.
        guard let base else { return }
        (base + count).copyMemory(from: source, byteCount: bytes.count)
        count += bytes.count
    }

    private mutating func grow(toHold needed: Int, minimumCapacity: Int) {
        let newCapacity = max(needed, capacity * 2, capacity == 0 ? max(minimumCapacity, lastCount) : 0)
        let newBase = UnsafeMutableRawPointer.allocate(byteCount: newCapacity, alignment: 16)
        if let base {
            newBase.copyMemory(from: base, byteCount: count)
            base.deallocate()
        }
        base = newBase
        capacity = newCapacity
    }

    /// The bytes as a `ByteBuffer` from `allocator`, leaving this empty and holding no memory; nil when
    /// there are none.
    mutating func take(allocator: ByteBufferAllocator) -> ByteBuffer? {
        guard let base, count > 0 else { return nil }
        var buffer = allocator.buffer(capacity: count)
        buffer.writeBytes(UnsafeRawBufferPointer(start: base, count: count))
        base.deallocate()
        self.base = nil
        lastCount = count
        count = 0
        capacity = 0
        return buffer
    }
}
