import NIOCore
import Testing
@testable import ParleyCore

/// A connection's gathered output: every byte appended comes out once, in order, and nothing is held
/// after a hand-over.
@Suite struct GatheredBytesTests {
    func append(_ text: String, to gathered: inout GatheredBytes, minimumCapacity: Int = 1024) {
        Array(text.utf8).withUnsafeBytes { gathered.append($0, minimumCapacity: minimumCapacity) }
    }

    @Test func bytesComeOutInOrderAcrossGrowth() {
        var gathered = GatheredBytes()
        // A small first reservation, so that the appends below outgrow it twice.
        append("PRIVMSG #a :one\r\n", to: &gathered, minimumCapacity: 8)
        let lines = (2...40).map { ":n!u@h PRIVMSG #a :line \($0)\r\n" }
        for line in lines { append(line, to: &gathered) }
        append("", to: &gathered)
        let expected = "PRIVMSG #a :one\r\n" + lines.joined()
        let count = gathered.count
        #expect(count == expected.utf8.count)
        let output = gathered.take(allocator: ByteBufferAllocator())
        #expect(output.map { String(buffer: $0) } == expected)
    }

    @Test func aHandOverLeavesItEmptyAndReadyAgain() {
        var gathered = GatheredBytes()
        func taken() -> String? { gathered.take(allocator: ByteBufferAllocator()).map { String(buffer: $0) } }
        #expect(taken() == nil)
        append("first\n", to: &gathered)
        #expect(taken() == "first\n")
        let count = gathered.count
        #expect(count == 0 && taken() == nil)
        append("second\n", to: &gathered)
        #expect(taken() == "second\n")
    }
}
