import NIOCore
import NIOPosix

/// A client outside the load that pings the server every `interval` while the others load it, one
/// ping at a time, on a thread of its own: its round trips show the server's delays (a blocked event
/// loop shows here), not the generator's, whose threads are busy.
struct RunningPinger {
    let client: LineClient
    let handler: Pinger
    let thread: MultiThreadedEventLoopGroup

    /// Connects, registers (IRC) or waits for the welcome (line), and starts pinging.
    static func start(host: String, port: Int, transport: LineTransport, protocolKind: LoadProtocol, nick: String,
                      interval: TimeAmount) async throws -> RunningPinger {
        let thread = MultiThreadedEventLoopGroup(numberOfThreads: 1)
        do {
            let client = try await LineClient.connect(host: host, port: port, transport: transport, group: thread)
            switch protocolKind {
            case .irc: try await registerIRC(client, nick: nick, timeout: .seconds(60))
            case .line: _ = try await client.expect(timeout: .seconds(60), "WELCOME") { $0.hasPrefix("WELCOME ") }
            }
            let handler = Pinger(protocolKind: protocolKind, interval: interval, loop: client.eventLoop)
            try await client.handOver(to: handler)
            handler.start()
            return RunningPinger(client: client, handler: handler, thread: thread)
        } catch {
            try? await thread.shutdownGracefully()
            throw error
        }
    }

    /// Stops, disconnects, and gives the round trips.
    func stop() async -> LatencyHistogram {
        let rounds = await handler.stop()
        await client.close()
        try? await thread.shutdownGracefully()
        return rounds
    }
}

/// The pinger's handler; every var is confined to its loop.
final class Pinger: ChannelInboundHandler, @unchecked Sendable {
    // @unchecked Sendable: the vars are touched only on `loop` (`start` and `stop` hop there first).
    typealias InboundIn = ByteBuffer

    private static let pongWord = Array(" PONG ".utf8)
    private let protocolKind: LoadProtocol
    private let interval: TimeAmount
    private let loop: any EventLoop
    private var context: ChannelHandlerContext?
    private var partial: [UInt8] = []
    private var sentAt: UInt64?
    private var sequence: UInt64 = 0
    private var running = false
    private var rounds = LatencyHistogram()

    init(protocolKind: LoadProtocol, interval: TimeAmount, loop: any EventLoop) {
        self.protocolKind = protocolKind
        self.interval = interval
        self.loop = loop
    }

    func handlerAdded(context: ChannelHandlerContext) { self.context = context }

    func start() {
        loop.execute { [self] in
            running = true
            ping()
        }
    }

    /// Stops pinging; gives the round trips, a ping still unanswered counted with its time so far.
    func stop() async -> LatencyHistogram {
        (try? await loop.submit { [self] in
            running = false
            if let sentAt { rounds.record(microseconds: (NIODeadline.now().uptimeNanoseconds - sentAt) / 1000) }
            sentAt = nil
            return rounds
        }.get()) ?? LatencyHistogram()
    }

    private func ping() {
        guard running, let context else { return }
        sequence += 1
        sentAt = NIODeadline.now().uptimeNanoseconds
        let line = protocolKind == .irc ? "PING :\(sequence)\r\n" : "/ping \(sequence)\n"
        context.writeAndFlush(NIOAny(context.channel.allocator.buffer(string: line)), promise: nil)
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        let now = NIODeadline.now().uptimeNanoseconds
        forEachLine(in: unwrapInboundIn(data), partial: &partial) { line in
            if protocolKind == .irc, answerServerPing(line, context) { return }
            let isPong = protocolKind == .irc
                ? line.first == UInt8(ascii: ":") && containsBytes(line, Self.pongWord)
                : line.starts(with: "PONG ".utf8)
            guard isPong, let sentAt, trailingNumber(line) == sequence else { return }
            rounds.record(microseconds: (now - sentAt) / 1000)
            self.sentAt = nil
            loop.scheduleTask(in: interval) { [self] in ping() }
        }
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        context.close(promise: nil)
    }
}

