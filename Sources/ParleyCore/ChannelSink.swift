import NIOCore
import Synchronization

/// The hub's handle on one connection of a line-based door: queue, coalesced flush, bounded outbound
/// queue, goodbye-then-close. Doors differ only in their format and in what they say on overflow.
/// Every `SessionSink` method runs on the channel's event loop.
///
/// Output is gathered in one buffer per connection and handed to the channel when the loop's turn
/// flushes it (or when it reaches `writeChunk`): a member of a busy room gets its hundred messages as
/// one write of one buffer rather than a hundred trips through the pipeline. A door that writes must
/// do it through `enqueue`, so that its replies stay in order with the hub's messages.
public final class ChannelSink: SessionSink {
    /// Gathered output goes to the channel once it is this big, so the channel's writability (the
    /// outbound limit) sees it.
    static let writeChunk = 16 * 1024

    public let channel: any Channel
    /// Output not yet handed to the channel.
    // nonisolated(unsafe): read and written only on `channel.eventLoop`. Every `SessionSink` method
    // runs there (the protocol's contract, which the hub keeps by calling through the loop), and the
    // doors call `enqueue` and the flushes from their handlers, which run there too; `gather` and `handOver`
    // check it in debug builds. Inline rather than in a loop-bound box: one allocation less per connection.
    // @exclusivity(unchecked): no runtime exclusivity check per access (each copy of a message made
    // two; measured at a tenth of fan-out's throughput). Accesses cannot overlap: all are on the one
    // loop thread, and none is held across a call into other code.
    @exclusivity(unchecked) nonisolated(unsafe) private var gathered = GatheredBytes()
    /// Where `enqueue(writing:)` has a door write its reply, reused within a pass and dropped with the
    /// gathered output. Same confinement as `gathered`; its one access held across other code is the
    /// door's writer, which only appends to the buffer it is given and never calls back into a sink.
    @exclusivity(unchecked) nonisolated(unsafe) private var scratch = ByteBuffer()
    private let closeGrace: TimeAmount
    /// What a client that overflowed its outbound limit is told before it is cut off.
    private let overflowNotice: @Sendable (any WireFormat) -> ByteBuffer?
    /// Set once the connection is being closed; later output is dropped.
    private let closing = Atomic<Bool>(false)
    /// A flush is already queued on the loop: everything enqueued before it runs goes out in one write.
    private let flushScheduled = Atomic<Bool>(false)
    /// Where a sender's acknowledgement is in the loop's coming flush (`deliverAcknowledgement`).
    private let acknowledgement = Atomic<UInt8>(AcknowledgementState.none)
    private enum AcknowledgementState {
        static let none: UInt8 = 0
        /// On the turn's list of sinks to write first.
        static let queued: UInt8 = 1
        /// Written ahead of the others in this flush: everything gathered was flushed then.
        static let writtenAhead: UInt8 = 2
    }
    private let wantsOwnMessages: Atomic<Bool>
    /// Read by the hub on other threads; changed by the door (for example when IRC capabilities change).
    private let currentFormat: Mutex<any WireFormat>

    /// The channel's loop's turn, where queued flushes of all its connections wait to be written
    /// together; nil: each connection's flush is a task of its own.
    private let turn: NextTurn?

    public init(channel: any Channel, format: any WireFormat, closeGrace: TimeAmount, receivesOwnMessages: Bool = true,
                turn: NextTurn? = nil, overflowNotice: @escaping @Sendable (any WireFormat) -> ByteBuffer?) {
        self.channel = channel
        self.turn = turn
        self.closeGrace = closeGrace
        self.overflowNotice = overflowNotice
        self.currentFormat = Mutex(format)
        self.wantsOwnMessages = Atomic(receivesOwnMessages)
    }

    public var eventLoop: any EventLoop { channel.eventLoop }
    public var format: any WireFormat {
        get { currentFormat.withLock { $0 } }
        set {
            currentFormat.withLock { $0 = newValue }
            // After the store: a plan built from the old format sees the new epoch and is rebuilt.
            FormatEpoch.changed()
        }
    }
    public var receivesOwnMessages: Bool {
        get { wantsOwnMessages.load(ordering: .relaxed) }
        set { wantsOwnMessages.store(newValue, ordering: .relaxed) }
    }
    public var isClosing: Bool { closing.load(ordering: .relaxed) }

    public func enqueue(_ bytes: ByteBuffer) {
        bytes.withUnsafeReadableBytes { gather($0) }
    }

    /// Like `enqueue`, but `write` puts the bytes into a buffer the sink keeps for the purpose: a door's
    /// reply line needs no buffer of its own (the welcome burst is twenty of them).
    public func enqueue(writing write: (inout ByteBuffer) -> Void) {
        guard !isClosing else { return }
        scratch.clear()
        write(&scratch)
        scratch.withUnsafeReadableBytes { gather($0) }
    }

    /// Appends to the gathered output (handing it over once it is big).
    @inline(__always)
    private func gather(_ bytes: UnsafeRawBufferPointer) {
        guard !isClosing else { return }
        assertOnLoop()
        gathered.append(bytes)
        handOverIfBig()
    }

    /// The outbound limit is checked where bytes reach the channel (here, and after each flush), not
    /// per copy: a member of a busy room gets hundreds of copies a pass.
    private func handOverIfBig() {
        if gathered.count >= Self.writeChunk {
            handOver()
            enforceOutboundLimit()
        }
    }

    /// `enqueue` then `flushQueued`, from bytes lent by the hub: this runs once per copy of every
    /// message, and copying from the shared rendering costs no retain and release of its buffer.
    public func deliver(_ bytes: UnsafeRawBufferPointer) {
        gather(bytes)
        flushQueued()
    }

    /// A sender learns that its messages were accepted from their echoes. A gathered flush writes a
    /// thousand members' output one connection after another, about 10 ms in fan-out to 1,000: the
    /// senders written first send their next messages while it goes on, and the next pass carries all
    /// of them (written wherever they fell in the list, the line door's senders came back spread over
    /// that time, and passes and writes were smaller: 64 deliveries a write against the IRC door's 77,
    /// whose senders get their PONG at once).
    public func deliverAcknowledgement(_ bytes: UnsafeRawBufferPointer) {
        gather(bytes)
        flushQueued()
        guard let turn, !isClosing, acknowledgement.load(ordering: .relaxed) == AcknowledgementState.none else { return }
        acknowledgement.store(AcknowledgementState.queued, ordering: .relaxed)
        turn.flushFirst(self)
    }

    /// The flush that `deliverAcknowledgement` asked to come first is due (`flushFromTurn`, later in
    /// the same flush, resets the state).
    func flushAcknowledgement() {
        guard acknowledgement.load(ordering: .relaxed) == AcknowledgementState.queued else { return }
        flushNow()
        acknowledgement.store(AcknowledgementState.writtenAhead, ordering: .relaxed)
    }

    /// Checks the loop in debug builds only. `channel.eventLoop.assertInEventLoop()` would still call
    /// the channel's `eventLoop` getter in release builds (a retain and a release per copy).
    private func assertOnLoop() {
        assert(channel.eventLoop.inEventLoop, "a ChannelSink is used only on its channel's event loop")
    }

    /// Gives the gathered output to the channel (unflushed), leaving nothing that holds memory, so an
    /// idle connection costs nothing here.
    private func handOver() {
        assertOnLoop()
        guard let output = gathered.take(allocator: channel.allocator) else { return }
        scratch = ByteBuffer()
        channel.write(output, promise: nil)
    }

    /// Producer-consumer with a bound: a client whose queue is over the limit even after a flush (so it
    /// is not reading) is cut off, not buffered forever. Doors call this after their own replies too.
    public func enforceOutboundLimit() {
        guard !channel.isWritable, !isClosing else { return }
        handOver()
        channel.flush()
        if !channel.isWritable {
            disconnect(finalBytes: overflowNotice(format))
        }
    }

    /// A peer's address as the hub records it: `IP:PORT`, `[IPv6]:PORT`, or `unknown`.
    public static func describe(_ address: SocketAddress?) -> String {
        guard let address, let ip = address.ipAddress else { return "unknown" }
        let port = address.port ?? 0
        if case .v6 = address { return "[\(ip)]:\(port)" }
        return "\(ip):\(port)"
    }

    /// The connection closed (from either side): drop further output and let the door stop working.
    public func markClosed() {
        closing.store(true, ordering: .relaxed)
    }

    /// Coalesces: the flush waits for the loop's next turn (`NextTurn.flushSoon`; without a turn,
    /// for the tasks already queued), so a client handed many messages meanwhile (a busy room) gets
    /// them in one write, not one each.
    public func flushQueued() {
        // The load first: after a pass's first copy the flush is queued, and a plain read is cheaper
        // than the locked exchange.
        guard !isClosing, !flushScheduled.load(ordering: .relaxed),
              !flushScheduled.exchange(true, ordering: .relaxed) else { return }
        if let turn {
            turn.flushSoon(self)
            return
        }
        channel.eventLoop.execute { self.flushFromTurn() }
    }

    /// The queued flush (`flushQueued`) is due.
    func flushFromTurn() {
        flushScheduled.store(false, ordering: .relaxed)
        // Written first in this same flush, with nothing gathered since: no second flush. (Only
        // then: a sink that was not written ahead may hold output handed to the channel unflushed.)
        let state = acknowledgement.exchange(AcknowledgementState.none, ordering: .relaxed)
        if state == AcknowledgementState.writtenAhead && gathered.count == 0 { return }
        flushNow()
    }

    /// Flushes now (a door's replies to the lines of one read).
    public func flushNow() {
        guard !isClosing else { return }
        handOver()
        channel.flush()
        enforceOutboundLimit()
    }

    public func disconnect(finalBytes: ByteBuffer?) {
        guard !isClosing else { return }
        // What was gathered goes out before the goodbye.
        handOver()
        guard !closing.exchange(true, ordering: .relaxed) else { return }
        let channel = self.channel
        let close: @Sendable (Result<Void, any Error>) -> Void = { _ in channel.close(promise: nil) }
        if let finalBytes {
            channel.writeAndFlush(finalBytes).whenComplete(close)
        } else {
            channel.close(promise: nil)
        }
        // A client that does not read would keep the final write pending forever.
        channel.eventLoop.scheduleTask(in: closeGrace) { channel.close(promise: nil) }
    }
}

/// Flood control for one connection: a burst of `burst` lines, then `rate` lines a second. A client
/// in debt is paused (not read), never cut off, so nothing it sent is lost.
public struct FloodBucket: Sendable {
    public let burst: Double
    public let rate: Double
    private var tokens: Double
    private var lastRefill: NIODeadline

    /// `rate` 0 turns flood control off.
    public init(burst: Double, rate: Double, now: NIODeadline = .now()) {
        self.burst = burst
        self.rate = rate
        self.tokens = burst
        self.lastRefill = now
    }

    /// Spends one line; returns how long to pause reading, or nil when the client is within its allowance.
    public mutating func spend(now: NIODeadline = .now()) -> TimeAmount? {
        guard rate > 0 else { return nil }
        let elapsed = Double((now - lastRefill).nanoseconds) / 1e9
        tokens = min(burst, tokens + elapsed * rate)
        lastRefill = now
        tokens -= 1
        guard tokens < 0 else { return nil }
        // Bounded, so a tiny configured rate cannot overflow the conversion.
        return .nanoseconds(Int64(min((1 - tokens) / rate, 60) * 1e9))
    }
}
