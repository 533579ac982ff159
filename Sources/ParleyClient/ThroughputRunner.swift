import NIOCore
import NIOPosix

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif

/// What `parley load --scenario rooms` and `fanout` do: C clients spread over R rooms (fanout: one
/// room, and only the first S clients send), sending as fast as a window of unacknowledged messages
/// allows, for a bounded time. It measures how many messages a second the server accepts, stores (when
/// it keeps history) and delivers, over Parley's line door or IRC (Parley's IRC door or any other IRC
/// server).
public struct ThroughputOptions: Sendable {
    public var host = "127.0.0.1"
    public var port = 5555
    public var protocolKind = LoadProtocol.line
    public var clients = 200
    public var rooms = 50
    public var seconds = 10.0
    /// Messages a client may have sent and not yet had acknowledged (line: its own message came back;
    /// IRC: the server answered a `PING` sent after it).
    public var window = 16
    /// The most time allowed for the deliveries still in flight when sending stops.
    public var drainSeconds = 15.0
    public var runID: String?
    public var transport: LineTransport = .tcp
    /// `fanout`: only the first `senders` clients send, the others only receive; nil: everyone sends.
    public var senders: Int?
    /// How many receiving clients read the send time in each message to measure latency; the others
    /// only count lines.
    public var observers = 8
    /// A separate client pings the server every `pingInterval` during the run (nil: no pinger).
    public var pingInterval: TimeAmount? = .milliseconds(20)
    /// The server's pid, to report the CPU time it used while the clients sent.
    public var serverPID: Int32?

    public init() {}
}

public struct ThroughputReport: Codable, Sendable, Equatable, JSONLineReport {
    public var scenario = "rooms"
    public var protocolKind: LoadProtocol
    public var runID: String
    public var clients: Int
    public var rooms: Int
    public var senders: Int
    public var window: Int
    public var seconds: Double
    /// Messages sent, and of those, acknowledged (line: echoed to their sender; IRC: followed by a
    /// `PING` the server answered).
    public var sent: Int
    public var acknowledged: Int
    /// Room messages received by all clients, and how many the room sizes call for (line: every member,
    /// the sender included; IRC: every member but the sender).
    public var delivered: Int
    public var expected: Int
    public var lost: Int
    public var messagesPerSecond: Double
    public var deliveriesPerSecond: Double
    /// From sending a message to an observer receiving it.
    public var latencyMs: LatencySummary
    /// Round trips of the pinger's `PING`s during the run.
    public var pingMs: LatencySummary?
    /// The server's CPU time (user + system) from the first message sent to the last delivered.
    public var serverCPUSeconds: Double?
    /// The load generator's own CPU time over the same span: near `seconds` of one CPU means the
    /// generator, not the server, may be what limits the figures.
    public var loadCPUSeconds: Double
    /// The CPU the server is pinned to (when its pid is known and it is pinned to one), and the share
    /// of that CPU's time (of the whole machine's, when the server is not pinned) that a virtual
    /// machine's host took over the same span (Linux's "steal"), in percent.
    public var serverCPU: Int?
    public var stealPercent: Double?
    public var errorCount: Int
    public var errors: [String]

    enum CodingKeys: String, CodingKey {
        case scenario, clients, rooms, senders, window, seconds, sent, acknowledged, delivered, expected, lost, errors
        case protocolKind = "protocol"
        case runID = "run_id"
        case messagesPerSecond = "messages_per_second"
        case deliveriesPerSecond = "deliveries_per_second"
        case latencyMs = "latency_ms"
        case pingMs = "ping_ms"
        case serverCPUSeconds = "server_cpu_seconds"
        case loadCPUSeconds = "load_cpu_seconds"
        case serverCPU = "server_cpu"
        case stealPercent = "steal_percent"
        case errorCount = "error_count"
    }

    public var succeeded: Bool { lost == 0 && errorCount == 0 && acknowledged == sent }

    public var summary: String {
        var lines = [
            "parley load --scenario \(scenario): run \(runID), \(protocolKind.rawValue), \(clients) clients in \(rooms) room\(rooms == 1 ? "" : "s"), \(senders) sending, window \(window), \(fixed(seconds, 1)) s of sending",
            "messages:   \(sent) sent, \(acknowledged) acknowledged, \(fixed(messagesPerSecond, 0))/s",
            "deliveries: \(delivered) of \(expected) expected, \(lost) lost, \(fixed(deliveriesPerSecond, 0))/s",
            "latency (ms) p50 \(fixed(latencyMs.p50, 2))  p90 \(fixed(latencyMs.p90, 2))  p99 \(fixed(latencyMs.p99, 2))  max \(fixed(latencyMs.max, 2))",
        ]
        if let ping = pingMs {
            lines.append("ping (ms)    p50 \(fixed(ping.p50, 2))  p90 \(fixed(ping.p90, 2))  p99 \(fixed(ping.p99, 2))  max \(fixed(ping.max, 2))  (\(ping.count) pings)")
        }
        var cpu = "CPU: " + (serverCPUSeconds.map { "server \(fixed($0, 2)) s, " } ?? "") + "load generator \(fixed(loadCPUSeconds, 2)) s"
        if let stealPercent {
            cpu += ", stolen by the host: \(fixed(stealPercent, 1))% of " + (serverCPU.map { "CPU \($0) (the server's)" } ?? "the machine")
        }
        lines.append(cpu)
        if !errors.isEmpty { lines.append("errors (first \(errors.count) of \(errorCount)): " + errors.joined(separator: "; ")) }
        lines.append(succeeded ? "result: PASS" : "result: FAIL")
        return lines.joined(separator: "\n")
    }
}

struct ThroughputOutcome: Sendable {
    var sent = 0
    var acknowledged = 0
    var delivered = 0
    var expected = 0
    var latencies = LatencyHistogram()
    var error: String?
}

public func runThroughput(_ options: ThroughputOptions) async -> ThroughputReport {
    raiseOpenFileLimit()
    let runID = options.runID ?? String(UInt32.random(in: 0...UInt32.max), radix: 36)
    let rooms = max(1, min(options.rooms, options.clients))
    let senders = min(options.senders ?? options.clients, options.clients)
    // Observers are spread over the clients (and so over the rooms).
    let observerStride = max(1, options.clients / max(1, options.observers))
    let timeout = Duration.seconds(60)

    // Connect and join first, so that every room is full before anyone sends; then each connection is
    // handed to a counting handler that runs on its event loop.
    let connected: [(Int, Result<(LineClient, ThroughputHandler), any Error>)] = await withTaskGroup(of: (Int, Result<(LineClient, ThroughputHandler), any Error>).self) { group in
        for index in 0..<options.clients {
            group.addTask {
                var connection: LineClient?
                do {
                    let client = try await LineClient.connect(host: options.host, port: options.port, transport: options.transport)
                    connection = client
                    let room = "#r\(runID.prefix(4))-\(index % rooms)"
                    try await join(client, room: room, nick: loadNick("p", runID, index), protocolKind: options.protocolKind, timeout: timeout)
                    let handler = ThroughputHandler(
                        protocolKind: options.protocolKind, tag: "p\(index)-", room: room, window: options.window,
                        observes: index % observerStride == observerStride - 1, loop: client.eventLoop)
                    try await client.handOver(to: handler)
                    return (index, .success((client, handler)))
                } catch {
                    await connection?.close()
                    return (index, .failure(error))
                }
            }
        }
        var all: [(Int, Result<(LineClient, ThroughputHandler), any Error>)] = []
        for await item in group { all.append(item) }
        return all
    }
    var errors: [String] = []
    var members: [(index: Int, room: Int, client: LineClient, handler: ThroughputHandler)] = []
    for (index, result) in connected.sorted(by: { $0.0 < $1.0 }) {
        switch result {
        case .success(let (client, handler)): members.append((index, index % rooms, client, handler))
        case .failure(let error): errors.append("client \(index): \(error)")
        }
    }

    var pinger: RunningPinger?
    if let interval = options.pingInterval {
        do {
            pinger = try await RunningPinger.start(host: options.host, port: options.port, transport: options.transport,
                                                   protocolKind: options.protocolKind, nick: loadNick("q", runID, 0), interval: interval)
        } catch {
            errors.append("pinger: \(error)")
        }
    }

    // Send for the given time; each handler reports what it sent once its last message was acknowledged.
    let cpuBefore = options.serverPID.flatMap(ServerProcess.cpuSeconds)
    let loadCPUBefore = ServerProcess.ownCPUSeconds()
    let timesBefore = CPUTimes.read()
    let stopSending = NIODeadline.now() + .nanoseconds(Int64(options.seconds * 1e9))
    let grace = TimeAmount.nanoseconds(Int64(options.drainSeconds * 1e9))
    let sending = members.map { member in
        member.index < senders
            ? member.handler.send(until: stopSending, giveUpAfter: grace) : member.client.eventLoop.makeSucceededFuture(0)
    }
    var sentPerRoom = Array(repeating: 0, count: rooms)
    var sentByMember: [Int] = []
    for (member, sent) in zip(members, sending) {
        let count = (try? await sent.get()) ?? 0
        sentPerRoom[member.room] += count
        sentByMember.append(count)
    }
    // Then every member must receive every message its room's members sent (over IRC, but its own).
    let draining = zip(members, sentByMember).map { member, own in
        member.handler.drain(expecting: sentPerRoom[member.room] - (options.protocolKind == .irc ? own : 0), within: grace)
    }
    var outcomes: [ThroughputOutcome] = []
    for (member, future) in zip(members, draining) {
        let outcome = (try? await future.get()) ?? ThroughputOutcome(error: "client \(member.handler.tag): the event loop went away")
        outcomes.append(outcome)
    }
    let cpuAfter = options.serverPID.flatMap(ServerProcess.cpuSeconds)
    let loadCPU = ServerProcess.ownCPUSeconds() - loadCPUBefore
    let serverCPU = options.serverPID.flatMap(ServerProcess.pinnedCPU)
    let steal = timesBefore.flatMap { before in CPUTimes.read()?.stealPercent(since: before, cpu: serverCPU) }
    let pings = await pinger?.stop()
    for member in members { await member.client.close() }

    let sent = outcomes.reduce(0) { $0 + $1.sent }
    let acknowledged = outcomes.reduce(0) { $0 + $1.acknowledged }
    let delivered = outcomes.reduce(0) { $0 + $1.delivered }
    let expected = outcomes.reduce(0) { $0 + $1.expected }
    var latencies = LatencyHistogram()
    for outcome in outcomes { latencies.add(outcome.latencies) }
    errors += outcomes.compactMap(\.error)
    var report = ThroughputReport(
        protocolKind: options.protocolKind, runID: runID, clients: options.clients, rooms: rooms, senders: senders,
        window: options.window, seconds: options.seconds,
        sent: sent, acknowledged: acknowledged, delivered: delivered, expected: expected, lost: max(0, expected - delivered),
        messagesPerSecond: Double(acknowledged) / options.seconds, deliveriesPerSecond: Double(delivered) / options.seconds,
        latencyMs: latencies.summary, pingMs: pings?.summary, serverCPUSeconds: nil, loadCPUSeconds: loadCPU,
        serverCPU: serverCPU, stealPercent: steal,
        errorCount: errors.count, errors: Array(errors.prefix(5)))
    if let cpuBefore, let cpuAfter { report.serverCPUSeconds = cpuAfter - cpuBefore }
    if options.senders != nil { report.scenario = "fanout" }
    return report
}

/// A nick short enough for any IRC server (ngIRCd allows 9 characters): a letter, 3 characters of the
/// run id, the client's index in base 36.
func loadNick(_ letter: String, _ runID: String, _ index: Int) -> String {
    letter + runID.prefix(3) + String(index, radix: 36)
}

/// Registers (IRC) or waits for the welcome (line), then joins `room` and waits until the server
/// confirms it (IRC: the end of the names list, `366`).
private func join(_ client: LineClient, room: String, nick: String, protocolKind: LoadProtocol, timeout: Duration) async throws {
    switch protocolKind {
    case .line:
        _ = try await client.expect(timeout: timeout, "WELCOME") { $0.hasPrefix("WELCOME ") }
        try await client.send("/join \(room)")
        let joined = try await client.expect(timeout: timeout, "OK join") { $0.hasPrefix("OK join") || $0.hasPrefix("ERR ") }
        guard joined.hasPrefix("OK join") else { throw LoadFailure(joined) }
    case .irc:
        try await registerIRC(client, nick: nick, timeout: timeout)
        try await client.send("JOIN \(room)\r")
        // 366 ends the names list; 403, 405 and 471 to 477 refuse the join.
        let refusals: Set<Substring> = ["403", "405", "471", "473", "474", "475", "477"]
        let reply = try await client.expect(timeout: timeout, "366 (joined \(room))") { line in
            let words = line.split(separator: " ", maxSplits: 2)
            return words.count >= 2 && (words[1] == "366" || refusals.contains(words[1]))
        }
        guard reply.split(separator: " ", maxSplits: 2)[1] == "366" else { throw LoadFailure("JOIN \(room) refused: \(reply)") }
    }
}

/// One throughput client on its event loop. A sender sends `window` messages, then the next
/// `window` once all of them are acknowledged. Every client counts the room messages it receives by
/// looking at a line's first bytes: no strings, no task switch per line, so that the generator costs
/// the machine as little as it can. An observer also reads the send time at the end of each message,
/// for latency.
///
/// A message's text is `TAG SEQ TIME`: `p12-` for client 12, its sequence number, and the generator's
/// monotonic clock in nanoseconds when it was sent.
final class ThroughputHandler: ChannelInboundHandler, @unchecked Sendable {
    // @unchecked Sendable: every stored var is touched only on `loop`, the channel's event loop (the
    // methods called from elsewhere hop there with `flatSubmit` first); the lets are constants.
    typealias InboundIn = ByteBuffer

    let tag: String
    private let protocolKind: LoadProtocol
    /// `: p12-`: over the line door, the only lines that contain it are this client's own messages.
    private let marker: [UInt8]
    /// What precedes the text of a message this client sends.
    private let messagePrefix: String
    private let window: Int
    private let observes: Bool
    private let loop: any EventLoop
    private var context: ChannelHandlerContext?
    private var partial: [UInt8] = []
    private var outcome = ThroughputOutcome()
    private var stopSending: NIODeadline?
    private var sendingDone: EventLoopPromise<Int>?
    private var expected: Int?
    private var drained: EventLoopPromise<Void>?

    init(protocolKind: LoadProtocol, tag: String, room: String, window: Int, observes: Bool, loop: any EventLoop) {
        self.protocolKind = protocolKind
        self.loop = loop
        self.tag = tag
        self.marker = Array(": \(tag)".utf8)
        self.messagePrefix = protocolKind == .irc ? "PRIVMSG \(room) :\(tag)" : tag
        self.window = max(1, window)
        self.observes = observes
    }

    func handlerAdded(context: ChannelHandlerContext) { self.context = context }

    /// Sends until the deadline; gives how many messages were sent once all are acknowledged.
    func send(until deadline: NIODeadline, giveUpAfter grace: TimeAmount) -> EventLoopFuture<Int> {
        loop.flatSubmit { [self] in
            let promise = loop.makePromise(of: Int.self)
            sendingDone = promise
            stopSending = deadline
            top()
            // Wakes the handler at the deadline (and fails it if its messages are never all acknowledged).
            loop.scheduleTask(deadline: deadline) { [self] in checkSending() }
            loop.scheduleTask(deadline: deadline + grace) { [self] in
                sendingDone?.fail(LoadFailure("client \(tag): \(outcome.sent - outcome.acknowledged) messages never acknowledged"))
                sendingDone = nil
            }
            return promise.futureResult
        }
    }

    /// Waits until `count` room messages have arrived (or the time is up); gives what this client saw.
    func drain(expecting count: Int, within limit: TimeAmount) -> EventLoopFuture<ThroughputOutcome> {
        loop.flatSubmit { [self] in
            expected = count
            outcome.expected = count
            let promise = loop.makePromise(of: Void.self)
            drained = promise
            checkDrained()
            loop.scheduleTask(in: limit) { [self] in
                drained?.fail(LoadFailure("client \(tag): \(outcome.delivered) of \(count) messages arrived"))
                drained = nil
            }
            return promise.futureResult.map { [self] in outcome }.recover { [self] error in
                var result = outcome
                result.error = "\(error)"
                return result
            }
        }
    }

    /// Sends a window's worth once all that went before is acknowledged, the same way over either
    /// protocol; over IRC, a `PING` carrying the count sent so far follows, and its `PONG`
    /// acknowledges them all (a server handles a client's lines in order). Over the line door each
    /// message is acknowledged by its own echo: refilling at every echo sent one message per write,
    /// and the server read, stored and committed them one or two at a time.
    private func top() {
        guard let context, let stopSending, NIODeadline.now() < stopSending else { return checkSending() }
        let owed = Self.burst(window: window, unacknowledged: outcome.sent - outcome.acknowledged)
        guard owed > 0 else { return }
        var buffer = context.channel.allocator.buffer(capacity: owed * (messagePrefix.utf8.count + 32) + 32)
        let now = String(NIODeadline.now().uptimeNanoseconds)
        let end = protocolKind == .irc ? "\r\n" : "\n"
        for _ in 0..<owed {
            buffer.writeString(messagePrefix)
            buffer.writeString(String(outcome.sent))
            buffer.writeString(" ")
            buffer.writeString(now)
            buffer.writeString(end)
            outcome.sent += 1
        }
        if protocolKind == .irc { buffer.writeString("PING :\(outcome.sent)\r\n") }
        context.writeAndFlush(NIOAny(buffer), promise: nil)
    }

    /// How many messages to send now: a whole window once nothing is left unacknowledged.
    static func burst(window: Int, unacknowledged: Int) -> Int {
        unacknowledged == 0 ? window : 0
    }

    private func checkSending() {
        guard let stopSending, NIODeadline.now() >= stopSending, outcome.acknowledged == outcome.sent else { return }
        sendingDone?.succeed(outcome.sent)
        sendingDone = nil
    }

    private func checkDrained() {
        guard let expected, outcome.delivered >= expected else { return }
        drained?.succeed()
        drained = nil
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        let buffer = unwrapInboundIn(data)
        let now = NIODeadline.now().uptimeNanoseconds
        let acknowledgedBefore = outcome.acknowledged
        forEachLine(in: buffer, partial: &partial) { line in
            switch protocolKind {
            case .line: countLine(line, at: now)
            case .irc: countIRC(line, at: now, context: context)
            }
        }
        if outcome.acknowledged != acknowledgedBefore { top() }
        checkDrained()
    }

    /// A line-door line: a room message (`MSG #...`), and this client's own if it holds the marker.
    private func countLine(_ line: UnsafeRawBufferPointer, at now: UInt64) {
        guard hasPrefix(line, "MSG ") else { return }
        outcome.delivered += 1
        if observes { observe(line, at: now) }
        // Only a client with messages unacknowledged can be reading one of its own: the others (all
        // but the senders in fan-out) skip the search, which was most of the generator's work per line.
        if outcome.acknowledged < outcome.sent && containsBytes(line, marker) { outcome.acknowledged += 1 }
    }

    /// An IRC line: `:prefix PRIVMSG ...` is a delivery, `:server PONG server :N` acknowledges the
    /// first N messages, and the server's `PING` is answered.
    private func countIRC(_ line: UnsafeRawBufferPointer, at now: UInt64, context: ChannelHandlerContext) {
        guard line.first == UInt8(ascii: ":") else {
            answerServerPing(line, context)
            return
        }
        guard let base = line.baseAddress, let found = memchr(base, 0x20, line.count) else { return }
        let command = UnsafeRawBufferPointer(rebasing: line[(base.distance(to: UnsafeRawPointer(found)) + 1)...])
        if hasPrefix(command, "PRIVMSG ") {
            outcome.delivered += 1
            if observes { observe(line, at: now) }
        } else if hasPrefix(command, "PONG "), let count = trailingNumber(line) {
            outcome.acknowledged = max(outcome.acknowledged, min(Int(count), outcome.sent))
        }
    }

    /// Records the latency of a message whose text ends with its send time.
    private func observe(_ line: UnsafeRawBufferPointer, at now: UInt64) {
        guard let sentAt = trailingNumber(line), sentAt <= now else { return }
        outcome.latencies.record(microseconds: (now - sentAt) / 1000)
    }

    func channelInactive(context: ChannelHandlerContext) {
        sendingDone?.fail(LineClientError.closed)
        sendingDone = nil
        drained?.fail(LineClientError.closed)
        drained = nil
        context.fireChannelInactive()
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        context.close(promise: nil)
    }
}

/// Calls `body` with each complete line in `buffer` (without its `\n` and any `\r`), keeping an
/// unfinished last line in `partial` for the next read.
func forEachLine(in buffer: ByteBuffer, partial: inout [UInt8], _ body: (UnsafeRawBufferPointer) -> Void) {
    buffer.withUnsafeReadableBytes { raw in
        guard let base = raw.baseAddress else { return }
        var start = 0
        while start < raw.count, let found = memchr(base + start, 0x0A, raw.count - start) {
            let newline = base.distance(to: UnsafeRawPointer(found))
            var end = newline
            if partial.isEmpty {
                if end > start, raw[end - 1] == 0x0D { end -= 1 }
                body(UnsafeRawBufferPointer(rebasing: raw[start..<end]))
            } else {
                partial.append(contentsOf: raw[start..<newline])
                if partial.last == 0x0D { partial.removeLast() }
                partial.withUnsafeBytes { body($0) }
                partial.removeAll(keepingCapacity: true)
            }
            start = newline + 1
        }
        if start < raw.count { partial.append(contentsOf: raw[start...]) }
    }
}

/// Whether `line` starts with `prefix` (a `memcmp`: the generic `starts(with:)` over a string's
/// UTF-8 view was a tenth of the generator's time in fan-out to 1,000).
func hasPrefix(_ line: UnsafeRawBufferPointer, _ prefix: StaticString) -> Bool {
    guard line.count >= prefix.utf8CodeUnitCount, let base = line.baseAddress else { return prefix.utf8CodeUnitCount == 0 }
    return memcmp(base, prefix.utf8Start, prefix.utf8CodeUnitCount) == 0
}

/// Whether `needle` occurs in `line`: `memchr` to each candidate first byte and `memcmp` there,
/// many times faster than a loop over subscripts (this runs for lines by the million).
func containsBytes(_ line: UnsafeRawBufferPointer, _ needle: [UInt8]) -> Bool {
    guard let first = needle.first, line.count >= needle.count, var at = line.baseAddress else { return false }
    var left = line.count
    return needle.withUnsafeBytes { needle in
        guard let wanted = needle.baseAddress else { return false }
        while left >= needle.count, let found = memchr(at, Int32(first), left - needle.count + 1) {
            if memcmp(found, wanted, needle.count) == 0 { return true }
            let skipped = at.distance(to: UnsafeRawPointer(found)) + 1
            at += skipped
            left -= skipped
        }
        return false
    }
}

/// Answers an IRC server's `PING x` with `PONG x`; false when `line` is not a PING.
@discardableResult
func answerServerPing(_ line: UnsafeRawBufferPointer, _ context: ChannelHandlerContext) -> Bool {
    guard hasPrefix(line, "PING ") else { return false }
    var pong = context.channel.allocator.buffer(capacity: line.count + 2)
    pong.writeString("PONG ")
    pong.writeBytes(UnsafeRawBufferPointer(rebasing: line[5...]))
    pong.writeString("\r\n")
    context.writeAndFlush(NIOAny(pong), promise: nil)
    return true
}

/// The decimal number at the very end of `line`, if it ends with digits (nil when it does not fit
/// in 64 bits).
func trailingNumber(_ line: UnsafeRawBufferPointer) -> UInt64? {
    var start = line.count
    while start > 0, line[start - 1] >= 0x30, line[start - 1] <= 0x39 { start -= 1 }
    guard start < line.count else { return nil }
    var value: UInt64 = 0
    for index in start..<line.count {
        let (times10, overflowed) = value.multipliedReportingOverflow(by: 10)
        let (sum, carried) = times10.addingReportingOverflow(UInt64(line[index] - 0x30))
        guard !overflowed, !carried else { return nil }
        value = sum
    }
    return value
}
