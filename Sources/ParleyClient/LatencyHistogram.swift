import Histogram

/// Latencies recorded in an HdrHistogram: microsecond resolution, three significant digits, up to an
/// hour, in a fixed few tens of kilobytes however many samples a run takes (a rooms run records
/// millions). Histograms from many clients add up with `add`.
public struct LatencyHistogram: Sendable {
    private var histogram = Histogram<UInt64>(highestTrackableValue: 3_600_000_000, numberOfSignificantValueDigits: .three)

    public init() {}

    public var count: Int { Int(histogram.totalCount) }

    public mutating func record(microseconds: UInt64) {
        // Longer than an hour cannot happen in a bounded run; it is clamped rather than lost.
        _ = histogram.record(min(microseconds, histogram.highestTrackableValue))
    }

    public mutating func record(milliseconds: Double) {
        guard milliseconds.isFinite else { return }
        record(microseconds: UInt64(max(0, (milliseconds * 1000).rounded())))
    }

    public mutating func add(_ other: LatencyHistogram) { histogram.add(other.histogram) }

    /// p50, p90, p99 and max, in milliseconds.
    public var summary: LatencySummary {
        guard histogram.totalCount > 0 else { return LatencySummary() }
        func ms(_ microseconds: UInt64) -> Double { Double(microseconds) / 1000 }
        return LatencySummary(
            count: count, p50: ms(histogram.valueAtPercentile(50)), p90: ms(histogram.valueAtPercentile(90)),
            p99: ms(histogram.valueAtPercentile(99)), max: ms(histogram.max))
    }
}
