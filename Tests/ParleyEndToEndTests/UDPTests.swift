import Foundation
import NIOCore
import NIOPosix
import ParleyClient
import ParleyCore
import ParleyServer
import ParleyUDP
import Synchronization
import Testing

/// A server with a UDP listener (and line and IRC), flood control off so that tests may send fast.
private func withUDPServer(_ configure: (inout ServerConfig) -> Void = { _ in },
                           _ body: (RunningServer, Int) async throws -> Void) async throws {
    try await withServer({ config in
        config.listeners.append(ListenAddress(scheme: .udp, host: "127.0.0.1", port: 0))
        config.line.floodRate = 0
        configure(&config)
    }) { server in
        guard let port = server.udpPort else { throw LineClientError.connectFailed("no UDP listener") }
        try await body(server, port)
    }
}

private func udpClient(_ port: Int, loss: Double = 0, seed: UInt64? = nil, counters: UDPCounters? = nil,
                       keepalive: TimeAmount? = nil) async throws -> LineClient {
    var options = UDPClientOptions(loss: loss, seed: seed, counters: counters)
    if let keepalive { options.link.keepalive = keepalive }
    let client = try await LineClient.connect(host: "127.0.0.1", port: port, transport: .udp(options))
    _ = try await client.expect(prefix: "WELCOME ")
    return client
}

/// Waits, bounded, until `condition` holds; polls the server's state, which has no event to wait on.
private func eventually(_ what: String, timeout: Duration = .seconds(10), _ condition: () -> Bool) async throws {
    let deadline = ContinuousClock.now + timeout
    while !condition() {
        guard ContinuousClock.now < deadline else { throw LineClientError.timeout(waitingFor: what) }
        try await Task.sleep(for: .milliseconds(10))
    }
}

@Suite(.timeLimit(.minutes(2))) struct UDPDoorTests {
    @Test func aUDPUserChatsWithLineAndIRCUsersAndIsListedEverywhere() async throws {
        try await withUDPServer { server, port in
            let line = try await server.client()
            _ = try await line.command("/nick lina")
            let irc = try await IRCTestClient.connect(server)
            try await irc.register("ira")
            try await irc.send("JOIN #lobby")
            _ = try await irc.expect("366")

            let udp = try await udpClient(port)
            #expect(try await udp.command("/nick uma") == "OK nick You are now called uma.")
            try await udp.send("hello from datagrams")
            #expect(try await line.expect(prefix: "MSG #lobby uma:") == "MSG #lobby uma: hello from datagrams")
            let privmsg = try await irc.expect("PRIVMSG")
            #expect(privmsg.source?.hasPrefix("uma!") == true)
            #expect(privmsg.params == ["#lobby", "hello from datagrams"])
            // The sender's echo is its acknowledgement, as on the line door.
            #expect(try await udp.expect(prefix: "MSG #lobby uma:") == "MSG #lobby uma: hello from datagrams")

            try await line.send("hi uma")
            #expect(try await udp.expect(prefix: "MSG #lobby lina:") == "MSG #lobby lina: hi uma")
            try await irc.send("PRIVMSG uma :psst")
            #expect(try await udp.expect(prefix: "DM from ira:") == "DM from ira: psst")

            let who = try await line.listing("/who")
            #expect(who.contains { $0.hasPrefix("USER uma ") })
            guard case .output(let list) = Console(hub: server.server.hub).execute("list") else { Issue.record("no output"); return }
            #expect(list.contains { $0.contains("\tuma (guest)\tudp\t127.0.0.1:") })

            // A line longer than one datagram's payload still arrives whole, split over datagrams.
            let long = String(repeating: "x", count: 3000)
            try await line.send(long)
            #expect(try await udp.expect(prefix: "MSG #lobby lina:") == "MSG #lobby lina: \(long)")
            try await udp.send("/me waves " + long)
            #expect(try await line.expect(prefix: "ACTION #lobby uma") == "ACTION #lobby uma waves \(long)")
            await udp.close()
            await irc.close()
            await line.close()
        }
    }

    @Test func withAThirdOfDatagramsLostBothWaysEveryMessageArrivesOnceAndInOrder() async throws {
        let count = 1000
        try await withUDPServer({ config in
            config.udp.loss = 0.3
            config.udp.seed = 7
        }) { server, port in
            let clientCounters = UDPCounters()
            let line = try await server.client()
            _ = try await line.command("/nick listener")
            let udp = try await udpClient(port, loss: 0.3, seed: 11, counters: clientCounters)
            _ = try await udp.command("/nick lossy")

            // 1,000 messages from the UDP client reach the line client exactly once, in order. Each
            // phase is bounded as a whole; a single line may wait long on a machine busy with other
            // tests (several losses in a row back the timeouts off).
            let perLine = Duration.seconds(60)
            try await withTimeout(.seconds(60), "1,000 messages over UDP") {
                for index in 1...count { try await udp.send("up \(index)") }
                for index in 1...count {
                    let received = try await line.expect(prefix: "MSG #lobby lossy:", timeout: perLine)
                    #expect(received == "MSG #lobby lossy: up \(index)")
                    if received != "MSG #lobby lossy: up \(index)" { return }
                }
            }
            // 1,000 room messages reach the UDP client exactly once, in order (its own echoes first).
            try await withTimeout(.seconds(60), "1,000 messages to the UDP client") {
                for index in 1...count {
                    #expect(try await udp.expect(prefix: "MSG #lobby lossy:", timeout: perLine) == "MSG #lobby lossy: up \(index)")
                }
                for index in 1...count { try await line.send("down \(index)") }
                for index in 1...count {
                    let received = try await udp.expect(prefix: "MSG #lobby listener:", timeout: perLine)
                    #expect(received == "MSG #lobby listener: down \(index)")
                    if received != "MSG #lobby listener: down \(index)" { return }
                }
            }
            // Nothing came twice: the next message each side sees is a new one.
            try await udp.send("end up")
            #expect(try await line.expect(prefix: "MSG #lobby lossy:") == "MSG #lobby lossy: end up")
            try await line.send("end down")
            #expect(try await udp.expect(prefix: "MSG #lobby listener:") == "MSG #lobby listener: end down")

            let counters = server.server.udpCounters
            #expect(counters.simulatedLossIn.load(ordering: .relaxed) > 10)
            #expect(counters.simulatedLossOut.load(ordering: .relaxed) > 10)
            #expect(counters.retransmissions.load(ordering: .relaxed) > 0)
            #expect(clientCounters.retransmissions.load(ordering: .relaxed) > 0)
            // Duplicates may or may not occur (an ack lost before its datagram's timeout); their
            // suppression is checked deterministically by the replay test and the link's unit tests.
            await udp.close()
            await line.close()
        }
    }

    @Test func malformedOversizeUnknownAndReplayedDatagramsAreDroppedAndCounted() async throws {
        try await withUDPServer { server, port in
            let counters = server.server.udpCounters
            let raw = try await RawDatagramSocket.open(serverPort: port)
            defer { raw.close() }

            // Garbage: dropped silently.
            try await raw.send(ByteBuffer(bytes: [1, 2, 3, 4, 5]))
            try await eventually("the malformed datagram counted") { counters.droppedMalformed.load(ordering: .relaxed) == 1 }

            // A session of our own, by hand. Until we show we got the welcome (any datagram with the
            // token) the server sends nothing more, and the session is not in the hub.
            let token = try await raw.handshake()
            #expect(counters.activeSessions.load(ordering: .relaxed) == 1)
            #expect(server.server.hub.online().isEmpty)
            try await raw.send(Packet(.ping, token: token).encoded())
            let welcome = try await raw.expect(.data)
            #expect(String(buffer: welcome.payload).hasPrefix("WELCOME "))

            // Oversize: refused with an error that says the limit.
            var oversize = Packet(.data, token: token, seq: 1, ack: welcome.seq,
                                  payload: ByteBuffer(repeating: UInt8(ascii: "a"), count: Packet.maxPayload + 100)).encoded()
            try await raw.send(oversize)
            let error = try await raw.expect(.error)
            #expect(String(buffer: error.payload).contains("at most 1200 payload bytes; yours had 1300"))
            #expect(counters.droppedOversize.load(ordering: .relaxed) == 1)
            oversize.clear()

            // A replayed datagram runs its command once.
            let nick = Packet(.data, token: token, seq: 1, ack: welcome.seq, payload: ByteBuffer(string: "/nick rawuser\n")).encoded()
            try await raw.send(nick)
            // The NICK event and the OK may share a datagram.
            let ok = try await raw.expect(.data, where: { String(buffer: $0.payload).contains("OK ") })
            #expect(String(buffer: ok.payload).hasSuffix("OK nick You are now called rawuser.\n"))
            // Its replies acknowledged, the server has nothing in flight: what answers the replay is a bare ack.
            try await raw.send(Packet(.ack, token: token, ack: ok.seq).encoded())
            try await raw.send(nick)
            #expect(try await raw.expect(.ack).ack == 1)
            try await eventually("the replay counted") { counters.droppedDuplicate.load(ordering: .relaxed) == 1 }

            // Another address with that token: not that session. It is told the session is unknown.
            let spoofer = try await RawDatagramSocket.open(serverPort: port)
            defer { spoofer.close() }
            try await spoofer.send(Packet(.data, token: token, seq: 2, payload: ByteBuffer(string: "/nick hijacked\n")).encoded())
            #expect(try await spoofer.expect(.reset).token == token)
            // An unknown token.
            try await spoofer.send(Packet(.ping, token: token &+ 1).encoded())
            _ = try await spoofer.expect(.reset)
            #expect(counters.droppedUnknownSession.load(ordering: .relaxed) == 2)

            // The server serves on, and the real session kept its name.
            let line = try await server.client()
            let who = try await line.listing("/who")
            #expect(who.contains { $0.hasPrefix("USER rawuser ") })
            #expect(!who.contains { $0.hasPrefix("USER hijacked ") })
            let summary = Console(hub: server.server.hub, udp: counters).execute("count")
            guard case .output(let lines) = summary else { Issue.record("no output"); return }
            #expect(lines.last?.contains("udp-dropped 5 (malformed 1, oversize 1, unknown-session 2, duplicate 1, out-of-window 0)") == true)
            await line.close()
        }
    }

    @Test func silentSessionsTimeOutAndGoodbyesFreeTheirState() async throws {
        try await withUDPServer({ config in
            config.udp.link.idleTimeout = .seconds(2)
        }) { server, port in
            let counters = server.server.udpCounters
            let line = try await server.client()
            _ = try await line.command("/nick watcher")
            // This client pings well within the idle timeout, so it stays.
            let steady = try await udpClient(port, keepalive: .milliseconds(100))
            _ = try await steady.command("/nick steady")

            let raw = try await RawDatagramSocket.open(serverPort: port)
            defer { raw.close() }
            let token = try await raw.handshake()
            try await raw.send(Packet(.ping, token: token).encoded())
            // The silent one joins, is freed by the idle timeout, and the others see it leave. (Its
            // two sessions are not awaited as a count: on a busy machine the timeout may come first.)
            _ = try await line.expect(prefix: "JOIN #lobby guest-")
            _ = try await line.expect(prefix: "QUIT guest-")
            try await eventually("the silent session freed") { counters.activeSessions.load(ordering: .relaxed) == 1 }
            #expect(counters.sessionsTimedOut.load(ordering: .relaxed) == 1)
            #expect(server.server.hub.online().filter { $0.door == "udp" }.map(\.name) == ["steady"])

            // The steady client is still served.
            try await steady.send("still here")
            #expect(try await line.expect(prefix: "MSG #lobby steady:") == "MSG #lobby steady: still here")

            // A goodbye frees the session at once.
            await steady.close()
            #expect(try await line.expect(prefix: "QUIT ") .hasPrefix("QUIT steady"))
            try await eventually("no UDP session left") { counters.activeSessions.load(ordering: .relaxed) == 0 }
            #expect(server.server.hub.online().allSatisfy { $0.door != "udp" })
            await line.close()
        }
    }

    @Test func theServerEndsSessionsWithAGoodbye() async throws {
        try await withUDPServer { server, port in
            let udp = try await udpClient(port)
            _ = try await udp.command("/nick quitter")
            try await udp.send("/quit")
            #expect(try await udp.expect(prefix: "BYE") == "BYE Goodbye, quitter.")
            try await udp.waitForClose()

            let kicked = try await udpClient(port)
            _ = try await kicked.command("/nick kicked")
            guard case .output(let said) = Console(hub: server.server.hub).execute("kick kicked spam") else { return }
            #expect(said == ["kicked kicked (1 connection)"])
            try await kicked.waitForClose()
            try await eventually("no UDP session left") { server.server.udpCounters.activeSessions.load(ordering: .relaxed) == 0 }

            // Shutdown tells UDP users goodbye as it tells everyone, and waits for them.
            let last = try await udpClient(port)
            await server.server.shutdown()
            #expect(try await last.expect(prefix: "BYE") == "BYE The server is shutting down. Goodbye!")
            try await last.waitForClose()
        }
    }

    @Test func aClientWithoutAServerGetsAClearError() async throws {
        // Bind a UDP port, then free it, so nothing listens there.
        let probe = try await RawDatagramSocket.open(serverPort: 9)
        let freePort = probe.localPort
        probe.close()
        await #expect(throws: LineClientError.self) {
            _ = try await LineClient.connect(host: "127.0.0.1", port: freePort, transport: .udp(UDPClientOptions()), connectTimeout: .seconds(3))
        }
    }
}

/// A bare datagram socket for sending hand-made datagrams to the server and reading its answers.
actor RawDatagramSocket {
    private let channel: any Channel
    private var received: AsyncStream<Packet>.Iterator
    private let server: SocketAddress
    nonisolated let localPort: Int

    private final class Collector: ChannelInboundHandler, Sendable {
        typealias InboundIn = AddressedEnvelope<ByteBuffer>
        let continuation: AsyncStream<Packet>.Continuation
        init(_ continuation: AsyncStream<Packet>.Continuation) { self.continuation = continuation }
        func channelRead(context: ChannelHandlerContext, data: NIOAny) {
            if let packet = try? Packet.decode(unwrapInboundIn(data).data) { continuation.yield(packet) }
        }
        func channelInactive(context: ChannelHandlerContext) { continuation.finish() }
    }

    private init(channel: any Channel, received: AsyncStream<Packet>, server: SocketAddress) {
        self.channel = channel
        self.received = received.makeAsyncIterator()
        self.server = server
        self.localPort = channel.localAddress?.port ?? 0
    }

    static func open(serverPort: Int) async throws -> RawDatagramSocket {
        let (stream, continuation) = AsyncStream<Packet>.makeStream()
        let collector = Collector(continuation)
        let channel = try await DatagramBootstrap(group: MultiThreadedEventLoopGroup.singleton)
            .channelInitializer { channel in
                channel.eventLoop.makeCompletedFuture { try channel.pipeline.syncOperations.addHandler(collector) }
            }
            .bind(host: "127.0.0.1", port: 0).get()
        return RawDatagramSocket(channel: channel, received: stream,
                                 server: try SocketAddress(ipAddress: "127.0.0.1", port: serverPort))
    }

    func send(_ bytes: ByteBuffer) async throws {
        try await channel.writeAndFlush(AddressedEnvelope(remoteAddress: server, data: bytes))
    }

    /// The next datagram of this kind that matches (others are skipped), within the timeout.
    func expect(_ kind: Packet.Kind, timeout: Duration = .seconds(10),
                where matches: (Packet) -> Bool = { _ in true }) async throws -> Packet {
        let what = "a \(kind) datagram"
        let deadline = ContinuousClock.now + timeout
        // On timeout the socket is closed, which ends the read below (a failed test needs it no more).
        while true {
            guard ContinuousClock.now < deadline else { throw LineClientError.timeout(waitingFor: what) }
            let timer = Task { [channel] in
                try await Task.sleep(until: deadline)
                channel.close(promise: nil)
            }
            // A copy: the iterator's state lives in the stream, and this actor waits on one read at a time.
            var iterator = received
            let packet = await iterator.next(isolation: self)
            received = iterator
            timer.cancel()
            guard let packet else { throw LineClientError.timeout(waitingFor: "\(what) (socket closed)") }
            if packet.kind == kind && matches(packet) { return packet }
        }
    }

    /// Opens a session by hand; returns its token.
    func handshake() async throws -> UInt64 {
        var nonce = ByteBuffer()
        nonce.writeInteger(UInt64(42))
        try await send(Packet(.hello, token: 0, payload: nonce).encoded())
        let welcome = try await expect(.welcome)
        #expect(welcome.payload == nonce)
        return welcome.token
    }

    nonisolated func close() {
        channel.close(promise: nil)
    }
}
