import NIOCore
import Synchronization

#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif

/// What `parley load --scenario rooms` does: C guest clients spread over R rooms, every one sending
/// as fast as a window of unacknowledged messages allows, for a bounded time. It measures how many
/// messages a second the server accepts, stores (when it keeps history) and delivers.
public struct ThroughputOptions: Sendable {
    public var host = "127.0.0.1"
    public var port = 5555
    public var clients = 200
    public var rooms = 50
    public var seconds = 10.0
    /// Messages a client may have sent and not yet seen echoed.
    public var window = 16
    /// The most time allowed for the deliveries still in flight when sending stops.
    public var drainSeconds = 15.0
    public var runID: String?
    public var transport: LineTransport = .tcp
    /// `fanout`: only the first `senders` clients send, the others only receive; nil: everyone sends.
    public var senders: Int?

    public init() {}
}

public struct ThroughputReport: Codable, Sendable, Equatable, JSONLineReport {
    public var scenario = "rooms"
    public var runID: String
    public var clients: Int
    public var rooms: Int
    public var window: Int
    public var seconds: Double
    /// Messages sent, and of those, echoed to their sender (accepted, stored and published).
    public var sent: Int
    public var acknowledged: Int
    /// Room messages received by all clients, and how many the room sizes call for.
    public var delivered: Int
    public var expected: Int
    public var lost: Int
    public var messagesPerSecond: Double
    public var deliveriesPerSecond: Double
    /// From sending a message to receiving its echo.
    public var latencyMs: LatencySummary
    public var errorCount: Int
    public var errors: [String]

    enum CodingKeys: String, CodingKey {
        case scenario, clients, rooms, window, seconds, sent, acknowledged, delivered, expected, lost, errors
        case runID = "run_id"
        case messagesPerSecond = "messages_per_second"
        case deliveriesPerSecond = "deliveries_per_second"
        case latencyMs = "latency_ms"
        case errorCount = "error_count"
    }

    public var succeeded: Bool { lost == 0 && errorCount == 0 && acknowledged == sent }

    public var summary: String {
        var lines = [
            "parley load --scenario \(scenario): run \(runID), \(clients) clients in \(rooms) room\(rooms == 1 ? "" : "s"), window \(window), \(fixed(seconds, 1)) s of sending",
            "messages:   \(sent) sent, \(acknowledged) acknowledged, \(fixed(messagesPerSecond, 0))/s",
            "deliveries: \(delivered) of \(expected) expected, \(lost) lost, \(fixed(deliveriesPerSecond, 0))/s",
            "latency (ms) p50 \(fixed(latencyMs.p50, 2))  p90 \(fixed(latencyMs.p90, 2))  p99 \(fixed(latencyMs.p99, 2))  max \(fixed(latencyMs.max, 2))",
        ]
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
    var latencies: [Double] = []
    var error: String?
}

public func runThroughput(_ options: ThroughputOptions) async -> ThroughputReport {
    raiseOpenFileLimit()
    let runID = options.runID ?? String(UInt32.random(in: 0...UInt32.max), radix: 36)
    let rooms = max(1, min(options.rooms, options.clients))

    // Connect and join first, so that every room is full before anyone sends; then each connection is
    // handed to a counting handler that runs on its event loop.
    let connected: [(Int, Result<(LineClient, ThroughputHandler), any Error>)] = await withTaskGroup(of: (Int, Result<(LineClient, ThroughputHandler), any Error>).self) { group in
        for index in 0..<options.clients {
            group.addTask {
                do {
                    let client = try await LineClient.connect(host: options.host, port: options.port, transport: options.transport)
                    _ = try await client.expect(timeout: .seconds(30), "WELCOME") { $0.hasPrefix("WELCOME ") }
                    try await client.send("/join #r\(runID)-\(index % rooms)")
                    let joined = try await client.expect(timeout: .seconds(30), "OK join") { $0.hasPrefix("OK join") || $0.hasPrefix("ERR ") }
                    guard joined.hasPrefix("OK join") else { throw LoadFailure(joined) }
                    let handler = ThroughputHandler(tag: "p\(index)-", window: options.window, loop: client.eventLoop)
                    try await client.handOver(to: handler)
                    return (index, .success((client, handler)))
                } catch {
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
    for (index, result) in connected {
        switch result {
        case .success(let (client, handler)): members.append((index, index % rooms, client, handler))
        case .failure(let error): errors.append("client \(index): \(error)")
        }
    }

    // Send for the given time; each handler reports what it sent once its last message came back.
    let stopSending = NIODeadline.now() + .nanoseconds(Int64(options.seconds * 1e9))
    let grace = TimeAmount.nanoseconds(Int64(options.drainSeconds * 1e9))
    let sending = members.map { member in
        member.index < (options.senders ?? .max)
            ? member.handler.send(until: stopSending, giveUpAfter: grace) : member.client.eventLoop.makeSucceededFuture(0)
    }
    var sentPerRoom = Array(repeating: 0, count: rooms)
    for (member, sent) in zip(members, sending) {
        sentPerRoom[member.room] += (try? await sent.get()) ?? 0
    }
    // Then every member must receive every message its room's members sent, its own included.
    let draining = members.map { $0.handler.drain(expecting: sentPerRoom[$0.room], within: grace) }
    var outcomes: [ThroughputOutcome] = []
    for (member, future) in zip(members, draining) {
        var outcome = (try? await future.get()) ?? ThroughputOutcome(error: "client \(member.handler.tag): the event loop went away")
        outcome.expected = sentPerRoom[member.room]
        outcomes.append(outcome)
    }
    for member in members { await member.client.close() }

    let sent = outcomes.reduce(0) { $0 + $1.sent }
    let acknowledged = outcomes.reduce(0) { $0 + $1.acknowledged }
    let delivered = outcomes.reduce(0) { $0 + $1.delivered }
    let expected = outcomes.reduce(0) { $0 + $1.expected }
    errors += outcomes.compactMap(\.error)
    var report = ThroughputReport(
        runID: runID, clients: options.clients, rooms: rooms, window: options.window, seconds: options.seconds,
        sent: sent, acknowledged: acknowledged, delivered: delivered, expected: expected, lost: max(0, expected - delivered),
        messagesPerSecond: Double(acknowledged) / options.seconds, deliveriesPerSecond: Double(delivered) / options.seconds,
        latencyMs: LatencySummary(samples: outcomes.flatMap(\.latencies)), errorCount: errors.count, errors: Array(errors.prefix(5)))
    if options.senders != nil { report.scenario = "fanout" }
    return report
}

/// One throughput client on its event loop. It keeps `window` messages in flight (sending one more as
/// each of its own comes back) and counts the room messages it receives by scanning bytes: no strings,
/// no task switch per line, so the generator costs the server's machine as little as it can.
final class ThroughputHandler: ChannelInboundHandler, @unchecked Sendable {
    // @unchecked Sendable: every stored var is touched only on `loop`, the channel's event loop (the
    // methods called from elsewhere hop there with `flatSubmit` first); `loop`, `tag`, `marker` and
    // `window` are constants.
    typealias InboundIn = ByteBuffer

    let tag: String
    /// `: p12-`: the only lines that contain it are this client's own messages.
    private let marker: [UInt8]
    private let window: Int
    private let loop: any EventLoop
    private var context: ChannelHandlerContext?
    private var partial: [UInt8] = []
    private var outcome = ThroughputOutcome()
    private var sentAt: [NIODeadline] = []
    private var stopSending: NIODeadline?
    private var sendingDone: EventLoopPromise<Int>?
    private var expected: Int?
    private var drained: EventLoopPromise<Void>?

    init(tag: String, window: Int, loop: any EventLoop) {
        self.loop = loop
        self.tag = tag
        self.marker = Array(": \(tag)".utf8)
        self.window = max(1, window)
    }

    func handlerAdded(context: ChannelHandlerContext) { self.context = context }

    /// Sends until the deadline; gives how many messages were sent once all have come back.
    func send(until deadline: NIODeadline, giveUpAfter grace: TimeAmount) -> EventLoopFuture<Int> {
        loop.flatSubmit { [self] in
            let promise = loop.makePromise(of: Int.self)
            sendingDone = promise
            stopSending = deadline
            top()
            // Wakes the handler at the deadline (and fails it if its messages never all come back).
            loop.scheduleTask(deadline: deadline) { [self] in checkSending() }
            loop.scheduleTask(deadline: deadline + grace) { [self] in
                sendingDone?.fail(LoadFailure("client \(tag): \(outcome.sent - outcome.acknowledged) messages never came back"))
                sendingDone = nil
            }
            return promise.futureResult
        }
    }

    /// Waits until `count` room messages have arrived (or the time is up); gives what this client saw.
    func drain(expecting count: Int, within limit: TimeAmount) -> EventLoopFuture<ThroughputOutcome> {
        loop.flatSubmit { [self] in
            expected = count
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

    /// Fills the window.
    private func top() {
        guard let context, let stopSending, NIODeadline.now() < stopSending else { return checkSending() }
        let owed = window - (outcome.sent - outcome.acknowledged)
        guard owed > 0 else { return }
        var buffer = context.channel.allocator.buffer(capacity: owed * (tag.utf8.count + 8))
        let now = NIODeadline.now()
        for _ in 0..<owed {
            buffer.writeString(tag)
            buffer.writeString(String(outcome.sent))
            buffer.writeInteger(UInt8(ascii: "\n"))
            sentAt.append(now)
            outcome.sent += 1
        }
        context.writeAndFlush(NIOAny(buffer), promise: nil)
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
        let now = NIODeadline.now()
        buffer.withUnsafeReadableBytes { raw in
            var start = raw.startIndex
            while let newline = raw[start...].firstIndex(of: 0x0A) {
                if partial.isEmpty {
                    count(UnsafeRawBufferPointer(rebasing: raw[start..<newline]), at: now)
                } else {
                    partial.append(contentsOf: raw[start..<newline])
                    partial.withUnsafeBytes { count($0, at: now) }
                    partial.removeAll(keepingCapacity: true)
                }
                start = newline + 1
            }
            partial.append(contentsOf: raw[start...])
        }
        top()
        checkDrained()
    }

    /// One line: a room message (`MSG #...`), and this client's own if it holds the marker.
    private func count(_ line: UnsafeRawBufferPointer, at now: NIODeadline) {
        guard line.count > 4, line[0] == UInt8(ascii: "M"), line[1] == UInt8(ascii: "S"), line[2] == UInt8(ascii: "G"),
              line[3] == UInt8(ascii: " ") else { return }
        outcome.delivered += 1
        guard contains(line, marker) else { return }
        if outcome.acknowledged < sentAt.count {
            outcome.latencies.append(Double((now - sentAt[outcome.acknowledged]).nanoseconds) / 1e6)
        }
        outcome.acknowledged += 1
    }

    private func contains(_ line: UnsafeRawBufferPointer, _ needle: [UInt8]) -> Bool {
        guard line.count >= needle.count else { return false }
        var index = 0
        while index <= line.count - needle.count {
            if line[index] == needle[0] {
                var matched = 1
                while matched < needle.count && line[index + matched] == needle[matched] { matched += 1 }
                if matched == needle.count { return true }
            }
            index += 1
        }
        return false
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
