import NIOCore
import NIOPosix
import Foundation
import ParleyCore
import ParleyIRC
import ParleyLine
import ParleyStore
import ParleyUDP
import Synchronization

public struct ServerConfig: Sendable {
    public var listeners: [ListenAddress] = ListenAddress.defaults
    public var dataDirectory = "./parley-data"
    public var requireLogin = false
    /// Shortest password accepted for a new account.
    public var minimumPasswordLength = NameRules.passwordBytes.lowerBound
    /// Rooms with more members than this do not announce joins, parts and quits; nil: all do.
    public var quietRoomSize: Int? = HubConfig.defaultQuietRoomSize
    /// Event loops; one per core by default.
    public var threads = System.coreCount
    /// bcrypt cost; the command line refuses less than 10. Tests may lower it to save time.
    public var bcryptCost: UInt8 = 10
    /// Bytes queued for one client before it is disconnected as a slow reader.
    public var outboundLimit = 1 << 20
    public var line = LineDoorConfig()
    public var udp = UDPDoorConfig()
    public var irc: IRCDoorConfig = {
        var irc = IRCDoorConfig()
        irc.serverName = ProcessInfo.processInfo.hostName
        return irc
    }()
    /// How long shutdown waits for connections to finish before closing them anyway.
    public var shutdownTimeout = Duration.seconds(5)
    /// Keep messages in the database (persist, then publish); off: publish at once, keep nothing.
    public var keepHistory = true
    /// Replay on join and retention.
    public var history = HistoryConfig()
    /// How often retention is applied.
    public var pruneInterval = Duration.seconds(60)

    public init() {}
}

public struct BoundListener: Sendable, CustomStringConvertible {
    public let address: ListenAddress
    /// The listener with its real port (what port 0 became).
    public var description: String { address.description }
}

/// The running server: listeners, the hub, the store and the thread pools, and their shutdown.
public final class ParleyServer: Sendable {
    public let config: ServerConfig
    public let hub: Hub
    public let store: SQLiteStore
    /// The history writer; nil with `keepHistory` off.
    public let log: SQLiteMessageLog?
    /// The UDP doors' counters (all UDP listeners together).
    public let udpCounters = UDPCounters()
    private let group: MultiThreadedEventLoopGroup
    /// Each loop's next turn, woken through a pipe of its own once `start` has made them.
    private let turns: LoopTurns
    private let hashPool: NIOThreadPool

    private struct State {
        var serverChannels: [any Channel] = []
        /// The pipes that wake each loop for its `NextTurn`.
        var wakerChannels: [any Channel] = []
        /// UDP listeners: each is its sessions' connection too, so it closes after they have ended.
        var datagramChannels: [(channel: any Channel, drained: EventLoopFuture<Void>)] = []
        var connections: [ObjectIdentifier: any Channel] = [:]
        var stopped = false
    }
    private let state = Mutex(State())

    public init(config: ServerConfig) throws {
        self.config = config
        store = try SQLiteStore(directory: config.dataDirectory)
        // Hashing is CPU-bound: a pool smaller than the core count leaves a core to the event loops.
        hashPool = NIOThreadPool(numberOfThreads: max(1, System.coreCount - 1))
        hashPool.start()
        group = MultiThreadedEventLoopGroup(numberOfThreads: max(1, config.threads))
        turns = LoopTurns(loops: Array(group.makeIterator()))
        let hubConfig = HubConfig(requireLogin: config.requireLogin, minimumPasswordLength: config.minimumPasswordLength,
                                  quietRoomSize: config.quietRoomSize)
        let hasher = BcryptHasher(cost: config.bcryptCost, pool: hashPool)
        if config.keepHistory {
            let log = SQLiteMessageLog(store: store, retention: .init(maxPerRoom: config.history.maxPerRoom,
                                                                      maxAge: config.history.maxAge, interval: config.pruneInterval))
            let resumed: (nextSerial: UInt64, lastTimeMs: Int64, recent: [RoomMessage])
            do {
                resumed = try log.resume(perRoom: min(config.history.replayOnJoin, config.history.maxPerRoom ?? .max))
            } catch {
                throw StoreError.cannotOpen(path: store.path, reason: "cannot read the history: \(error)")
            }
            self.log = log
            hub = Hub(config: hubConfig, accounts: store, hasher: hasher, log: log, history: config.history,
                      firstSerial: resumed.nextSerial, lastTimeMs: resumed.lastTimeMs, recent: resumed.recent,
                      publishTurns: turns.all)
        } else {
            log = nil
            // Nothing is stored, so nothing says where ids stopped last time: start from the clock,
            // so msgids a client saw before a restart are not given out again.
            let firstSerial = UInt64(max(0, Milliseconds.from(Date()))) << 12
            hub = Hub(config: hubConfig, accounts: store, hasher: hasher, history: config.history, firstSerial: firstSerial,
                      publishTurns: turns.all)
        }
    }

    /// Binds every listener; returns them with their real ports.
    public func start() async throws -> [BoundListener] {
        if let log {
            var files: [Int32] = []
            for loop in group.makeIterator() {
                if let file = try await loop.submit({ ThreadStates.openCurrentThread() }).get() { files.append(file) }
            }
            log.watch(feeders: ThreadStates(files: files))
        }
        var bound: [BoundListener] = []
        do {
            for turn in turns.all {
                let waker = try await TurnWaker.attach(to: turn)
                state.withLock { $0.wakerChannels.append(waker) }
            }
            for address in config.listeners {
                let channel: any Channel
                if address.scheme == .udp {
                    let (bound, drained) = try await bindDatagram(address)
                    channel = bound
                    state.withLock { $0.datagramChannels.append((bound, drained)) }
                } else {
                    channel = try await bind(address)
                    state.withLock { $0.serverChannels.append(channel) }
                }
                bound.append(BoundListener(address: ListenAddress(
                    scheme: address.scheme, host: address.host, port: channel.localAddress?.port ?? address.port)))
            }
        } catch {
            await shutdown()
            throw error
        }
        return bound
    }

    private func bind(_ address: ListenAddress) async throws -> any Channel {
        let hub = self.hub
        let lineConfig = config.line
        let ircConfig = {
            var irc = config.irc
            irc.historyLimit = config.keepHistory ? 100 : nil
            return irc
        }()
        let turns = self.turns
        let ircDoor = IRCDoor(config: ircConfig, turns: turns)
        let limit = config.outboundLimit
        let bootstrap = ServerBootstrap(group: group)
            .serverChannelOption(.backlog, value: 4096)
            .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
            // NIO accepts only 4 connections per loop tick by default; bursts of connects would time out.
            .serverChannelOption(.maxMessagesPerRead, value: 256)
            .childChannelOption(.socketOption(.tcp_nodelay), value: 1)
            .childChannelOption(.writeBufferWaterMark, value: .init(low: limit / 2, high: limit))
            // Each connection keeps its receive buffer between reads; an idle chat connection needs
            // little, and the allocator grows it for a busy one. (NIO's default starts at 2 KiB.)
            .childChannelOption(.recvAllocator, value: AdaptiveRecvByteBufferAllocator(minimum: 64, initial: 128, maximum: 65_536))
            .childChannelInitializer { [weak self] channel in
                self?.track(channel)
                return channel.eventLoop.makeCompletedFuture {
                    switch address.scheme {
                    case .line:
                        try channel.pipeline.syncOperations.addHandler(LineConnectionHandler(hub: hub, config: lineConfig, turns: turns))
                    case .irc:
                        try channel.pipeline.syncOperations.addHandler(IRCConnectionHandler(hub: hub, door: ircDoor))
                    case .udp:
                        throw ServerError.cannotListen(address, reason: "a UDP door has no TCP connections")
                    }
                }
            }
        do {
            return try await bootstrap.bind(host: address.host, port: address.port).get()
        } catch {
            throw ServerError.cannotListen(address, reason: "\(error)")
        }
    }

    private func bindDatagram(_ address: ListenAddress) async throws -> (any Channel, EventLoopFuture<Void>) {
        let hub = self.hub
        // No quiet period: the rest of a long line may be a retransmission away, not missing.
        let lineConfig = {
            var line = config.line
            line.quietPeriod = nil
            return line
        }()
        let udpConfig = config.udp
        let counters = udpCounters
        let limit = config.outboundLimit
        let drained = group.next().makePromise(of: Void.self)
        let bootstrap = DatagramBootstrap(group: group)
            .channelOption(.socketOption(.so_reuseaddr), value: 1)
            // Many datagrams per system call (recvmmsg). NIO splits one receive buffer evenly among them, so
            // each gets 2 KiB: a longer datagram is cut, and then refused as oversize anyway.
            .channelOption(.datagramVectorReadMessageCount, value: 64)
            .channelOption(.recvAllocator, value: FixedSizeRecvByteBufferAllocator(capacity: 64 * 2048))
            .channelOption(.socketOption(.so_rcvbuf), value: 4 << 20)
            .channelOption(.socketOption(.so_sndbuf), value: 4 << 20)
            .channelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.addHandler(UDPDoorHandler(
                        hub: hub, lineConfig: lineConfig, config: udpConfig, counters: counters, outboundLimit: limit, drained: drained))
                }
            }
        do {
            let channel = try await bootstrap.bind(host: address.host, port: address.port).get()
            return (channel, drained.futureResult)
        } catch {
            drained.succeed()
            throw ServerError.cannotListen(address, reason: "\(error)")
        }
    }

    private func track(_ channel: any Channel) {
        let id = ObjectIdentifier(channel)
        let accepted = state.withLock { state in
            guard !state.stopped else { return false }
            state.connections[id] = channel
            return true
        }
        guard accepted else {
            channel.close(promise: nil)
            return
        }
        channel.closeFuture.whenComplete { [weak self] _ in
            _ = self?.state.withLock { $0.connections.removeValue(forKey: id) }
        }
    }

    public var connectionCount: Int { state.withLock { $0.connections.count } }

    /// Stops accepting, says goodbye to every client, waits (bounded) for every connection to close,
    /// then closes the store and the thread pools. Safe to call more than once.
    public func shutdown() async {
        let channels = state.withLock { state -> ([any Channel], [(channel: any Channel, drained: EventLoopFuture<Void>)])? in
            guard !state.stopped else { return nil }
            state.stopped = true
            return (state.serverChannels, state.datagramChannels)
        }
        guard let (listeners, datagramChannels) = channels else { return }
        for channel in listeners { try? await channel.close() }
        _ = hub.shutdown()
        let open = state.withLock { Array($0.connections.values) }
        // Connections that are not hub sessions yet (an IRC client still registering) say goodbye too.
        for channel in open + datagramChannels.map(\.channel) { channel.pipeline.fireUserInboundEventTriggered(ServerShuttingDown()) }
        await withTaskGroup(of: Void.self) { group in
            group.addTask {
                for channel in open { try? await channel.closeFuture.get() }
                // UDP sessions end when their goodbye is acknowledged (or their grace period is over).
                for (_, drained) in datagramChannels { try? await drained.get() }
            }
            group.addTask { [timeout = config.shutdownTimeout] in
                // The bound: clients that do not take their goodbye are closed anyway.
                guard (try? await Task.sleep(for: timeout)) != nil else { return }
                for channel in open { try? await channel.close() }
            }
            await group.next()
            group.cancelAll()
        }
        for (channel, _) in datagramChannels { try? await channel.close() }
        for channel in state.withLock({ $0.wakerChannels }) { try? await channel.close() }
        // Everything accepted is stored before the database closes.
        await log?.close()
        try? store.close()
        try? await hashPool.shutdownGracefully()
        try? await group.shutdownGracefully()
    }
}

public enum ServerError: Error, CustomStringConvertible {
    case cannotListen(ListenAddress, reason: String)

    public var description: String {
        switch self {
        case .cannotListen(let address, let reason):
            return "Cannot listen on \(address): \(reason). Is another server using that port? Pick another with --listen."
        }
    }
}
