import Synchronization

/// Server-wide counters of the UDP doors, exact under any interleaving (shown by the console's `count`).
public final class UDPCounters: Sendable {
    public let activeSessions = Atomic<Int>(0)
    public let sessionsOpened = Atomic<Int>(0)
    /// Sessions ended because nothing was heard from the client for the idle timeout.
    public let sessionsTimedOut = Atomic<Int>(0)
    public let datagramsReceived = Atomic<Int>(0)
    public let datagramsSent = Atomic<Int>(0)
    public let retransmissions = Atomic<Int>(0)
    /// Too short, wrong magic, unknown version or type.
    public let droppedMalformed = Atomic<Int>(0)
    /// A payload over the limit.
    public let droppedOversize = Atomic<Int>(0)
    /// A token no session has, or a session's token from another address.
    public let droppedUnknownSession = Atomic<Int>(0)
    /// Data already received: a retransmission whose ack was lost, or a replay.
    public let droppedDuplicate = Atomic<Int>(0)
    /// Data beyond the window.
    public let droppedOutOfWindow = Atomic<Int>(0)
    /// Dropped on purpose by `--udp-loss`, on the way in and on the way out.
    public let simulatedLossIn = Atomic<Int>(0)
    public let simulatedLossOut = Atomic<Int>(0)

    public init() {}

    public var dropped: Int {
        droppedMalformed.load(ordering: .relaxed) + droppedOversize.load(ordering: .relaxed)
            + droppedUnknownSession.load(ordering: .relaxed) + droppedDuplicate.load(ordering: .relaxed)
            + droppedOutOfWindow.load(ordering: .relaxed)
    }

    /// One line for the console: `udp-sessions N udp-datagrams-in N ... `.
    public var summary: String { "udp-sessions \(activeSessions.load(ordering: .relaxed)) " + traffic }

    /// The datagram counters alone (a client has no sessions to count).
    public var traffic: String {
        func value(_ counter: borrowing Atomic<Int>) -> Int { counter.load(ordering: .relaxed) }
        return "udp-datagrams-in \(value(datagramsReceived)) udp-datagrams-out \(value(datagramsSent))"
            + " udp-retransmits \(value(retransmissions)) udp-dropped \(dropped)"
            + " (malformed \(value(droppedMalformed)), oversize \(value(droppedOversize)), unknown-session \(value(droppedUnknownSession)),"
            + " duplicate \(value(droppedDuplicate)), out-of-window \(value(droppedOutOfWindow)))"
            + " udp-simulated-loss in \(value(simulatedLossIn)) out \(value(simulatedLossOut))"
            + " udp-timeouts \(value(sessionsTimedOut))"
    }
}
