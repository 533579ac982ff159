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

    /// A sender sends a whole window once everything before it is acknowledged, over either door.
    @Test func aSenderSendsAWindowOnceTheLastIsAcknowledged() {
        #expect(ThroughputHandler.burst(window: 16, unacknowledged: 0) == 16)
        #expect(ThroughputHandler.burst(window: 16, unacknowledged: 1) == 0)
        #expect(ThroughputHandler.burst(window: 16, unacknowledged: 8) == 0)
        #expect(ThroughputHandler.burst(window: 16, unacknowledged: 16) == 0)
        #expect(ThroughputHandler.burst(window: 1, unacknowledged: 0) == 1)
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
        // A near miss before the marker, the marker as the whole line and at its very end.
        #expect(has("MSG #r p: p1: p12-", ": p12-"))
        #expect(has(": p12-", ": p12-"))
        #expect(!has("MSG #r guest: p12", ": p12-"))
        #expect(!has("", ": p12-"))
    }

    @Test func aLineStartsWithAPrefixOnlyWhenItsFirstBytesAreThePrefix() {
        func starts(_ text: String, _ prefix: StaticString) -> Bool { Array(text.utf8).withUnsafeBytes { hasPrefix($0, prefix) } }
        #expect(starts("PRIVMSG #r :hi", "PRIVMSG "))
        #expect(starts("MSG ", "MSG "))
        #expect(!starts("MSG", "MSG "))
        #expect(!starts(" MSG #r", "MSG "))
        #expect(!starts("", "PING "))
    }

    @Test func stolenTimeIsTheEighthColumnOfACPUsLineInProcStat() throws {
        let before = try #require(CPUTimes.parse("""
            cpu  300 0 30 600 10 0 5 55 0 0
            cpu0 100 0 10 400 5 0 2 5 0 0
            cpu1 200 0 20 200 5 0 3 50 7 0
            intr 123
            """))
        #expect(before.total == [0: 522, 1: 478] && before.steal == [0: 5, 1: 50])
        // CPU 1: 100 more ticks, 40 of them stolen; CPU 0: 100 more, none stolen.
        let after = try #require(CPUTimes.parse("""
            cpu1 250 0 25 205 5 0 3 90 7 0
            cpu0 175 0 15 420 5 0 2 5 0 0
            """))
        #expect(after.stealPercent(since: before, cpu: 1) == 40)
        #expect(after.stealPercent(since: before, cpu: 0) == 0)
        #expect(after.stealPercent(since: before, cpu: nil) == 20)
        #expect(after.stealPercent(since: before, cpu: 2) == nil)
        #expect(before.stealPercent(since: after, cpu: 1) == nil)  // counters never go back
        #expect(CPUTimes.parse("intr 1 2 3\n") == nil)
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
