import ArgumentParser
import NIOCore
import ParleyClient
import ParleyUDP

/// `parley load`: many concurrent clients against a server (the logic lives in `ParleyClient.runLoad`).
struct Load: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "load",
        abstract: "Run many concurrent chat clients against a server and check every message arrives.",
        discussion: """
            Creates accounts, then connects all clients at once: half register new accounts, half log \
            in; all join one room, send their messages and check that every client receives every \
            message exactly once. Prints a summary and, as the last line, a JSON report. Exits with a \
            non-zero status when a client failed or a message was lost.
            """
    )

    @Option(help: "The server's host.")
    var host = "127.0.0.1"

    @Option(help: "The port of the server's line door (or UDP door with --udp).")
    var port = 5555

    @OptionGroup var datagrams: UDPFlags

    @Option(help: "course: accounts, login, one room, every message checked; rooms: guests in many rooms sending for --seconds, measuring throughput; connections: --clients connecting at once and held idle for --hold seconds, measuring registration time and (with --server-pid) server memory per connection.")
    var scenario = "course"

    @Option(name: .customLong("protocol"), help: "rooms, fanout and connections: line (Parley's line door) or irc (any IRC server, Parley's IRC door included).")
    var protocolName = "line"

    @Option(help: "connections: seconds the connections are held once all have registered.")
    var hold = 2.0

    @Flag(help: "course: a login storm; every client logs into an account made beforehand (none registers).")
    var everyoneLogsIn = false

    @Option(help: "Milliseconds between the pings of a separate client that measures the server's responsiveness during the run (course, rooms, fanout; 0: no pinger).")
    var pingEvery = 20

    @Option(help: "The server's process id, to report its CPU time and memory from /proc.")
    var serverPid: Int32?

    @Option(help: "How many clients run at the same time.")
    var clients = 100

    @Option(help: "rooms: how many rooms the clients are spread over.")
    var rooms = 50

    @Option(help: "fanout: how many of the clients (all in one room) send; the others only receive.")
    var senders = 10

    @Option(help: "rooms: how long the clients send, in seconds.")
    var seconds = 10.0

    @Option(help: "rooms, fanout: messages a sender sends at once, then waits until all are acknowledged.")
    var window = 16

    @Option(help: "How many messages each client sends.")
    var messages = 5

    @Option(help: "The room the clients join (default: #load-<run id>).")
    var room: String?

    @Option(help: "The password of the accounts the run creates (8 to 72 bytes).")
    var password = "load-test-password"

    @Option(help: "The bound on the whole run, in seconds.")
    var timeout: Double = 120

    @Flag(inversion: .prefixedNo, help: "Show a progress line (default: when standard output is a terminal).")
    var progress: Bool?

    /// `--ping-every` as the runners take it (nil: no pinger).
    var pingInterval: TimeAmount? { pingEvery > 0 ? .milliseconds(Int64(pingEvery)) : nil }

    func validate() throws {
        guard clients >= 1 else { throw ValidationError("--clients must be at least 1.") }
        guard messages >= 0 else { throw ValidationError("--messages cannot be negative.") }
        guard timeout > 0, timeout.isFinite else { throw ValidationError("--timeout must be a positive number of seconds.") }
        guard (8...72).contains(password.utf8.count), !password.contains(" ") else {
            throw ValidationError("--password must be 8 to 72 bytes, without spaces.")
        }
        guard (1...65535).contains(port) else { throw ValidationError("--port must be between 1 and 65535.") }
        guard ["course", "rooms", "fanout", "connections"].contains(scenario) else {
            throw ValidationError("--scenario takes course, rooms, fanout or connections; got \"\(scenario)\".")
        }
        guard senders >= 1 else { throw ValidationError("--senders must be at least 1.") }
        guard LoadProtocol(rawValue: protocolName) != nil else { throw ValidationError("--protocol takes line or irc; got \"\(protocolName)\".") }
        if protocolName == "irc" && scenario == "course" {
            throw ValidationError("--protocol irc goes with the rooms, fanout and connections scenarios; the course scenario uses Parley's accounts over the line protocol.")
        }
        if protocolName == "irc" && datagrams.udp { throw ValidationError("--udp carries the line protocol; leave out --protocol irc.") }
        if datagrams.udp && scenario == "connections" { throw ValidationError("--scenario connections runs over TCP; leave out --udp.") }
        guard pingEvery >= 0, pingEvery <= 60_000 else { throw ValidationError("--ping-every takes 0 (no pinger) to 60000 milliseconds.") }
        guard hold >= 0, hold <= 3600 else { throw ValidationError("--hold must be from 0 to 3600 seconds.") }
        guard rooms >= 1, window >= 1 else { throw ValidationError("--rooms and --window must be at least 1.") }
        guard seconds > 0, seconds <= 3600 else { throw ValidationError("--seconds must be more than 0 and at most 3600.") }
    }

    func run() async throws {
        let counters = UDPCounters()
        let transport = datagrams.transport(counters: counters)
        // Before the JSON line, which stays last.
        let udpSummary = { if datagrams.udp { print("udp, client side: " + counters.traffic) } }
        if scenario == "connections" {
            var options = ConnectionsOptions()
            options.host = host
            options.port = port
            options.clients = clients
            options.protocolKind = LoadProtocol(rawValue: protocolName) ?? .line
            options.holdSeconds = hold
            options.serverPID = serverPid
            options.timeout = .seconds(timeout)
            let report = await runConnections(options)
            print(report.summary)
            print(report.jsonLine)
            if !report.succeeded { throw ExitCode.failure }
            return
        }
        if scenario == "rooms" || scenario == "fanout" {
            var options = ThroughputOptions()
            options.host = host
            options.port = port
            options.clients = clients
            options.rooms = rooms
            options.seconds = seconds
            options.window = window
            options.transport = transport
            options.protocolKind = LoadProtocol(rawValue: protocolName) ?? .line
            options.serverPID = serverPid
            options.pingInterval = pingInterval
            if scenario == "fanout" {
                options.rooms = 1
                options.senders = senders
            }
            let report = await runThroughput(options)
            print(report.summary)
            udpSummary()
            print(report.jsonLine)
            if !report.succeeded { throw ExitCode.failure }
            return
        }
        var options = LoadOptions(
            host: host,
            port: port,
            clients: clients,
            messages: messages,
            room: room,
            password: password,
            timeout: .seconds(timeout),
            progress: progress ?? isStandardOutputTerminal()
        )
        options.transport = transport
        options.everyoneLogsIn = everyoneLogsIn
        options.pingInterval = pingInterval
        let report = await runLoad(options)
        print(report.summary)
        udpSummary()
        print(report.jsonLine)
        if !report.succeeded {
            throw ExitCode.failure
        }
    }
}
