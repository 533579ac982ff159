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

    public init() {}
}

public struct ThroughputReport: Codable, Sendable, Equatable {
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

    public var jsonLine: String {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
        guard let data = try? encoder.encode(self) else { return "{\"error\":\"could not encode the report\"}" }
        return String(decoding: data, as: UTF8.self)
    }

    public var summary: String {
        var lines = [
            "parley load --scenario rooms: run \(runID), \(clients) clients in \(rooms) rooms, window \(window), \(fixed(seconds, 1)) s of sending",
            "messages:   \(sent) sent, \(acknowledged) acknowledged, \(fixed(messagesPerSecond, 0))/s",
            "deliveries: \(delivered) of \(expected) expected, \(lost) lost, \(fixed(deliveriesPerSecond, 0))/s",
            "latency (ms) p50 \(fixed(latencyMs.p50, 2))  p90 \(fixed(latencyMs.p90, 2))  p99 \(fixed(latencyMs.p99, 2))  max \(fixed(latencyMs.max, 2))",
        ]
        if !errors.isEmpty { lines.append("errors (first \(errors.count) of \(errorCount)): " + errors.joined(separator: "; ")) }
        lines.append(succeeded ? "result: PASS" : "result: FAIL")
        return lines.joined(separator: "\n")
    }
}

/// Per room: how many members it has and how many messages they sent in all, once all have finished.
final class RoomTally: Sendable {
    private struct State {
        var members = 0
        var finished = 0
        var sent = 0
    }
    private let state: Mutex<[State]>

    init(rooms: Int) {
        state = Mutex(Array(repeating: State(), count: rooms))
    }

    func join(_ room: Int) { state.withLock { $0[room].members += 1 } }

    func finished(_ room: Int, sent: Int) {
        state.withLock { rooms in
            rooms[room].finished += 1
            rooms[room].sent += sent
        }
    }

    /// The messages every member of the room receives, once all its members have stopped sending.
    func expected(_ room: Int) -> Int? {
        state.withLock { rooms in rooms[room].finished == rooms[room].members ? rooms[room].sent : nil }
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
    let tally = RoomTally(rooms: rooms)

    // Connect and join first, so that every room is full before anyone sends.
    let connected: [(Int, Result<(LineClient, String), any Error>)] = await withTaskGroup(of: (Int, Result<(LineClient, String), any Error>).self) { group in
        for index in 0..<options.clients {
            group.addTask {
                do {
                    let client = try await LineClient.connect(host: options.host, port: options.port)
                    let welcome = try await client.expect(timeout: .seconds(30), "WELCOME") { $0.hasPrefix("WELCOME ") }
                    let words = welcome.split(separator: " ")
                    guard words.count > 1 else { throw LoadFailure("unexpected welcome: \(welcome)") }
                    let name = String(words[1])
                    try await client.send("/join #r\(runID)-\(index % rooms)")
                    _ = try await client.expect(timeout: .seconds(30), "OK join") { $0.hasPrefix("OK join") || $0.hasPrefix("ERR ") }
                    return (index, .success((client, name)))
                } catch {
                    return (index, .failure(error))
                }
            }
        }
        var all: [(Int, Result<(LineClient, String), any Error>)] = []
        for await item in group { all.append(item) }
        return all
    }
    var errors: [String] = []
    var members: [(index: Int, client: LineClient, name: String)] = []
    for (index, result) in connected {
        switch result {
        case .success(let (client, name)):
            members.append((index, client, name))
            tally.join(index % rooms)
        case .failure(let error):
            errors.append("client \(index): \(error)")
        }
    }

    let start = ContinuousClock.now
    let stopSending = start + .seconds(options.seconds)
    let outcomes = await withTaskGroup(of: ThroughputOutcome.self) { group in
        for member in members {
            group.addTask {
                await runThroughputClient(member.client, name: member.name, room: member.index % rooms, tag: "p\(member.index)-",
                                          options: options, tally: tally, stopSending: stopSending)
            }
        }
        var all: [ThroughputOutcome] = []
        for await outcome in group { all.append(outcome) }
        return all
    }
    for member in members { await member.client.close() }

    let sent = outcomes.reduce(0) { $0 + $1.sent }
    let acknowledged = outcomes.reduce(0) { $0 + $1.acknowledged }
    let delivered = outcomes.reduce(0) { $0 + $1.delivered }
    let expected = outcomes.reduce(0) { $0 + $1.expected }
    errors += outcomes.compactMap(\.error)
    return ThroughputReport(
        runID: runID, clients: options.clients, rooms: rooms, window: options.window, seconds: options.seconds,
        sent: sent, acknowledged: acknowledged, delivered: delivered, expected: expected, lost: max(0, expected - delivered),
        messagesPerSecond: Double(acknowledged) / options.seconds, deliveriesPerSecond: Double(delivered) / options.seconds,
        latencyMs: LatencySummary(samples: outcomes.flatMap(\.latencies)), errorCount: errors.count, errors: Array(errors.prefix(5)))
}

/// One client: keeps `window` messages in flight until `stopSending`, counting every room message it
/// receives (a prefix test, no parsing) and timing its own echoes; then waits for the rest of its room.
private func runThroughputClient(_ client: LineClient, name: String, room: Int, tag: String, options: ThroughputOptions,
                                 tally: RoomTally, stopSending: ContinuousClock.Instant) async -> ThroughputOutcome {
    var outcome = ThroughputOutcome()
    let roomMessage = "MSG #"
    // Tags are unique per client ("p12-"), so ": p12-" marks this client's own messages.
    let ownMarker = ": " + tag
    var sentAt: [ContinuousClock.Instant] = []
    var acknowledgedIndex = 0
    var finished = false
    let drainDeadline = stopSending + .seconds(options.drainSeconds)
    do {
        while true {
            let now = ContinuousClock.now
            if !finished && now < stopSending {
                let room = outcome.sent - outcome.acknowledged
                if room < options.window {
                    var lines: [String] = []
                    for _ in 0..<(options.window - room) {
                        lines.append(tag + String(outcome.sent + lines.count))
                    }
                    // Before the write: the echo may be read before this task resumes.
                    let sentTime = ContinuousClock.now
                    for _ in lines { sentAt.append(sentTime) }
                    try await client.send(lines: lines)
                    outcome.sent += lines.count
                }
            } else if !finished && outcome.acknowledged == outcome.sent {
                finished = true
                tally.finished(room, sent: outcome.sent)
            }
            if finished, let expected = tally.expected(room), outcome.delivered >= expected {
                outcome.expected = expected
                return outcome
            }
            if ContinuousClock.now > drainDeadline {
                outcome.expected = tally.expected(room) ?? outcome.delivered
                outcome.error = "client \(name): gave up waiting with \(outcome.sent - outcome.acknowledged) unacknowledged messages"
                return outcome
            }
            let batch: [IncomingLine]
            do {
                batch = try await client.nextBatch(timeout: .milliseconds(200))
            } catch LineClientError.timeout {
                continue
            }
            for line in batch where line.text.hasPrefix(roomMessage) {
                outcome.delivered += 1
                if line.text.contains(ownMarker) {
                    if acknowledgedIndex < sentAt.count {
                        outcome.latencies.append(milliseconds(line.receivedAt - sentAt[acknowledgedIndex]))
                        acknowledgedIndex += 1
                    }
                    outcome.acknowledged += 1
                }
            }
        }
    } catch {
        outcome.error = "client \(name): \(error)"
        if !finished { tally.finished(room, sent: outcome.sent) }
        outcome.expected = tally.expected(room) ?? outcome.delivered
        return outcome
    }
}
