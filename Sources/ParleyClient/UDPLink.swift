import NIOCore
import NIOPosix
import ParleyUDP
import Synchronization

/// How a client reaches the server's line protocol.
public enum LineTransport: Sendable {
    case tcp
    /// The UDP door (docs/udp.md).
    case udp(UDPClientOptions)
}

public struct UDPClientOptions: Sendable {
    /// The fraction of datagrams this client drops on purpose in each direction (`--loss`).
    public var loss = 0.0
    /// Makes `loss` repeatable.
    public var seed: UInt64?
    public var link: LinkConfig = {
        var link = LinkConfig()
        link.keepalive = .seconds(10)
        return link
    }()
    /// Where this client adds up its retransmissions and drops (shared by many clients of a load run).
    public var counters: UDPCounters?

    public init(loss: Double = 0, seed: UInt64? = nil, counters: UDPCounters? = nil) {
        self.loss = loss
        self.seed = seed
        self.counters = counters
    }
}

/// The client's end of a UDP session: turns the line stream the pipeline writes into numbered
/// datagrams and the server's datagrams back into the stream, so the line reader above it (and
/// `LineClient`) work as over TCP. Confined to the channel's event loop.
final class UDPLinkHandler: ChannelDuplexHandler {
    typealias InboundIn = AddressedEnvelope<ByteBuffer>
    typealias InboundOut = ByteBuffer
    typealias OutboundIn = ByteBuffer
    typealias OutboundOut = AddressedEnvelope<ByteBuffer>

    private let server: SocketAddress
    /// `HOST:PORT` as the user gave it, for error messages.
    private let serverName: String
    private let options: UDPClientOptions
    private let nonce: UInt64
    /// Succeeded by the server's welcome; failed by an error answer, a refusal or the close.
    private let handshake: EventLoopPromise<Void>
    private var link: ReliableLink?
    /// What the pipeline wrote before the welcome.
    private var early = ByteBuffer()
    private var lossIn: LossSimulator
    private var lossOut: LossSimulator
    /// The server has answered since the welcome, so it knows our address is ours.
    private var confirmed = false
    private var timerArmedAt: NIODeadline?
    /// A close asked for while lines were unacknowledged: it waits (bounded) for them.
    private var pendingClose: (promise: EventLoopPromise<Void>?, deadline: NIODeadline)?
    /// Our `bye` is out; the close completes when the server answers it (or after a few tries).
    private var farewell: (promise: EventLoopPromise<Void>?, tries: Int)?
    private var ended = false

    private static let connections = Atomic<UInt64>(0)

    init(server: SocketAddress, serverName: String, options: UDPClientOptions, handshake: EventLoopPromise<Void>) {
        self.server = server
        self.serverName = serverName
        self.options = options
        self.handshake = handshake
        var generator = SystemRandomNumberGenerator()
        nonce = generator.next()
        // Each connection of a process draws its own sequence from the seed (the first one the seed's
        // own), or all the clients of a load run would lose the same datagrams at the same moments.
        let seed = options.seed.map { $0 &+ UDPLinkHandler.connections.add(1, ordering: .relaxed).oldValue &* 0x9E37_79B9_7F4A_7C15 }
        lossIn = LossSimulator(rate: options.loss, seed: seed)
        lossOut = LossSimulator(rate: options.loss, seed: seed.map { $0 &+ 1 })
    }

    func channelActive(context: ChannelHandlerContext) {
        sendHello(context, attempt: 1)
        context.fireChannelActive()
    }

    func channelInactive(context: ChannelHandlerContext) {
        ended = true
        handshake.fail(LineClientError.closed)
        pendingClose?.promise?.succeed()
        pendingClose = nil
        farewell?.promise?.succeed()
        farewell = nil
        context.fireChannelInactive()
    }

    private func sendHello(_ context: ChannelHandlerContext, attempt: Int) {
        guard link == nil, !ended else { return }
        var payload = ByteBuffer()
        payload.writeInteger(nonce)
        send(Packet(.hello, token: 0, payload: payload), context)
        context.flush()
        // The hello or the welcome may be lost: ask again, backing off.
        let bound = NIOLoopBound((self, context), eventLoop: context.eventLoop)
        context.eventLoop.scheduleTask(in: options.link.retryInterval(after: attempt, cap: options.link.maximumTimeout)) {
            let (handler, context) = bound.value
            handler.sendHello(context, attempt: attempt + 1)
        }
    }

    /// After the welcome: pings until the server answers. The server sends nothing but welcomes to an
    /// address that has not shown it received one.
    private func confirm(_ context: ChannelHandlerContext, attempt: Int) {
        guard let link, !confirmed, !ended else { return }
        send(link.control(.ping), context)
        context.flush()
        let bound = NIOLoopBound((self, context), eventLoop: context.eventLoop)
        context.eventLoop.scheduleTask(in: options.link.retryInterval(after: attempt, cap: options.link.maximumTimeout)) {
            let (handler, context) = bound.value
            handler.confirm(context, attempt: attempt + 1)
        }
    }

    // MARK: Input

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        let envelope = unwrapInboundIn(data)
        guard envelope.remoteAddress == server, !ended else { return }
        options.counters?.datagramsReceived.add(1, ordering: .relaxed)
        if lossIn.drops() {
            options.counters?.simulatedLossIn.add(1, ordering: .relaxed)
            return
        }
        guard let packet = try? Packet.decode(envelope.data) else {
            options.counters?.droppedMalformed.add(1, ordering: .relaxed)
            return
        }
        switch packet.kind {
        case .welcome:
            guard link == nil, packet.payload.getInteger(at: packet.payload.readerIndex, as: UInt64.self) == nonce else { return }
            var link = ReliableLink(token: packet.token, config: options.link, now: .now())
            link.write(early)
            early = ByteBuffer()
            self.link = link
            handshake.succeed()
            confirm(context, attempt: 1)
        case .error:
            let text = String(buffer: packet.payload)
            if link == nil {
                handshake.fail(LineClientError.connectFailed("the server refused the UDP session: \(text)"))
                context.close(promise: nil)
            } else if packet.token == link?.token {
                // Shown to the reader as the line protocol shows errors.
                context.fireChannelRead(wrapInboundOut(ByteBuffer(string: "ERR udp \(text)\n")))
            }
        case .bye, .reset:
            guard let link, packet.token == link.token else { return }
            if let farewell {
                // The answer to our goodbye.
                self.farewell = nil
                ended = true
                context.close(promise: farewell.promise)
                return
            }
            // The server ended the session (a goodbye, or it no longer knows it); a goodbye is answered.
            if packet.kind == .bye { send(link.control(.bye), context) }
            context.flush()
            ended = true
            context.close(promise: nil)
        case .data, .ack, .ping:
            guard packet.token == link?.token, farewell == nil else { return }
            confirmed = true
            // `link` is changed in place, never through a copy: a handler above may write (and so
            // change the link) from inside `fireChannelRead`.
            switch link?.receive(packet, now: .now()) {
            case .duplicate: options.counters?.droppedDuplicate.add(1, ordering: .relaxed)
            case .outOfWindow: options.counters?.droppedOutOfWindow.add(1, ordering: .relaxed)
            case .new, .control, nil: break
            }
            while let payload = link?.nextDelivery() {
                context.fireChannelRead(wrapInboundOut(payload))
            }
            finishCloseIfDrained(context)
        case .hello:
            return
        }
    }

    func channelReadComplete(context: ChannelHandlerContext) {
        flushLink(context)
        context.fireChannelReadComplete()
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        // A connected datagram socket reports ICMP "port unreachable" as a refused connection.
        if link == nil {
            handshake.fail(LineClientError.connectFailed("\(serverName) (UDP): \(describeConnectError(error))"))
        }
        context.close(promise: nil)
    }

    // MARK: Output

    func write(context: ChannelHandlerContext, data: NIOAny, promise: EventLoopPromise<Void>?) {
        let bytes = unwrapOutboundIn(data)
        guard !ended, pendingClose == nil, farewell == nil else {
            promise?.fail(LineClientError.closed)
            return
        }
        if link == nil {
            early.writeImmutableBuffer(bytes)
        } else {
            link?.write(bytes)
        }
        promise?.succeed()
    }

    func flush(context: ChannelHandlerContext) {
        flushLink(context)
    }

    func close(context: ChannelHandlerContext, mode: CloseMode, promise: EventLoopPromise<Void>?) {
        if let pending = pendingClose?.promise ?? farewell?.promise {
            pending.futureResult.cascade(to: promise)
            return
        }
        guard mode == .all, let link, !ended else {
            ended = true
            context.close(mode: mode, promise: promise)
            return
        }
        guard !link.isDrained else {
            sayGoodbye(context, promise: promise)
            return
        }
        // Lines still on their way: let them be acknowledged first, for a bounded time.
        pendingClose = (promise ?? context.eventLoop.makePromise(), .now() + .seconds(2))
        armTimer(context, at: pendingClose?.deadline ?? .now())
    }

    /// Sends `bye` until the server answers (a few tries, backing off), then closes.
    private func sayGoodbye(_ context: ChannelHandlerContext, promise: EventLoopPromise<Void>?) {
        guard let link, !ended else {
            context.close(promise: promise)
            return
        }
        let tries = (farewell?.tries ?? 0) + 1
        farewell = (farewell?.promise ?? promise ?? context.eventLoop.makePromise(), tries)
        send(link.control(.bye), context)
        context.flush()
        let bound = NIOLoopBound((self, context), eventLoop: context.eventLoop)
        context.eventLoop.scheduleTask(in: options.link.retryInterval(after: tries, cap: LinkConfig.goodbyeCap)) {
            let (handler, context) = bound.value
            guard let farewell = handler.farewell, !handler.ended else { return }
            if farewell.tries >= LinkConfig.goodbyeTries {
                // No answer: the server will forget the session after its idle timeout anyway.
                handler.farewell = nil
                handler.ended = true
                context.close(promise: farewell.promise)
            } else {
                handler.sayGoodbye(context, promise: nil)
            }
        }
    }

    private func finishCloseIfDrained(_ context: ChannelHandlerContext) {
        guard let pending = pendingClose, let link, link.isDrained || NIODeadline.now() >= pending.deadline else { return }
        pendingClose = nil
        sayGoodbye(context, promise: pending.promise)
    }

    private func flushLink(_ context: ChannelHandlerContext) {
        guard let current = link, !ended else { return }
        let now = NIODeadline.now()
        if current.isIdle(now: now) {
            // Nothing heard for the idle timeout: the server is gone.
            ended = true
            context.close(promise: nil)
            return
        }
        var packets: [Packet] = []
        let retransmitted = link?.collect(now: now, into: &packets) ?? 0
        if retransmitted > 0 { options.counters?.retransmissions.add(retransmitted, ordering: .relaxed) }
        for packet in packets { send(packet, context) }
        if !packets.isEmpty { context.flush() }
        armTimer(context, at: link?.nextDeadline ?? now)
    }

    private func armTimer(_ context: ChannelHandlerContext, at deadline: NIODeadline) {
        let now = NIODeadline.now()
        if let armed = timerArmedAt, armed <= deadline, armed > now { return }
        timerArmedAt = deadline
        let bound = NIOLoopBound((self, context), eventLoop: context.eventLoop)
        context.eventLoop.scheduleTask(deadline: deadline) {
            let (handler, context) = bound.value
            if handler.timerArmedAt == deadline { handler.timerArmedAt = nil }
            handler.finishCloseIfDrained(context)
            handler.flushLink(context)
        }
    }

    private func send(_ packet: Packet, _ context: ChannelHandlerContext) {
        if lossOut.drops() {
            options.counters?.simulatedLossOut.add(1, ordering: .relaxed)
            return
        }
        options.counters?.datagramsSent.add(1, ordering: .relaxed)
        let data = packet.encoded(allocator: context.channel.allocator)
        context.write(wrapOutboundOut(AddressedEnvelope(remoteAddress: server, data: data)), promise: nil)
    }
}

extension LineClient {
    /// Opens a UDP session with the server's UDP door; the returned client works as one over TCP.
    static func connectUDP(
        host: String,
        port: Int,
        options: UDPClientOptions,
        group: any EventLoopGroup,
        connectTimeout: Duration
    ) async throws -> LineClient {
        let server: SocketAddress
        do {
            server = try SocketAddress.makeAddressResolvingHost(host, port: port)
        } catch {
            throw LineClientError.connectFailed("\(host):\(port): cannot resolve \(host): \(error)")
        }
        let eventLoop = group.next()
        let inbox = LineInbox(eventLoop: eventLoop)
        let handshake = eventLoop.makePromise(of: Void.self)
        let bootstrap = DatagramBootstrap(group: eventLoop)
            .channelOption(.socketOption(.so_rcvbuf), value: 1 << 20)
            .channelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.addHandler(UDPLinkHandler(server: server, serverName: "\(host):\(port)", options: options, handshake: handshake))
                    try channel.pipeline.syncOperations.addHandler(LineSplitter(inbox: inbox))
                }
            }
        let channel: any Channel
        do {
            channel = try await bootstrap.connect(to: server).get()
        } catch {
            handshake.fail(LineClientError.closed)
            throw LineClientError.connectFailed("\(host):\(port): \(describeConnectError(error))")
        }
        let timeout = eventLoop.scheduleTask(in: TimeAmount(connectTimeout)) {
            handshake.fail(LineClientError.connectFailed(
                "\(host):\(port): no answer to the UDP handshake in \(connectTimeout) (is a udp:// listener running there?)"))
        }
        do {
            try await handshake.futureResult.get()
            timeout.cancel()
        } catch {
            timeout.cancel()
            try? await channel.close()
            if case LineClientError.closed = error {
                throw LineClientError.connectFailed("\(host):\(port): the UDP session closed during the handshake")
            }
            throw error
        }
        return LineClient(channel: channel, inbox: inbox)
    }

    /// Connects over `transport`.
    public static func connect(
        host: String, port: Int, transport: LineTransport,
        group: any EventLoopGroup = MultiThreadedEventLoopGroup.singleton, connectTimeout: Duration = .seconds(10)
    ) async throws -> LineClient {
        switch transport {
        case .tcp:
            return try await connect(host: host, port: port, group: group, connectTimeout: connectTimeout)
        case .udp(let options):
            return try await connectUDP(host: host, port: port, options: options, group: group, connectTimeout: connectTimeout)
        }
    }
}
