import Foundation
import NIOCore
import NIOEmbedded
import ParleyCore
import Synchronization
import Testing

/// A log whose transactions the test commits one message at a time, in order. Like the real one,
/// it hands a committed message's callback to its publisher, whose loop publishes it later.
final class HeldLog: MessageLog {
    private let jobs = Mutex<[(publisher: PublishQueue?, work: any CommittedWork)]>([])
    struct NotKept: Error {}

    func append(_ message: LoggedMessage, publisher: PublishQueue?, committed: @escaping @Sendable (Bool) -> Void) {
        let room = if case .room(let message) = message { message.room } else { "" }
        jobs.withLock { $0.append((publisher, Work(room: room, committed))) }
    }
    func append(_ entry: any RoomLogEntry) {
        jobs.withLock { $0.append((entry.publisher, entry)) }
    }
    func markPending(serial: UInt64, account: String) {}
    func claimPending(account: String) async throws -> [LoggedMessage] { [] }
    func messages(target: String, in range: HistoryRange) async throws -> [LoggedMessage] { throw NotKept() }
    func message(serial: UInt64, in target: String) async throws -> LoggedMessage? { nil }
    func activeTargets(rooms: [String], conversationsOf participant: String?, from: Date, to: Date, limit: Int) async throws -> [(target: String, latest: Date)] { [] }

    /// Commits (or fails) the next message.
    func next(committed: Bool = true) {
        guard let job = jobs.withLock({ $0.isEmpty ? nil : $0.removeFirst() }) else { return }
        if let publisher = job.publisher {
            publisher.submit([job.work], committed: committed)
        } else {
            job.work.run(committed: committed)
        }
    }
    var queued: Int { jobs.withLock { $0.count } }
}

/// A closure as a publisher's work.
final class Work: CommittedWork {
    let room: String
    let body: @Sendable (Bool) -> Void
    init(room: String = "#test", _ body: @escaping @Sendable (Bool) -> Void) {
        self.room = room
        self.body = body
    }
    func run(committed: Bool) { body(committed) }
}

final class Flag: Sendable {
    private let value = Atomic<Bool>(false)
    func set() { value.store(true, ordering: .relaxed) }
    var isSet: Bool { value.load(ordering: .relaxed) }
}

/// A hub whose messages a `HeldLog` stores (or, `history: false`, none), published on an embedded
/// loop the test runs.
struct HeldHub {
    let loop = EmbeddedEventLoop()
    let log = HeldLog()
    /// The loop's turn, where publishing passes after the first wait (run after `turn.attach {}`).
    let turn: NextTurn
    let hub: Hub

    init(history: Bool = true) {
        turn = NextTurn(loop: loop)
        hub = Hub(config: HubConfig(), accounts: MemoryAccounts(), hasher: PlainHasher(), log: history ? log : nil,
                  publishTurns: [turn])
    }

    /// A session outside the lobby, and what it receives.
    func connect(_ name: String) throws -> (Session, RecordingSink) {
        let sink = RecordingSink(loop: loop, format: EventFormat())
        let session = try hub.connect(door: "test", address: "127.0.0.1:1", sink: sink, name: name, user: nil, joinLobby: false)
        return (session, sink)
    }
}

@Suite struct LocalDeliveryTests {
    /// A publishing pass hands a message to its own loop's members without a task only while none of
    /// the hub's tasks waits there: a JOIN queued before the pass reaches the members first.
    @Test func aMessageComesAfterAJoinStillQueuedOnTheLoop() throws {
        let held = HeldHub()
        let (hub, log, loop, connect) = (held.hub, held.log, held.loop, held.connect)
        let (speaker, _) = try connect("speaker")
        let (listener, listenerSink) = try connect("listener")
        try hub.join(speaker, room: "#dev")
        try hub.join(listener, room: "#dev")
        loop.run()
        try hub.say(speaker, room: "#dev", text: "hello")
        log.next()  // stored: the publishing pass is queued on the loop
        // Joins after the pass was queued and before it runs: its JOIN lines are queued behind it.
        let (newcomer, newcomerSink) = try connect("newcomer")
        try hub.join(newcomer, room: "#dev")
        loop.run()
        func order(_ sink: RecordingSink) -> [String] {
            sink.lines.compactMap { line in
                if line.contains("text: \"hello\"") { return "hello" }
                if line.contains("join") && line.contains("newcomer") { return "join" }
                return nil
            }
        }
        // The room as it is when the message is published: the newcomer gets it, after its JOIN.
        #expect(order(newcomerSink) == ["join", "hello"])
        #expect(order(listenerSink) == ["join", "hello"])
    }

    /// With nothing of the hub's queued, the pass hands the message over itself, in room order.
    @Test func messagesPublishedOnTheirLoopKeepTheirOrder() throws {
        let held = HeldHub()
        let (hub, log, loop, connect) = (held.hub, held.log, held.loop, held.connect)
        let (speaker, speakerSink) = try connect("speaker")
        let (listener, listenerSink) = try connect("listener")
        try hub.join(speaker, room: "#dev")
        try hub.join(listener, room: "#dev")
        loop.run()
        for index in 1...5 { try hub.say(speaker, room: "#dev", text: "m\(index)") }
        for _ in 1...5 { log.next() }
        loop.run()
        let expected = (1...5).map { "m\($0)" }
        func texts(_ sink: RecordingSink) -> [String] {
            sink.lines.compactMap { line in expected.first { line.contains("text: \"\($0)\"") } }
        }
        #expect(texts(listenerSink) == expected)
        #expect(texts(speakerSink) == expected)
    }
}

@Suite struct PingBarrierTests {
    /// A PING waits for the messages accepted before it in its client's rooms, and for nothing else.
    @Test func aPingWaitsForItsRoomsMessagesOnly() throws {
        let held = HeldHub()
        let (hub, log, loop, connect) = (held.hub, held.log, held.loop, held.connect)
        let (speaker, _) = try connect("speaker")
        let (listener, listenerSink) = try connect("listener")
        let (bystander, _) = try connect("bystander")
        try hub.join(speaker, room: "#dev")
        try hub.join(listener, room: "#dev")
        try hub.join(bystander, room: "#elsewhere")
        try hub.say(speaker, room: "#dev", text: "one")
        try hub.say(speaker, room: "#dev", text: "two")

        let listenerAnswered = Flag()
        let bystanderAnswered = Flag()
        hub.afterPublished(to: listener) { listenerAnswered.set() }
        hub.afterPublished(to: bystander) { bystanderAnswered.set() }
        // Said after the PINGs: not waited for.
        try hub.say(speaker, room: "#dev", text: "three")

        // Nothing in the bystander's room is being stored: answered at once.
        #expect(bystanderAnswered.isSet)
        log.next()  // "one" stored, handed to its room's publishing loop
        log.next()  // "two"
        #expect(!listenerAnswered.isSet)
        loop.run()  // the publishing pass
        #expect(listenerAnswered.isSet)
        loop.run()
        #expect(listenerSink.lines.filter { $0.contains("text: \"one\"") || $0.contains("text: \"two\"") }.count == 2)
        #expect(log.queued == 1)  // "three" is still being stored

        // A direct message being stored holds its recipient's PING.
        try hub.direct(speaker, to: "bystander", text: "psst")
        let bystanderAgain = Flag()
        hub.afterPublished(to: bystander) { bystanderAgain.set() }
        log.next()  // "three": not the bystander's
        #expect(!bystanderAgain.isSet)
        log.next()  // "psst", handed to the bystander's loop
        #expect(bystanderAgain.isSet)
    }

    /// Without a history, room messages still go out in the room's publishing passes (64 a turn,
    /// between the loop's reads), and a PING waits for those accepted before it.
    @Test func withoutAHistoryMessagesArePublishedInPassesAndAPingWaitsForThem() throws {
        let held = HeldHub(history: false)
        let (hub, loop, turn, connect) = (held.hub, held.loop, held.turn, held.connect)
        turn.attach {}
        let (speaker, _) = try connect("speaker")
        let (listener, listenerSink) = try connect("listener")
        try hub.join(speaker, room: "#dev")
        try hub.join(listener, room: "#dev")
        loop.run()
        let before = listenerSink.lines.count
        for index in 1...70 { try hub.say(speaker, room: "#dev", text: "m\(index)") }
        let answered = Flag()
        hub.afterPublished(to: listener) { answered.set() }
        // Queued for the publishing loop, not handed out in the call that accepted them.
        #expect(listenerSink.lines.count == before)
        #expect(!answered.isSet)
        loop.run()
        // The first pass: 64, and the rest on the loop's next turn.
        #expect(listenerSink.lines.count == before + 64)
        #expect(!answered.isSet)
        turn.run()
        loop.run()
        #expect(answered.isSet)
        let texts = listenerSink.lines.dropFirst(before).compactMap { line in
            line.firstRange(of: "text: \"").map { String(line[$0.upperBound...].prefix { $0 != "\"" }) }
        }
        #expect(texts == (1...70).map { "m\($0)" })
    }

    /// A message that could not be stored settles too; a PING is not held up by it forever, and its
    /// answer (made on the loop, as a door's PONG is) comes after the sender is told of the failure.
    @Test func aRefusedMessageDoesNotHoldAPingAndIsReportedBeforeItsAnswer() throws {
        let held = HeldHub()
        let (hub, log, loop) = (held.hub, held.log, held.loop)
        let sink = RecordingSink(loop: loop, format: EventFormat())
        let session = hub.connect(door: "test", address: "127.0.0.1:1", sink: sink)!
        try hub.say(session, room: "#lobby", text: "lost")
        let seenWhenAnswered = Mutex<[String]?>(nil)
        hub.afterPublished(to: session) {
            loop.execute { seenWhenAnswered.withLock { $0 = sink.lines } }
        }
        try hub.say(session, room: "#lobby", text: "after the ping")
        log.next(committed: false)
        #expect(seenWhenAnswered.withLock { $0 } == nil)
        loop.run()
        let seen = try #require(seenWhenAnswered.withLock { $0 })
        #expect(seen.contains { $0.hasPrefix("refused(") && $0.contains("store your message") })
        #expect(log.queued == 1)
    }
}

/// A stored message is published to its room as the room is when the commit comes, even if the room
/// closed and came back meanwhile.
@Suite struct PublishAfterCommitTests {
    @Test func aMessageCommittedAfterItsRoomClosedReachesTheRoomAsItIsNow() throws {
        let held = HeldHub()
        let (hub, log, loop, connect) = (held.hub, held.log, held.loop, held.connect)
        let (speaker, _) = try connect("speaker")
        let (late, lateSink) = try connect("late")
        try hub.join(speaker, room: "#dev")
        try hub.say(speaker, room: "#dev", text: "kept")
        _ = try hub.part(speaker, room: "#dev")  // the room empties and closes while "kept" is being stored
        _ = try hub.join(late, room: "#dev")     // and is made again
        log.next()
        loop.run()
        #expect(lateSink.lines.contains { $0.contains("text: \"kept\"") })

        // Committed while nobody is in the room: it joins what a later joiner is replayed.
        try hub.say(late, room: "#dev", text: "replayed")
        _ = try hub.part(late, room: "#dev")
        log.next()
        loop.run()
        let (third, _) = try connect("third")
        #expect(try hub.join(third, room: "#dev").replayed.map(\.text) == ["kept", "replayed"])
    }
}
