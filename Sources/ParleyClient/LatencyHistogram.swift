import Histogram

/// Latencies recorded in an HdrHistogram: microsecond resolution, three significant digits, up to an
/// hour, in a fixed size however many samples a run takes (a rooms run records millions). The
/// histogram (about 190 KB) is made on the first sample, so the many clients of a run that only
/// count lines cost nothing here. Histograms from many clients add up with `add`.
public struct LatencyHistogram: Sendable {
    private static let highest: UInt64 = 3_600_000_000
    private var histogram: Histogram<UInt64>?

    public init() {}

    public var count: Int { Int(histogram?.totalCount ?? 0) }

    public mutating func record(microseconds: UInt64) {
        if histogram == nil {
            histogram = Histogram<UInt64>(highestTrackableValue: Self.highest, numberOfSignificantValueDigits: .three)
        }
        // Longer than an hour cannot happen in a bounded run; it is clamped rather than lost.
        _ = histogram?.record(min(microseconds, Self.highest))
    }

    public mutating func record(milliseconds: Double) {
        guard milliseconds.isFinite else { return }
        record(microseconds: UInt64(max(0, (milliseconds * 1000).rounded())))
    }

    public mutating func add(_ other: LatencyHistogram) {
        guard let theirs = other.histogram else { return }
        if histogram == nil { histogram = theirs } else { histogram?.add(theirs) }
    }

    /// p50, p90, p99 and max, in milliseconds.
    public var summary: LatencySummary {
        guard let histogram, histogram.totalCount > 0 else { return LatencySummary() }
        func ms(_ microseconds: UInt64) -> Double { Double(microseconds) / 1000 }
        return LatencySummary(
            count: count, p50: ms(histogram.valueAtPercentile(50)), p90: ms(histogram.valueAtPercentile(90)),
            p99: ms(histogram.valueAtPercentile(99)), max: ms(histogram.max))
    }
}
