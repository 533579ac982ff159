import NIOCore
import NIOPosix

#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif

/// Which protocol a load scenario speaks: Parley's line door, or IRC (Parley's IRC door or any other
/// IRC server).
public enum LoadProtocol: String, Sendable, CaseIterable, Codable {
    case line
    case irc
}

/// What `parley load --scenario connections` does: K clients connect at once and register (IRC:
/// `NICK`/`USER` up to `001`; line: up to `WELCOME`), then stay connected, idle, for a while. It
/// measures how long registering took and, given the server's pid, what each held connection costs
/// the server in memory.
public struct ConnectionsOptions: Sendable {
    public var host = "127.0.0.1"
    public var port = 5555
    public var clients = 1000
    public var protocolKind = LoadProtocol.line
    /// How long the connections are held once all are registered.
    public var holdSeconds = 2.0
    /// The server's pid, to read its memory (`VmRSS`) and CPU time from `/proc`.
    public var serverPID: Int32?
    /// The bound on connecting and registering, per client.
    public var timeout = Duration.seconds(60)
    public var runID: String?

    public init() {}
}

public struct ConnectionsReport: Codable, Sendable, Equatable, JSONLineReport {
    public var scenario = "connections"
    public var protocolKind: LoadProtocol
    public var runID: String
    public var clients: Int
    /// Clients that connected and registered, and those that did not (refused, timed out, closed).
    public var registered: Int
    public var failed: Int
    /// From starting the TCP connect to the server's welcome (`001` or `WELCOME`).
    public var registerMs: LatencySummary
    /// The server's resident memory before the clients connected and while all were held (kB).
    public var serverRSSBeforeKB: Int?
    public var serverRSSHeldKB: Int?
    /// (held - before) / registered, in bytes.
    public var serverBytesPerConnection: Int?
    /// The server's CPU time (user + system) over the run.
    public var serverCPUSeconds: Double?
    public var errorCount: Int
    public var errors: [String]

    enum CodingKeys: String, CodingKey {
        case scenario, clients, registered, failed, errors
        case protocolKind = "protocol"
        case runID = "run_id"
        case registerMs = "register_ms"
        case serverRSSBeforeKB = "server_rss_before_kb"
        case serverRSSHeldKB = "server_rss_held_kb"
        case serverBytesPerConnection = "server_bytes_per_connection"
        case serverCPUSeconds = "server_cpu_seconds"
        case errorCount = "error_count"
    }

    public var succeeded: Bool { failed == 0 && errorCount == 0 }

    public var summary: String {
        var lines = [
            "parley load --scenario connections: run \(runID), \(clients) \(protocolKind.rawValue) clients connecting at once",
            "registered: \(registered), failed: \(failed)",
            "connect+register (ms) p50 \(fixed(registerMs.p50, 2))  p90 \(fixed(registerMs.p90, 2))  p99 \(fixed(registerMs.p99, 2))  max \(fixed(registerMs.max, 2))",
        ]
        if let before = serverRSSBeforeKB, let held = serverRSSHeldKB, let each = serverBytesPerConnection {
            lines.append("server RSS: \(before) kB before, \(held) kB with the connections held: \(each) bytes a connection")
        }
        if let cpu = serverCPUSeconds { lines.append("server CPU: \(fixed(cpu, 2)) s") }
        if !errors.isEmpty { lines.append("errors (first \(errors.count) of \(errorCount)): " + errors.joined(separator: "; ")) }
        lines.append(succeeded ? "result: PASS" : "result: FAIL")
        return lines.joined(separator: "\n")
    }
}

public func runConnections(_ options: ConnectionsOptions) async -> ConnectionsReport {
    raiseOpenFileLimit()
    let runID = options.runID ?? String(UInt32.random(in: 0...UInt32.max), radix: 36)
    let rssBefore = options.serverPID.flatMap(ServerProcess.residentKB)
    let cpuBefore = options.serverPID.flatMap(ServerProcess.cpuSeconds)

    // Every connect is started at once, as fast as the generator can open them; each connection
    // registers by itself on its event loop.
    let group = MultiThreadedEventLoopGroup.singleton
    let loops = Array(group.makeIterator())
    let address = try? SocketAddress(ipAddress: options.host, port: options.port)
    let outcomes = (0..<options.clients).map { index in
        loops[index % loops.count].makePromise(of: (any Channel, Double).self)
    }
    // The loops open them a batch at a time, and each batch waits for the one before: in between
    // they poll their sockets, so connections already open go on registering (and are timed) while
    // later ones are still being opened. Opened all in one go, every connection's first event waited
    // behind the whole opening (NIO runs queued tasks before it polls): 130 to 270 ms that the
    // generator, not the server, added to each registration.
    for batch in stride(from: 0, to: options.clients, by: 16).map({ $0..<min($0 + 16, options.clients) }) {
        let opened = loops.enumerated().map { first, loop in
            loop.submit {
                for index in batch where index % loops.count == first {
                    openRegistering(index, on: loop, options: options, runID: runID, address: address, outcome: outcomes[index])
                }
            }
        }
        for done in opened { try? await done.get() }
    }
    var channels: [any Channel] = []
    var latencies: [Double] = []
    var errors: [String] = []
    for outcome in outcomes {
        do {
            let (channel, ms) = try await outcome.futureResult.get()
            channels.append(channel)
            latencies.append(ms)
        } catch {
            errors.append("\(error)")
        }
    }

    // Held, idle. The server's memory is read at the end of the hold, when it has settled.
    try? await Task.sleep(for: .seconds(options.holdSeconds))
    let rssHeld = options.serverPID.flatMap(ServerProcess.residentKB)
    let cpuAfter = options.serverPID.flatMap(ServerProcess.cpuSeconds)
    for closed in channels.map({ $0.close() }) { try? await closed.get() }

    var report = ConnectionsReport(
        protocolKind: options.protocolKind, runID: runID, clients: options.clients, registered: channels.count,
        failed: options.clients - channels.count, registerMs: LatencySummary(samples: latencies),
        serverRSSBeforeKB: rssBefore, serverRSSHeldKB: rssHeld, serverBytesPerConnection: nil,
        serverCPUSeconds: nil, errorCount: errors.count, errors: Array(errors.prefix(5)))
    if let rssBefore, let rssHeld, !channels.isEmpty {
        report.serverBytesPerConnection = (rssHeld - rssBefore) * 1024 / channels.count
    }
    if let cpuBefore, let cpuAfter { report.serverCPUSeconds = cpuAfter - cpuBefore }
    return report
}

/// Opens client `index` and registers it; `outcome` gets its channel and the milliseconds from the
/// start of its connect to its welcome, or why it failed. Call on `loop`.
private func openRegistering(_ index: Int, on loop: any EventLoop, options: ConnectionsOptions, runID: String,
                             address: SocketAddress?, outcome: EventLoopPromise<(any Channel, Double)>) {
    let registered = loop.makePromise(of: Double.self)
    let handler = RegistrationHandler(protocolKind: options.protocolKind, nick: loadNick("c", runID, index),
                                      timeout: TimeAmount(options.timeout), registered: registered)
    let bootstrap = ClientBootstrap(group: loop)
        .channelOption(.tcpOption(.tcp_nodelay), value: 1)
        .connectTimeout(TimeAmount(options.timeout))
        .channelInitializer { channel in
            channel.eventLoop.makeCompletedFuture { try channel.pipeline.syncOperations.addHandler(handler) }
        }
    let connected = address.map { bootstrap.connect(to: $0) } ?? bootstrap.connect(host: options.host, port: options.port)
    connected.flatMapError { error in
        // On `loop`, like the handler (the bootstrap's only loop); its promise must not be left
        // unfulfilled whether or not the connection got as far as the handler.
        let failure = LoadFailure("\(options.host):\(options.port): \(describeConnectError(error))")
        handler.finish(.failure(failure))
        return loop.makeFailedFuture(failure)
    }.flatMap { channel in
        registered.futureResult.map { (channel, $0) }.flatMapErrorThrowing { error in
            channel.close(promise: nil)
            throw error
        }
    }.cascade(to: outcome)
}

/// One connection of `--scenario connections`, registered with as little of the generator's time as
/// can be: the registration goes out as the connection opens, and the welcome is found by scanning
/// the bytes, with no task, line strings or inbox per connection (through `LineClient` the generator
/// spent about 1 s of CPU on 5,000 connections, twice the server's). `registered` gets the
/// milliseconds from the start of the connect to the welcome. Held afterwards, it answers the
/// server's PINGs.
final class RegistrationHandler: ChannelInboundHandler, Sendable {
    typealias InboundIn = ByteBuffer

    private let protocolKind: LoadProtocol
    private let nick: String
    private let timeout: TimeAmount
    private let registered: EventLoopPromise<Double>
    private let started = NIODeadline.now()
    // nonisolated(unsafe): used only on the channel's event loop (the handler's methods), after the
    // bootstrap hands the handler to it.
    nonisolated(unsafe) private var partial: [UInt8] = []
    nonisolated(unsafe) private var done = false
    nonisolated(unsafe) private var deadline: Scheduled<Void>?

    init(protocolKind: LoadProtocol, nick: String, timeout: TimeAmount, registered: EventLoopPromise<Double>) {
        self.protocolKind = protocolKind
        self.nick = nick
        self.timeout = timeout
        self.registered = registered
    }

    func channelActive(context: ChannelHandlerContext) {
        if protocolKind == .irc {
            var registration = context.channel.allocator.buffer(capacity: 2 * nick.utf8.count + 32)
            registration.writeString("NICK \(nick)\r\nUSER \(nick) 0 * :\(nick)\r\n")
            context.writeAndFlush(NIOAny(registration), promise: nil)
        }
        let what = protocolKind == .irc ? "001 (the IRC welcome)" : "WELCOME"
        deadline = context.eventLoop.scheduleTask(in: timeout) { [self] in finish(.failure(LineClientError.timeout(waitingFor: what))) }
        context.fireChannelActive()
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        forEachLine(in: unwrapInboundIn(data), partial: &partial) { line in
            if answerServerPing(line, context) || done { return }
            switch protocolKind {
            case .line:
                if line.starts(with: "WELCOME ".utf8) { finish(.success(())) }
            case .irc:
                // `:server 001 nick :Welcome...`; a refusal is ERROR or one of `ircRegistrationRefusals`.
                guard let space = line.firstIndex(of: UInt8(ascii: " ")) else { return }
                let command = UnsafeRawBufferPointer(rebasing: line[(space + 1)...])
                if command.starts(with: "001 ".utf8) {
                    finish(.success(()))
                } else if line.starts(with: "ERROR".utf8) || ircRegistrationRefusals.contains(where: { command.starts(with: ($0 + " ").utf8) }) {
                    finish(.failure(LoadFailure("registration refused: \(String(decoding: line, as: UTF8.self))")))
                }
            }
        }
    }

    func channelInactive(context: ChannelHandlerContext) {
        finish(.failure(LoadFailure("the server closed the connection before its welcome")))
        context.fireChannelInactive()
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        finish(.failure(error))
        context.close(promise: nil)
    }

    /// Settles `registered` once; later outcomes are ignored. Call on the channel's event loop.
    func finish(_ result: Result<Void, any Error>) {
        guard !done else { return }
        done = true
        deadline?.cancel()
        switch result {
        case .success: registered.succeed(Double((NIODeadline.now() - started).nanoseconds) / 1e6)
        case .failure(let error): registered.fail(error)
        }
    }
}

/// The numerics that refuse a registration: erroneous nick, nick in use, banned.
let ircRegistrationRefusals = ["432", "433", "465"]

/// Registers an IRC connection: `NICK`, `USER`, then waits for `001`, answering a `PING` on the way
/// (some servers check that a client answers before they welcome it).
func registerIRC(_ client: LineClient, nick: String, timeout: Duration) async throws {
    try await client.send("NICK \(nick)\r")
    try await client.send("USER \(nick) 0 * :\(nick)\r")
    let deadline = ContinuousClock.now + timeout
    while true {
        let remaining = deadline - .now
        guard remaining > .zero else { throw LineClientError.timeout(waitingFor: "001 (the IRC welcome)") }
        let line = try await client.nextLine(timeout: remaining)
        let words = line.split(separator: " ", maxSplits: 2)
        if words.first == "PING" {
            try await client.send("PONG " + line.dropFirst(5) + "\r")
        } else if words.count >= 2, words[1] == "001" {
            return
        } else if words.first == "ERROR" || (words.count >= 2 && ircRegistrationRefusals.contains(String(words[1]))) {
            throw LoadFailure("registration refused: \(line)")
        }
    }
}

/// What `/proc` says about the server process (Linux).
enum ServerProcess {
    /// `VmRSS` from `/proc/PID/status`, in kB.
    static func residentKB(_ pid: Int32) -> Int? {
        status(pid, "VmRSS").flatMap { Int($0.split(whereSeparator: \.isWhitespace).first ?? "") }
    }

    /// The one CPU the process may run on (`Cpus_allowed_list` in `/proc/PID/status`), when it is
    /// pinned to one (`taskset -c 1`); nil when it may run on several.
    static func pinnedCPU(_ pid: Int32) -> Int? {
        status(pid, "Cpus_allowed_list").flatMap { Int(String($0.filter { !$0.isWhitespace })) }
    }

    /// What follows `NAME:` on its line of `/proc/PID/status`.
    private static func status(_ pid: Int32, _ name: String) -> Substring? {
        guard let status = try? String(contentsOfFile: "/proc/\(pid)/status", encoding: .utf8) else { return nil }
        return status.split(separator: "\n").first { $0.hasPrefix(name + ":") }?.dropFirst(name.count + 1)
    }

    /// This process's user plus system CPU time, in seconds.
    static func ownCPUSeconds() -> Double {
        var usage = rusage()
        guard getrusage(RUSAGE_SELF.rawValue, &usage) == 0 else { return 0 }
        func seconds(_ time: timeval) -> Double { Double(time.tv_sec) + Double(time.tv_usec) / 1e6 }
        return seconds(usage.ru_utime) + seconds(usage.ru_stime)
    }

    /// User plus system CPU time from `/proc/PID/stat`, in seconds.
    static func cpuSeconds(_ pid: Int32) -> Double? {
        guard let stat = try? String(contentsOfFile: "/proc/\(pid)/stat", encoding: .utf8),
              let close = stat.lastIndex(of: ")") else { return nil }
        // Fields after the command name: state is field 3, utime 14, stime 15.
        let fields = stat[stat.index(after: close)...].split(separator: " ")
        guard fields.count > 12, let user = Double(fields[11]), let system = Double(fields[12]) else { return nil }
        let ticks = Double(sysconf(Int32(_SC_CLK_TCK)))
        return (user + system) / ticks
    }
}

/// Each CPU's time from `/proc/stat` (Linux), in clock ticks. On a virtual machine, "steal" is the
/// time the host ran something else while this CPU had work: a server pinned to a CPU that lost a
/// third of a run to its host delivers a third less, whatever its code does. Runs report it so that
/// such rounds can be told apart.
struct CPUTimes: Sendable, Equatable {
    /// Per CPU number: all ticks (every column of its line) and stolen ticks (the eighth column).
    var total: [Int: UInt64] = [:]
    var steal: [Int: UInt64] = [:]

    static func read() -> CPUTimes? {
        (try? String(contentsOfFile: "/proc/stat", encoding: .utf8)).flatMap(parse)
    }

    /// Reads the `cpuN user nice system idle iowait irq softirq steal ...` lines; nil when there are none.
    static func parse(_ text: String) -> CPUTimes? {
        var times = CPUTimes()
        for line in text.split(separator: "\n") where line.hasPrefix("cpu") {
            let columns = line.split(separator: " ", omittingEmptySubsequences: true)
            guard let cpu = Int(columns[0].dropFirst(3)) else { continue }  // `cpu` alone is the sum
            let ticks = columns.dropFirst().compactMap { UInt64($0) }
            guard ticks.count >= 8 else { continue }
            // guest and guest_nice (columns 9 and 10) are already counted in user and nice.
            times.total[cpu] = ticks.prefix(8).reduce(0, +)
            times.steal[cpu] = ticks[7]
        }
        return times.total.isEmpty ? nil : times
    }

    /// The share of `cpu`'s time (of every CPU's, when nil) stolen between `earlier` and now, in percent.
    func stealPercent(since earlier: CPUTimes, cpu: Int?) -> Double? {
        let cpus = cpu.map { [$0] } ?? Array(total.keys)
        var (all, stolen): (UInt64, UInt64) = (0, 0)
        for cpu in cpus {
            guard let total = total[cpu], let before = earlier.total[cpu], total >= before,
                  let steal = steal[cpu], let stealBefore = earlier.steal[cpu], steal >= stealBefore else { return nil }
            all += total - before
            stolen += steal - stealBefore
        }
        return all == 0 ? nil : 100 * Double(stolen) / Double(all)
    }
}
