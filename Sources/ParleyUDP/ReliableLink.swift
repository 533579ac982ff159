import NIOCore

/// Timing and size limits of a reliable link.
public struct LinkConfig: Sendable {
    /// The retransmission timeout before any round trip has been measured.
    public var initialTimeout = TimeAmount.milliseconds(100)
    /// The floor of the measured timeout (loopback round trips are far below any useful timer).
    public var minimumTimeout = TimeAmount.milliseconds(20)
    /// The cap of the exponential backoff, unless twice the measured timeout is longer (a slow path).
    public var maximumTimeout = TimeAmount.milliseconds(250)
    /// Nothing heard from the peer for this long: the session is over.
    public var idleTimeout = TimeAmount.seconds(30)
    /// Send a ping when nothing was sent for this long (the client's side; the server only answers).
    public var keepalive: TimeAmount? = nil
    public var maxPayload = Packet.maxPayload
    public var window = Packet.window

    public init() {}

    /// How often a `bye` is sent before the other side is taken to be gone: with a third of datagrams
    /// lost, all eight are lost once in 15,000 sessions.
    public static let goodbyeTries = 8
    /// The longest wait between two `bye`s.
    public static let goodbyeCap = TimeAmount.seconds(1)
    /// How often an ending session's last lines are sent before the client is taken to be gone: a
    /// try fails when the datagram or its acknowledgement is lost, so with a third of datagrams lost
    /// each way all sixteen fail once in 50,000 sessions.
    public static let lastLinesTries = 16

    /// The wait after the n-th try (from 1) of a control datagram repeated until answered (`hello`,
    /// the `ping` that confirms a welcome, `bye`): the initial timeout, doubling, at most `cap`.
    public func retryInterval(after attempt: Int, cap: TimeAmount) -> TimeAmount {
        min(initialTimeout * Int64(1 << min(max(attempt, 1) - 1, 10)), cap)
    }
}

/// One end of a reliable, ordered byte stream over datagrams: numbering, cumulative and selective
/// acknowledgements, retransmission with exponential backoff, duplicate suppression and a window.
/// It does no I/O and reads no clock: the caller passes datagrams in, asks for datagrams to send, and
/// says what time it is, so that tests can drive it deterministically.
public struct ReliableLink: Sendable {
    public let token: UInt64
    public let config: LinkConfig

    // MARK: Sending side

    private struct Flight: Sendable {
        let seq: UInt32
        let payload: ByteBuffer
        var sentAt: NIODeadline
        var deadline: NIODeadline
        /// This datagram's current timeout; doubles on each expiry, up to the cap.
        var timeout: TimeAmount
        var transmissions = 1
        /// The peer holds it (selective ack) but has not yet acknowledged it cumulatively.
        var heldByPeer = false
        /// Retransmitted early because later datagrams were acknowledged (once per datagram).
        var fastRetransmitted = false
        /// Due now, before its timeout: the peer holds three later datagrams but not this one.
        var dueEarly = false
    }

    private var nextSeq: UInt32 = 1
    /// Unacknowledged datagrams, in sequence order, contiguous from the peer's ack + 1.
    private var flights = CircularBuffer<Flight>()
    private var bytesInFlight = 0
    /// Stream bytes not yet put into a datagram.
    private var outbound = ByteBuffer()
    private var smoothedRTT: Double?
    private var rttVariance = 0.0
    /// The timeout the round trips call for (RFC 6298), or the initial one before any was measured.
    private var estimate: TimeAmount
    /// The timeout new datagrams get: the estimate; before the first measurement, backed off after a
    /// timeout (as RFC 6298 5.5-5.7 does), so a path slower than the initial guess is measured at all.
    private var timeout: TimeAmount

    // MARK: Receiving side

    /// Every sequence number up to this one has been handed over, in order.
    private var delivered: UInt32 = 0
    /// Received datagrams not yet handed over (out of order, or waiting for the reader).
    private var held: [UInt32: ByteBuffer] = [:]
    /// Something arrived that the peer should hear about.
    private var ackOwed = false
    /// A duplicate arrived, so an ack of ours was lost: the next bare ack goes out twice.
    private var ackTwice = false
    private var lastHeard: NIODeadline
    private var lastSent: NIODeadline

    public init(token: UInt64, config: LinkConfig = LinkConfig(), now: NIODeadline) {
        self.token = token
        self.config = config
        self.estimate = config.initialTimeout
        self.timeout = config.initialTimeout
        self.lastHeard = now
        self.lastSent = now
    }

    /// What became of a received data datagram.
    public enum Arrival: Equatable, Sendable {
        case new
        /// Already received (a retransmission or a replay); dropped, and acknowledged again.
        case duplicate
        /// Beyond the window; dropped (the sender will retransmit it).
        case outOfWindow
        /// Not a data datagram.
        case control
    }

    // MARK: Input

    /// Takes a datagram of this session from the peer.
    public mutating func receive(_ packet: Packet, now: NIODeadline) -> Arrival {
        lastHeard = now
        acknowledge(packet.ack, packet.sack, now: now)
        switch packet.kind {
        case .data:
            ackOwed = true
            let seq = packet.seq
            if seq <= delivered || held[seq] != nil {
                ackTwice = true
                return .duplicate
            }
            if UInt64(seq) > UInt64(delivered) + UInt64(config.window) { return .outOfWindow }
            // A copy: the datagram's bytes may be a slice of a large receive buffer that should not stay pinned.
            held[seq] = ByteBuffer(bytes: packet.payload.readableBytesView)
            return .new
        case .ping:
            ackOwed = true
            return .control
        default:
            return .control
        }
    }

    /// The next payload in order, if it has arrived. Call as the reader is ready: what is not taken
    /// stays held and unacknowledged, so a slow reader closes the sender's window (flow control).
    public mutating func nextDelivery() -> ByteBuffer? {
        guard let payload = held.removeValue(forKey: delivered &+ 1) else { return nil }
        delivered &+= 1
        ackOwed = true
        return payload
    }

    private mutating func acknowledge(_ ack: UInt32, _ sack: UInt32, now: NIODeadline) {
        // An ack of something never sent is a forgery or a bug; ignore it rather than trust it.
        guard ack < nextSeq else { return }
        // The round trip is measured when a datagram is first acknowledged, cumulatively or selectively:
        // a cumulative ack that moves only once a hole is filled says nothing about the datagrams it
        // covers late. Karn's rule: a datagram sent more than once gives no sample at all.
        var sample: TimeAmount?
        while let first = flights.first, first.seq <= ack {
            let flight = flights.removeFirst()
            bytesInFlight -= flight.payload.readableBytes
            if flight.transmissions == 1 && !flight.heldByPeer { sample = now - flight.sentAt }
        }
        if sack != 0 {
            for index in flights.indices {
                let offset = flights[index].seq &- ack &- 1
                if offset < 32, sack & (1 << offset) != 0, !flights[index].heldByPeer {
                    flights[index].heldByPeer = true
                    flights[index].dueEarly = false
                    if flights[index].transmissions == 1 { sample = now - flights[index].sentAt }
                }
            }
        }
        if let sample { measured(sample) }
        guard sack != 0 else { return }
        // A datagram the peer lacks while it holds three later ones is lost: resend it now, not at its timeout.
        var laterHeld = 0
        for index in flights.indices.reversed() {
            if flights[index].heldByPeer {
                laterHeld += 1
            } else if laterHeld >= 3 && !flights[index].fastRetransmitted {
                flights[index].fastRetransmitted = true
                flights[index].dueEarly = true
            }
        }
    }

    /// RFC 6298's estimator, clamped to the configured floor and cap.
    private mutating func measured(_ sample: TimeAmount) {
        let seconds = Double(sample.nanoseconds) / 1e9
        if let smoothed = smoothedRTT {
            rttVariance = 0.75 * rttVariance + 0.25 * abs(smoothed - seconds)
            smoothedRTT = 0.875 * smoothed + 0.125 * seconds
        } else {
            smoothedRTT = seconds
            rttVariance = seconds / 2
        }
        let measured = TimeAmount.nanoseconds(Int64(min(((smoothedRTT ?? seconds) + 4 * rttVariance), 60) * 1e9))
        estimate = max(measured, config.minimumTimeout)
        timeout = estimate
    }

    /// How far a timeout may back off: the configured cap, or twice the estimate on a slower path.
    private var backoffCap: TimeAmount { max(config.maximumTimeout, estimate * 2) }

    // MARK: Output

    /// Queues bytes of this side's stream; they go out as the window allows.
    public mutating func write(_ bytes: ByteBuffer) {
        if outbound.readableBytes == 0 {
            outbound.clear()
        } else if outbound.readerIndex > 64 * 1024 {
            outbound.discardReadBytes()
        }
        outbound.writeImmutableBuffer(bytes)
    }

    /// Bytes written but not yet acknowledged by the peer.
    public var unacknowledgedBytes: Int { outbound.readableBytes + bytesInFlight }
    /// Everything written has been acknowledged.
    public var isDrained: Bool { outbound.readableBytes == 0 && flights.isEmpty }

    /// The datagrams to send now: retransmissions that are due, new data the window allows (packed
    /// up to the payload limit, cut after a line ending where one fits), an ack when one is owed and no
    /// data carries it, and a ping when the peer should be asked for an ack (a keepalive, or datagrams
    /// it holds but has not acknowledged in order for their timeout). Returns how many are retransmissions.
    @discardableResult
    public mutating func collect(now: NIODeadline, into packets: inout [Packet]) -> Int {
        let before = packets.count
        var retransmitted = 0
        var timedOut = false
        var probe = false
        for index in flights.indices where flights[index].heldByPeer && flights[index].deadline <= now {
            // The peer has it but has not taken it: the ack that says it did may be lost. Ask.
            flights[index].timeout = min(flights[index].timeout * 2, backoffCap)
            flights[index].deadline = now + flights[index].timeout
            probe = true
        }
        for index in flights.indices where !flights[index].heldByPeer && (flights[index].dueEarly || flights[index].deadline <= now) {
            flights[index].transmissions += 1
            // Exponential backoff on a timeout; an early resend keeps the timeout it had.
            if !flights[index].dueEarly {
                flights[index].timeout = min(flights[index].timeout * 2, backoffCap)
                timedOut = true
            }
            flights[index].dueEarly = false
            flights[index].deadline = now + flights[index].timeout
            flights[index].sentAt = now
            packets.append(dataPacket(flights[index]))
            retransmitted += 1
        }
        // Before the first measurement, a timeout may mean the path is slower than the initial guess:
        // new datagrams wait longer too, so that one is acknowledged before its timeout and measured.
        // After that, a timeout means a loss, and only the lost datagram backs off (random loss is not
        // congestion; backing off everything would slow a lossy path far more than it needs).
        if timedOut && smoothedRTT == nil { timeout = min(timeout * 2, backoffCap) }
        while flights.count < config.window && outbound.readableBytes > 0 && nextSeq < UInt32.max {
            let payload = takeChunk()
            let flight = Flight(seq: nextSeq, payload: payload, sentAt: now, deadline: now + timeout, timeout: timeout)
            nextSeq += 1
            bytesInFlight += payload.readableBytes
            flights.append(flight)
            packets.append(dataPacket(flight))
        }
        if ackOwed && packets.count == before {
            let ack = Packet(.ack, token: token, ack: delivered, sack: heldBits)
            packets.append(ack)
            // Under heavy loss a lost ack stalls the sender for a whole timeout; a second copy is cheap.
            if ackTwice { packets.append(ack) }
        }
        if packets.count == before, probe || config.keepalive.map({ now - lastSent >= $0 }) == true {
            packets.append(Packet(.ping, token: token, ack: delivered, sack: heldBits))
        }
        if packets.count > before {
            ackOwed = false
            ackTwice = false
            lastSent = now
        }
        return retransmitted
    }

    /// A control datagram of this session (ping, bye) carrying the current acknowledgement.
    public func control(_ kind: Packet.Kind) -> Packet {
        Packet(kind, token: token, ack: delivered, sack: heldBits)
    }

    private func dataPacket(_ flight: Flight) -> Packet {
        Packet(.data, token: token, seq: flight.seq, ack: delivered, sack: heldBits, payload: flight.payload)
    }

    private var heldBits: UInt32 {
        var bits: UInt32 = 0
        for seq in held.keys {
            let offset = seq &- delivered &- 1
            if offset < 32 { bits |= 1 << offset }
        }
        return bits
    }

    /// Up to `maxPayload` bytes of the outbound stream, ending after a line ending when one fits.
    private mutating func takeChunk() -> ByteBuffer {
        var length = min(outbound.readableBytes, config.maxPayload)
        if length < outbound.readableBytes,
           let lastNewline = outbound.readableBytesView.prefix(length).lastIndex(of: UInt8(ascii: "\n")) {
            length = lastNewline - outbound.readerIndex + 1
        }
        // A copy, so the outbound buffer stays uniquely owned and later writes do not copy it.
        let chunk = ByteBuffer(bytes: outbound.readableBytesView.prefix(length))
        outbound.moveReaderIndex(forwardBy: length)
        return chunk
    }

    /// Whether every datagram the peer has neither acknowledged nor reported holding was sent at
    /// least `count` times (a peer that holds datagrams but does not take them is not sent them again).
    public func unacknowledgedSent(atLeast count: Int) -> Bool {
        flights.allSatisfy { $0.heldByPeer || $0.transmissions >= count }
    }

    // MARK: Time

    /// When `collect` or `isIdle` next has something to do.
    public var nextDeadline: NIODeadline {
        var next = lastHeard + config.idleTimeout
        // Invariant: whatever this reports as due, `collect` sends (else a timer would fire forever).
        for flight in flights { next = min(next, flight.dueEarly && !flight.heldByPeer ? lastSent : flight.deadline) }
        if let keepalive = config.keepalive { next = min(next, lastSent + keepalive) }
        return next
    }

    /// Nothing was heard from the peer for the idle timeout.
    public func isIdle(now: NIODeadline) -> Bool {
        now - lastHeard >= config.idleTimeout
    }
}
