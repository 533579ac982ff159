import NIOCore
import Testing
@testable import ParleyClient

/// The load generator's byte-level line handling: what its counts and latencies rest on.
@Suite struct LoadCountingTests {
    func lines(_ chunks: [String]) -> [String] {
        var partial: [UInt8] = []
        var seen: [String] = []
        for chunk in chunks {
            forEachLine(in: ByteBuffer(string: chunk), partial: &partial) { seen.append(String(decoding: $0, as: UTF8.self)) }
        }
        return seen
    }

    @Test func linesAreSplitOnLFWithoutTheirCRAndAcrossReads() {
        #expect(lines(["a\r\nb\n", "c"]) == ["a", "b"])
        #expect(lines(["MSG #r x: p1-", "0 123\r", "\nPONG 5\n"]) == ["MSG #r x: p1-0 123", "PONG 5"])
        #expect(lines(["\n\r\n"]) == ["", ""])
    }

    @Test func theSendTimeIsTheNumberAtTheEndOfALine() {
        func number(_ text: String) -> UInt64? { Array(text.utf8).withUnsafeBytes { trailingNumber($0) } }
        #expect(number(":a!a@h PRIVMSG #r :p3-17 1234567890123") == 1_234_567_890_123)
        #expect(number(":server PONG server :48") == 48)
        #expect(number("no digits here") == nil)
        #expect(number("") == nil)
        #expect(number("18446744073709551615") == 18_446_744_073_709_551_615)
        #expect(number("x 18446744073709551616") == nil)
    }

    @Test func aClientFindsItsOwnMarkerAndNoOther() {
        func has(_ text: String, _ needle: String) -> Bool { Array(text.utf8).withUnsafeBytes { containsBytes($0, Array(needle.utf8)) } }
        #expect(has("MSG #r guest-1: p12-3 99", ": p12-"))
        #expect(!has("MSG #r guest-1: p12-3 99", ": p1-"))
        #expect(!has("p1", ": p1-"))
    }

    @Test func latencyPercentilesComeFromTheHistogram() {
        var histogram = LatencyHistogram()
        for microseconds in 1...1000 { histogram.record(microseconds: UInt64(microseconds) * 1000) }
        var other = LatencyHistogram()
        other.record(milliseconds: 5000)
        histogram.add(other)
        let summary = histogram.summary
        #expect(summary.count == 1001)
        // Three significant digits: within 0.1% of the exact ranks.
        #expect(abs(summary.p50 - 501) <= 1 && abs(summary.p90 - 901) <= 1 && abs(summary.p99 - 991) <= 1)
        #expect(abs(summary.max - 5000) <= 5)
        #expect(LatencyHistogram().summary == LatencySummary())
    }
}
