import NIOCore
import ParleyCore
import ParleyLine
import ParleyUDP
import Synchronization

public struct UDPDoorConfig: Sendable {
    public var link = LinkConfig()
    /// The fraction of datagrams dropped on purpose in each direction (`--udp-loss`).
    public var loss = 0.0
    /// Makes the simulated loss repeatable (`--udp-seed`).
    public var seed: UInt64?
    /// Sessions one listener keeps at once; a hello beyond that is refused with an error datagram.
    public var maxSessions = 10_000
    /// How long an ending session waits for its last lines to be acknowledged before it is freed anyway
    /// (longer than the TCP doors' 2 s: on a lossy path the last lines may need several tries). It
    /// waits longer while they have been sent fewer than `LinkConfig.lastLinesTries` times (a slow
    /// path or a busy machine), but never beyond the idle timeout.
    public var closeGrace = TimeAmount.seconds(4)

    public init() {}
}

/// The UDP door: one datagram channel carrying many sessions, each a reliable line stream (see
/// docs/udp.md) driving an ordinary `LineSession`. Everything here runs on the channel's event loop.
final class UDPDoorHandler: ChannelInboundHandler {
    typealias InboundIn = AddressedEnvelope<ByteBuffer>
    typealias OutboundOut = AddressedEnvelope<ByteBuffer>

    private let hub: Hub
    private let lineConfig: LineDoorConfig
    private let config: UDPDoorConfig
    private let counters: UDPCounters
    private let outboundLimit: Int
    /// Succeeded once the server is shutting down and every session has ended.
    private let drained: EventLoopPromise<Void>

    private var context: ChannelHandlerContext?
    private var sessions: [UInt64: UDPPeer] = [:]
    /// A hello's (address, nonce) to the session it opened, so a repeated hello gets the same answer.
    private var handshakes: [Handshake: UInt64] = [:]
    private var lossIn: LossSimulator
    private var lossOut: LossSimulator
    /// Sessions with something to send once the current batch of reads is handled.
    private var pendingFlush: [UDPPeer] = []
    private var wroteSinceFlush = false
    private var stopping = false

    struct Handshake: Hashable {
        let address: SocketAddress
        let nonce: UInt64
    }

    init(hub: Hub, lineConfig: LineDoorConfig, config: UDPDoorConfig, counters: UDPCounters, outboundLimit: Int,
         drained: EventLoopPromise<Void>) {
        self.hub = hub
        self.lineConfig = lineConfig
        self.config = config
        self.counters = counters
        self.outboundLimit = outboundLimit
        self.drained = drained
        lossIn = LossSimulator(rate: config.loss, seed: config.seed)
        lossOut = LossSimulator(rate: config.loss, seed: config.seed.map { $0 &+ 1 })
    }

    func handlerAdded(context: ChannelHandlerContext) {
        self.context = context
    }

    func handlerRemoved(context: ChannelHandlerContext) {
        for peer in Array(sessions.values) { free(peer) }
        self.context = nil
        drained.succeed()
    }

    // MARK: Input

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        let envelope = unwrapInboundIn(data)
        counters.datagramsReceived.add(1, ordering: .relaxed)
        if lossIn.drops() {
            counters.simulatedLossIn.add(1, ordering: .relaxed)
            return
        }
        let packet: Packet
        do {
            packet = try Packet.decode(envelope.data)
        } catch {
            refuse(envelope, error)
            return
        }
        if packet.kind == .hello {
            hello(packet, from: envelope.remoteAddress)
            return
        }
        guard let peer = sessions[packet.token], peer.address == envelope.remoteAddress else {
            counters.droppedUnknownSession.add(1, ordering: .relaxed)
            // Tell the client its session is gone (a timeout, a restart), unless this is already an ending.
            if [.data, .ack, .ping].contains(packet.kind) { send(Packet(.reset, token: packet.token), to: envelope.remoteAddress) }
            if packet.kind == .bye { send(Packet(.bye, token: packet.token), to: envelope.remoteAddress) }
            return
        }
        receive(packet, for: peer)
    }

    func channelReadComplete(context: ChannelHandlerContext) {
        let peers = pendingFlush
        pendingFlush.removeAll(keepingCapacity: true)
        for peer in peers {
            peer.flushPending = false
            flush(peer)
        }
        flushChannel()
    }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if event is ServerShuttingDown {
            stopping = true
            // Sessions that never confirmed their address are not in the hub, so nobody else ends them.
            for peer in sessions.values where !peer.confirmed { free(peer) }
            if sessions.isEmpty { drained.succeed() }
        }
        context.fireUserInboundEventTriggered(event)
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        // A datagram socket reports errors such as ICMP port unreachable for one peer; the door serves on.
    }

    /// A datagram that did not decode: counted, and answered when the sender can use the answer.
    private func refuse(_ envelope: AddressedEnvelope<ByteBuffer>, _ error: Packet.DecodeError) {
        switch error {
        case .oversize(let bytes):
            counters.droppedOversize.add(1, ordering: .relaxed)
            let token = envelope.data.getInteger(at: envelope.data.readerIndex + 4, as: UInt64.self) ?? 0
            sendError("A datagram carries at most \(Packet.maxPayload) payload bytes; yours had \(bytes) and was dropped. Split it.",
                      token: token, to: envelope.remoteAddress)
        case .unsupportedVersion(let version):
            counters.droppedMalformed.add(1, ordering: .relaxed)
            sendError("Protocol version \(version) is not supported; this server speaks version \(Packet.version).",
                      token: 0, to: envelope.remoteAddress)
        case .malformed, .unknownKind:
            // Not ours, or garbage: answering could feed a loop between two programs.
            counters.droppedMalformed.add(1, ordering: .relaxed)
        }
        flushChannel()
    }

    private func hello(_ packet: Packet, from address: SocketAddress) {
        guard let context, packet.payload.readableBytes == 8, let nonce = packet.payload.getInteger(at: packet.payload.readerIndex, as: UInt64.self) else {
            counters.droppedMalformed.add(1, ordering: .relaxed)
            return
        }
        let handshake = Handshake(address: address, nonce: nonce)
        if let token = handshakes[handshake], sessions[token] != nil {
            // Our welcome was lost: say it again, the session is already there.
            send(Packet(.welcome, token: token, payload: packet.payload), to: address)
            flushChannel()
            return
        }
        guard !stopping else {
            sendError("The server is shutting down; try again later.", token: 0, to: address)
            flushChannel()
            return
        }
        guard sessions.count < config.maxSessions else {
            sendError("The server has \(config.maxSessions) UDP sessions, its limit; try again later.", token: 0, to: address)
            flushChannel()
            return
        }
        var generator = SystemRandomNumberGenerator()
        var token = generator.next() as UInt64
        while token == 0 || sessions[token] != nil { token = generator.next() }

        let now = NIODeadline.now()
        let peer = UDPPeer(token: token, address: address, handshake: handshake, link: ReliableLink(token: token, config: config.link, now: now))
        let eventLoop = context.eventLoop
        let limit = outboundLimit
        let sink = UDPSessionSink(eventLoop: eventLoop, peer: peer, door: self, outboundLimit: limit)
        let line = LineSession(hub: hub, config: lineConfig, sink: sink)
        peer.sink = sink
        peer.line = line
        line.onInputWanted = { [unowned self, unowned peer] in
            self.deliverInput(peer)
            self.flush(peer)
            self.flushChannel()
        }
        sessions[token] = peer
        handshakes[handshake] = token
        counters.sessionsOpened.add(1, ordering: .relaxed)
        counters.activeSessions.add(1, ordering: .relaxed)

        send(Packet(.welcome, token: token, payload: packet.payload), to: address)
        armTimer(peer, now: now)
        flushChannel()
    }

    private func receive(_ packet: Packet, for peer: UDPPeer) {
        if let farewell = peer.farewell {
            // Our goodbye is out: the client's answers it; anything else means it was lost.
            if packet.kind == .bye {
                free(peer)
            } else if farewell.tries < LinkConfig.goodbyeTries {
                send(peer.link.control(.bye), to: peer.address)
                flushChannel()
            }
            return
        }
        switch packet.kind {
        case .bye:
            _ = peer.link.receive(packet, now: .now())
            send(Packet(.bye, token: peer.token), to: peer.address)
            free(peer)
            flushChannel()
            return
        case .hello, .welcome, .reset, .error:
            counters.droppedMalformed.add(1, ordering: .relaxed)
            return
        case .data, .ack, .ping:
            break
        }
        // The client has the token at the address it said hello from: the address is its own. Only
        // now does the session join the hub, so a forged hello costs a slot here and nothing more.
        if !peer.confirmed {
            peer.confirmed = true
            peer.line?.start(door: "udp", address: ChannelSink.describe(peer.address))
        }
        switch peer.link.receive(packet, now: .now()) {
        case .duplicate: counters.droppedDuplicate.add(1, ordering: .relaxed)
        case .outOfWindow: counters.droppedOutOfWindow.add(1, ordering: .relaxed)
        case .new, .control: break
        }
        deliverInput(peer)
        if peer.closingSince != nil && peer.link.isDrained {
            finishClosing(peer)
            return
        }
        if !peer.flushPending {
            peer.flushPending = true
            pendingFlush.append(peer)
        }
    }

    /// Hands the session's in-order payloads to its line session while it takes input.
    private func deliverInput(_ peer: UDPPeer) {
        guard let line = peer.line, !peer.sink.isClosing else { return }
        while line.shouldReadInput(), let payload = peer.link.nextDelivery() {
            line.received(payload)
            if peer.line == nil || peer.sink.isClosing { return }
        }
    }

    // MARK: Output

    /// Sends what the session's link has due: retransmissions, new data, acks; then re-arms its timer.
    func flush(_ peer: UDPPeer) {
        guard sessions[peer.token] === peer else { return }
        let now = NIODeadline.now()
        // Nothing goes to an address that has not answered the welcome: a forged hello gets one
        // welcome back, not a stream of lines and retransmissions.
        guard peer.confirmed else {
            armTimer(peer, now: now)
            return
        }
        var packets: [Packet] = []
        let retransmitted = peer.link.collect(now: now, into: &packets)
        if retransmitted > 0 { counters.retransmissions.add(retransmitted, ordering: .relaxed) }
        for packet in packets { send(packet, to: peer.address) }
        armTimer(peer, now: now)
    }

    private func armTimer(_ peer: UDPPeer, now: NIODeadline) {
        var deadline = peer.link.nextDeadline
        // A grace period already over is not a deadline: the retransmissions' own deadlines wake the peer.
        if let closingSince = peer.closingSince, closingSince + config.closeGrace > now {
            deadline = min(deadline, closingSince + config.closeGrace)
        }
        if let farewell = peer.farewell { deadline = farewell.next }
        if let armed = peer.timerArmedAt, armed <= deadline, armed > now { return }
        peer.timerArmedAt = deadline
        let armedAt = deadline
        let bound = NIOLoopBound((self, peer), eventLoop: peer.sink.eventLoop)
        // A timer armed later than this one is left to fire and find nothing to do (cancelling is a
        // search of the loop's timer queue); the newest is cancelled when the session is freed.
        peer.timer = peer.sink.eventLoop.scheduleTask(deadline: deadline) {
            let (door, peer) = bound.value
            if peer.timerArmedAt == armedAt { peer.timerArmedAt = nil }
            door.timerFired(peer)
        }
    }

    private func timerFired(_ peer: UDPPeer) {
        guard sessions[peer.token] === peer else { return }
        let now = NIODeadline.now()
        if let farewell = peer.farewell {
            guard now >= farewell.next else { return armTimer(peer, now: now) }
            if farewell.tries >= LinkConfig.goodbyeTries {
                // No answer to any of our goodbyes: the client is gone.
                free(peer)
            } else {
                sayGoodbye(peer, now: now)
                flushChannel()
            }
            return
        }
        if peer.link.isIdle(now: now) {
            counters.sessionsTimedOut.add(1, ordering: .relaxed)
            free(peer)
            return
        }
        if let closingSince = peer.closingSince, peer.link.isDrained || lastLinesGivenUp(peer, closingSince: closingSince, now: now) {
            finishClosing(peer)
            flushChannel()
            return
        }
        flush(peer)
        flushChannel()
    }

    private func send(_ packet: Packet, to address: SocketAddress) {
        guard let context else { return }
        if lossOut.drops() {
            counters.simulatedLossOut.add(1, ordering: .relaxed)
            return
        }
        counters.datagramsSent.add(1, ordering: .relaxed)
        let data = packet.encoded(allocator: context.channel.allocator)
        context.write(wrapOutboundOut(AddressedEnvelope(remoteAddress: address, data: data)), promise: nil)
        wroteSinceFlush = true
    }

    private func sendError(_ text: String, token: UInt64, to address: SocketAddress) {
        send(Packet(.error, token: token, payload: ByteBuffer(string: text)), to: address)
    }

    func flushChannel() {
        guard wroteSinceFlush, let context else { return }
        wroteSinceFlush = false
        context.flush()
    }

    // MARK: Ending

    /// The hub or the line session ends the session: its last lines go out, then a bye once they are
    /// acknowledged (or after the grace period), then its state is freed.
    func beginClosing(_ peer: UDPPeer, finalBytes: ByteBuffer?) {
        guard sessions[peer.token] === peer, peer.closingSince == nil else { return }
        if let finalBytes { peer.link.write(finalBytes) }
        peer.closingSince = .now()
        flush(peer)
        flushChannel()
    }

    /// An ending session's last lines are not all acknowledged, and the client is taken to be gone or
    /// not reading: the grace period is over and every line it lacks was sent `lastLinesTries` times
    /// (on a busy machine or a slow path a time limit alone would drop lines a live client is about
    /// to get), or the idle timeout has passed since the close began.
    private func lastLinesGivenUp(_ peer: UDPPeer, closingSince: NIODeadline, now: NIODeadline) -> Bool {
        if now >= closingSince + max(config.closeGrace, config.link.idleTimeout) { return true }
        return now >= closingSince + config.closeGrace && peer.link.unacknowledgedSent(atLeast: LinkConfig.lastLinesTries)
    }

    /// The session's last lines are acknowledged (or the client is taken to be gone): it leaves the hub
    /// now, and the door keeps only enough of it to repeat its `bye` until the client answers.
    private func finishClosing(_ peer: UDPPeer) {
        leaveHub(peer)
        sayGoodbye(peer, now: .now())
    }

    private func sayGoodbye(_ peer: UDPPeer, now: NIODeadline) {
        let tries = (peer.farewell?.tries ?? 0) + 1
        peer.farewell = (tries, now + config.link.retryInterval(after: tries, cap: LinkConfig.goodbyeCap))
        send(peer.link.control(.bye), to: peer.address)
        armTimer(peer, now: now)
    }

    /// The hub forgets the session (the others see it quit); idempotent.
    private func leaveHub(_ peer: UDPPeer) {
        guard let line = peer.line else { return }
        counters.activeSessions.add(-1, ordering: .relaxed)
        peer.sink.markClosed()
        line.stopped()
        // Breaks the cycle peer -> line session -> sink -> peer.
        peer.line = nil
    }

    /// Forgets the session: the hub drops it, and nothing of it is left in the door.
    private func free(_ peer: UDPPeer) {
        guard sessions[peer.token] === peer else { return }
        sessions[peer.token] = nil
        if handshakes[peer.handshake] == peer.token { handshakes[peer.handshake] = nil }
        leaveHub(peer)
        peer.timer?.cancel()
        peer.timer = nil
        // Timers that are already stale may still hold the peer for a while: let them hold nothing big.
        peer.link = ReliableLink(token: peer.token, config: config.link, now: .now())
        if stopping && sessions.isEmpty { drained.succeed() }
    }

}

/// One UDP session's state in the door. Confined to the door's event loop.
final class UDPPeer {
    let token: UInt64
    let address: SocketAddress
    let handshake: UDPDoorHandler.Handshake
    var link: ReliableLink
    var line: LineSession?
    // Set right after init, before the peer is reachable from anywhere else.
    var sink: UDPSessionSink!
    /// When the session began ending: its last lines are on their way.
    var closingSince: NIODeadline?
    var timerArmedAt: NIODeadline?
    var timer: Scheduled<Void>?
    var flushPending = false
    /// A datagram other than hello came with the token from this address.
    var confirmed = false
    /// The session has left the hub and its `bye` is out: how many were sent, when to send the next.
    var farewell: (tries: Int, next: NIODeadline)?

    init(token: UInt64, address: SocketAddress, handshake: UDPDoorHandler.Handshake, link: ReliableLink) {
        self.token = token
        self.address = address
        self.handshake = handshake
        self.link = link
    }
}

/// The hub's handle on a UDP session. Every method runs on the door's event loop (the `SessionSink`
/// contract); the loop-bound references check that.
final class UDPSessionSink: LineSessionSink {
    let eventLoop: any EventLoop
    let format: any WireFormat = LineFormat.shared
    /// Weak: the peer owns its sink, and a sink owning its peer would keep every ended session alive.
    private final class PeerReference {
        weak var peer: UDPPeer?
        init(_ peer: UDPPeer) { self.peer = peer }
    }
    private let peerReference: NIOLoopBound<PeerReference>
    private let door: NIOLoopBound<UDPDoorHandler>
    private let outboundLimit: Int
    private let closing = Atomic<Bool>(false)
    private let flushScheduled = Atomic<Bool>(false)

    init(eventLoop: any EventLoop, peer: UDPPeer, door: UDPDoorHandler, outboundLimit: Int) {
        self.eventLoop = eventLoop
        self.peerReference = NIOLoopBound(PeerReference(peer), eventLoop: eventLoop)
        self.door = NIOLoopBound(door, eventLoop: eventLoop)
        self.outboundLimit = outboundLimit
    }

    var isClosing: Bool { closing.load(ordering: .relaxed) }

    func markClosed() {
        closing.store(true, ordering: .relaxed)
    }

    private var peer: UDPPeer? { peerReference.value.peer }

    func enqueue(_ bytes: ByteBuffer) {
        guard !isClosing, let peer else { return }
        peer.link.write(bytes)
        // A client that stops acknowledging is cut off, not buffered for without bound.
        if peer.link.unacknowledgedBytes > outboundLimit {
            var last = ByteBuffer(string: LineReply.err("sendq-exceeded", "You stopped acknowledging and more than your outbound limit queued up; disconnecting. Reconnect to continue.") + "\n")
            if let bye = format.render(.goodbye(.sendqExceeded)) { last.writeImmutableBuffer(bye) }
            disconnect(finalBytes: last)
        }
    }

    /// Coalesces: everything enqueued in this loop pass goes out in as few datagrams as it fits.
    func flushQueued() {
        guard !isClosing, !flushScheduled.exchange(true, ordering: .relaxed) else { return }
        eventLoop.execute {
            self.flushScheduled.store(false, ordering: .relaxed)
            self.flushNow()
        }
    }

    func flushNow() {
        guard !isClosing, let peer else { return }
        door.value.flush(peer)
        door.value.flushChannel()
    }

    func disconnect(finalBytes: ByteBuffer?) {
        guard !closing.exchange(true, ordering: .relaxed), let peer else { return }
        door.value.beginClosing(peer, finalBytes: finalBytes)
    }
}
