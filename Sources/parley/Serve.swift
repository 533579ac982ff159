import ArgumentParser
import CHeapTuning
import Dispatch
import Foundation
import ParleyClient
import ParleyCore
import ParleyServer

struct Serve: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Run the chat server.",
        discussion: """
            Prints one line per listener, "listening SCHEME://HOST:PORT", once it is bound. \
            Reads operator commands from stdin (type help) unless --no-console. \
            `exit`, SIGINT and SIGTERM shut it down cleanly.
            """)

    @Option(name: .customLong("listen"), help: "A listener, SCHEME://HOST:PORT with SCHEME line, irc or udp (repeatable; port 0 picks a free port). Default: line://127.0.0.1:5555, irc://127.0.0.1:6667 and udp://127.0.0.1:5555")
    var listeners: [String] = []

    @Option(help: "Directory of the SQLite database.")
    var dataDir = "./parley-data"

    @Option(help: "The name the IRC door uses as the source of its replies (default: the host name).")
    var serverName: String?

    @Option(help: "A file whose lines are the IRC message of the day.")
    var motd: String?

    @Option(help: "Shortest password accepted for a new account (1 to 72).")
    var minPasswordLength = 8

    @Option(help: "A password the IRC door requires of every client (PASS); PASS then no longer logs in to accounts.")
    var ircPassword: String?

    @Flag(help: "Refuse IRC account registration (REGISTER) before a client has finished connecting.")
    var ircRegistrationAfterConnect = false

    @Option(name: .customLong("oper"), help: "An IRC operator, NAME:PASSWORD (repeatable); used with OPER.")
    var operators: [String] = []

    @Flag(help: "Refuse chat from guests: an account is needed to talk.")
    var requireLogin = false

    @Option(help: "Rooms with more members than this do not announce joins, parts and quits (0: every room does).")
    var quietRoomSize = HubConfig.defaultQuietRoomSize

    @Flag(help: "Do not read operator commands from stdin.")
    var noConsole = false

    @Option(help: "Event loop threads (default: one per core).")
    var threads: Int?

    @Option(help: "bcrypt cost for new passwords (10 to 16).")
    var bcryptCost = 10

    @Option(help: "Bytes that may queue up for one client before it is disconnected as a slow reader.")
    var outboundLimit = 1 << 20

    @Option(help: "Lines a second a client may send after its burst; 0 turns flood control off.")
    var floodRate = 100.0

    @Option(help: "Lines a client may send in a burst.")
    var floodBurst = 200.0

    @Option(help: "on: store every message before publishing it (history, offline direct messages); off: keep nothing.")
    var history = "on"

    @Option(help: "Messages replayed to a client that joins a room (0 to 200).")
    var historyReplay = 20

    @Option(help: "Days messages are kept (0: no age limit).")
    var historyDays = 90.0

    @Option(help: "Messages kept per room (0: no limit).")
    var historyMaxPerRoom = 100_000

    @Option(help: "UDP door: the fraction of datagrams dropped on purpose in each direction, 0 to 1 (a loss test).")
    var udpLoss = 0.0

    @Option(help: "UDP door: a seed that makes --udp-loss drop the same datagrams each run.")
    var udpSeed: UInt64?

    @Option(help: "UDP door: seconds without a datagram from a client before its session ends.")
    var udpIdleTimeout = 30.0

    func validate() throws {
        guard (10...16).contains(bcryptCost) else { throw ValidationError("--bcrypt-cost must be from 10 to 16.") }
        guard (1...72).contains(minPasswordLength) else { throw ValidationError("--min-password-length must be from 1 to 72.") }
        for oper in operators where !oper.contains(":") || oper.hasPrefix(":") || oper.hasSuffix(":") {
            throw ValidationError("--oper takes NAME:PASSWORD, for example --oper admin:s3cret; got \"\(oper)\".")
        }
        guard outboundLimit >= 4096 else { throw ValidationError("--outbound-limit must be at least 4096 bytes.") }
        if let threads, threads < 1 { throw ValidationError("--threads must be at least 1.") }
        guard floodRate >= 0, floodBurst >= 1 else { throw ValidationError("--flood-rate must be 0 or more and --flood-burst at least 1.") }
        guard ["on", "off"].contains(history) else { throw ValidationError("--history takes on or off; got \"\(history)\".") }
        guard (0...200).contains(historyReplay) else { throw ValidationError("--history-replay must be from 0 to 200.") }
        guard historyDays >= 0, historyDays.isFinite else { throw ValidationError("--history-days must be 0 (no limit) or more.") }
        guard (0...1).contains(udpLoss) else { throw ValidationError("--udp-loss must be from 0 to 1, for example 0.3; got \(udpLoss).") }
        guard udpIdleTimeout >= 1, udpIdleTimeout <= 86_400 else { throw ValidationError("--udp-idle-timeout must be from 1 to 86400 seconds.") }
        guard historyMaxPerRoom >= 0 else { throw ValidationError("--history-max-per-room must be 0 (no limit) or more.") }
    }

    func run() async throws {
        raiseMallocCache()
        var config = ServerConfig()
        do {
            config.listeners = try listeners.isEmpty ? ListenAddress.defaults : listeners.map { try ListenAddress(parsing: $0) }
        } catch {
            throw ValidationError("\(error)")
        }
        config.dataDirectory = dataDir
        config.requireLogin = requireLogin
        guard quietRoomSize >= 0 else { throw ValidationError("--quiet-room-size must be 0 or more; 0 means every room announces joins and quits.") }
        config.quietRoomSize = quietRoomSize == 0 ? nil : quietRoomSize
        config.minimumPasswordLength = minPasswordLength
        config.irc.serverPassword = ircPassword
        config.irc.registrationBeforeConnect = !ircRegistrationAfterConnect
        for oper in operators {
            let parts = oper.split(separator: ":", maxSplits: 1).map(String.init)
            config.irc.operators[parts[0]] = parts[1]
        }
        if let threads { config.threads = threads }
        config.bcryptCost = UInt8(bcryptCost)
        config.outboundLimit = outboundLimit
        config.line.floodRate = floodRate
        config.line.floodBurst = floodBurst
        config.irc.floodRate = floodRate
        config.irc.floodBurst = floodBurst
        if let serverName { config.irc.serverName = serverName }
        config.udp.loss = udpLoss
        config.udp.seed = udpSeed
        config.udp.link.idleTimeout = .nanoseconds(Int64(udpIdleTimeout * 1e9))
        config.keepHistory = history == "on"
        config.history = HistoryConfig(replayOnJoin: history == "on" ? historyReplay : 0,
                                       maxPerRoom: historyMaxPerRoom == 0 ? nil : historyMaxPerRoom,
                                       maxAge: historyDays == 0 ? nil : .seconds(historyDays * 86_400))
        if let motd {
            guard let text = try? String(contentsOfFile: motd, encoding: .utf8) else {
                throw ValidationError("Cannot read the MOTD file \(motd); check the path and that it is UTF-8 text.")
            }
            config.irc.motd = text.split(separator: "\n", omittingEmptySubsequences: false).map { String($0) }
        }

        raiseOpenFileLimit()
        keepFreedHeapTop()
        // Watch signals before announcing the listeners: a script may signal as soon as it reads them.
        let (stops, stop) = AsyncStream<String>.makeStream()
        let signals = watchSignals { stop.yield($0) }

        let server: ParleyServer
        let bound: [BoundListener]
        do {
            server = try ParleyServer(config: config)
            bound = try await server.start()
        } catch {
            printError("parley: \(error)")
            throw ExitCode.failure
        }
        for listener in bound { emit("listening \(listener)") }

        if !noConsole { startConsole(Console(hub: server.hub, log: server.log,
                                                  udp: config.listeners.contains { $0.scheme == .udp } ? server.udpCounters : nil)) { stop.yield("console exit") } }

        for await reason in stops {
            emit("shutting down (\(reason))")
            break
        }
        await server.shutdown()
        signals.forEach { $0.cancel() }
        emit("stopped")
    }

    /// glibc gives the free top of the heap back to the system once 128 KiB of it is free, and a
    /// busy loop takes it back on its next pass, a page fault per 4 KiB: each member of a busy room
    /// has its gathered output allocated and freed every pass. In fan-out to 100 clients that was
    /// 23,000 faults a second; keeping 1 MiB stopped them until passes grew to 16,384 copies (about
    /// 1 MB of IRC lines), then 10,000 a second came back; 4 MiB stops them again. It costs the server
    /// at most that much memory, and none per idle connection (measured at 10,000).
    private func keepFreedHeapTop() {
        parley_keep_heap_top(4 << 20, 256 << 10)
    }

    /// glibc keeps 7 freed blocks of each size per thread for reuse; a publishing pass frees the
    /// objects of 64 messages at once, and past those seven they went back to the heap's bins, to be
    /// sorted and merged (`malloc_consolidate`, `unlink_chunk`, 5% of the loop in rooms) and taken out
    /// again by the next pass. With 1,024 per size, rooms over IRC gained 6% (alternating runs; 7% in
    /// simultaneous runs), fan-out was unchanged, and 10,000 idle connections cost the same (3,645
    /// bytes each). glibc reads the setting only from its environment at start-up, so the server runs
    /// itself again with it, once, before it starts (the same process). An operator's own
    /// `GLIBC_TUNABLES=glibc.malloc.tcache_count=N` is left as it is.
    private func raiseMallocCache() {
        parley_raise_malloc_cache(1024, CommandLine.unsafeArgv)
    }

    /// SIGINT and SIGTERM become a clean shutdown instead of killing the process.
    private func watchSignals(_ onSignal: @escaping @Sendable (String) -> Void) -> [any DispatchSourceSignal] {
        [(SIGINT, "SIGINT"), (SIGTERM, "SIGTERM")].map { number, name in
            signal(number, SIG_IGN)
            let source = DispatchSource.makeSignalSource(signal: number, queue: .global())
            source.setEventHandler { onSignal(name) }
            source.resume()
            return source
        }
    }

    /// Reads stdin on a thread of its own (a blocking read must not sit on the cooperative pool).
    /// End of input stops the console, not the server.
    private func startConsole(_ console: Console, onExit: @escaping @Sendable () -> Void) {
        let thread = Thread {
            while let line = readLine() {
                switch console.execute(line) {
                case .output(let lines):
                    for line in lines { emit(line) }
                case .exit:
                    onExit()
                    return
                }
            }
        }
        thread.start()
    }
}

/// Writes a line to stdout at once (no stdio buffer, so no flush: `fflush(NULL)` would also wait
/// for the stdin lock that the console's blocked `readLine` holds).
func emit(_ line: String) {
    FileHandle.standardOutput.write(Data((line + "\n").utf8))
}

func printError(_ text: String) {
    FileHandle.standardError.write(Data((text + "\n").utf8))
}
