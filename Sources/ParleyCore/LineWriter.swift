import NIOCore

/// Writes a line whose length is known before it is written, in one pass through a pointer: a
/// dozen `ByteBuffer` writes, each checking capacity and uniqueness, cost a renderer as much as the
/// rest of its work (rendering is once per format for every message). `@inlinable`: the doors'
/// renderers are in other modules, and a call per byte would undo the point.
public struct LineWriter {
    @usableFromInline let out: UnsafeMutableRawBufferPointer
    @usableFromInline var at = 0

    @inlinable init(out: UnsafeMutableRawBufferPointer) {
        self.out = out
    }

    /// A buffer holding the `length` bytes `write` writes (it must write exactly that many).
    @inlinable public static func buffer(length: Int, _ write: (inout LineWriter) -> Void) -> ByteBuffer {
        var buffer = ByteBufferAllocator().buffer(capacity: length)
        buffer.writeWithUnsafeMutableBytes(minimumWritableBytes: length) { out in
            var line = LineWriter(out: out)
            write(&line)
            // The renderers count what they then write; the tests (debug builds) hold them to it.
            assert(line.at == length, "a line written shorter or longer than announced")
            return line.at
        }
        return buffer
    }

    @inlinable public mutating func byte(_ value: UInt8) {
        out[at] = value
        at += 1
    }

    @inlinable public mutating func bytes(_ bytes: UnsafeRawBufferPointer) {
        UnsafeMutableRawBufferPointer(rebasing: out[at..<(at + bytes.count)]).copyMemory(from: bytes)
        at += bytes.count
    }

    @inlinable public mutating func bytes(_ bytes: UnsafeBufferPointer<UInt8>) {
        self.bytes(UnsafeRawBufferPointer(bytes))
    }

    @inlinable public mutating func bytes(_ text: StaticString) {
        bytes(UnsafeBufferPointer(start: text.utf8Start, count: text.utf8CodeUnitCount))
    }

    /// `bytes`, with each byte that `replaced` picks written as `replacement`.
    @inlinable public mutating func bytes(_ bytes: UnsafeBufferPointer<UInt8>, replacing replaced: (UInt8) -> Bool, with replacement: UInt8) {
        let start = at
        self.bytes(bytes)
        for index in start..<at where replaced(out[index]) { out[index] = replacement }
    }
}
