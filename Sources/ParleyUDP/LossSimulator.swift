/// Drops a fraction of datagrams at random, to show the protocol loses nothing on a bad network.
/// A seed makes the sequence of drops repeatable.
public struct LossSimulator: Sendable {
    public let rate: Double
    private var generator: SplitMix64

    /// `rate` from 0 (drop nothing) to 1; `seed` nil: a random one.
    public init(rate: Double, seed: UInt64? = nil) {
        self.rate = min(max(rate, 0), 1)
        var system = SystemRandomNumberGenerator()
        self.generator = SplitMix64(seed: seed ?? system.next())
    }

    /// Whether to drop the next datagram.
    public mutating func drops() -> Bool {
        guard rate > 0 else { return false }
        return Double(generator.next() >> 11) / Double(1 << 53) < rate
    }
}

/// A small, fast generator whose sequence is fixed by its seed (Steele, Lea and Flood's SplitMix64).
public struct SplitMix64: RandomNumberGenerator, Sendable {
    private var state: UInt64

    public init(seed: UInt64) {
        state = seed
    }

    public mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
}
