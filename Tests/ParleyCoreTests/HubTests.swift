import Foundation
import NIOCore
import NIOEmbedded
import Synchronization
import Testing
@testable import ParleyCore

/// A wire format that keeps the events themselves, so tests see what each session was handed.
final class EventFormat: WireFormat {
    let renders = Atomic<Int>(0)
    let prefix: String
    init(prefix: String = "") { self.prefix = prefix }
    func render(_ event: HubEvent) -> ByteBuffer? {
        renders.add(1, ordering: .relaxed)
        return ByteBuffer(string: prefix + "\(event)")
    }
}

final class RecordingSink: SessionSink {
    let loop: EmbeddedEventLoop
    let received = Mutex<[String]>([])
    let flushes = Atomic<Int>(0)
    let closed = Atomic<Bool>(false)
    let eventFormat: Mutex<EventFormat>
    let receivesOwnMessages: Bool
    init(loop: EmbeddedEventLoop, format: EventFormat, receivesOwnMessages: Bool = true) {
        self.loop = loop
        self.eventFormat = Mutex(format)
        self.receivesOwnMessages = receivesOwnMessages
    }
    var eventLoop: any EventLoop { loop }
    var format: any WireFormat { eventFormat.withLock { $0 } }
    /// As a door does when its client's capabilities change.
    func switchFormat(to format: EventFormat) {
        eventFormat.withLock { $0 = format }
        FormatEpoch.changed()
    }
    func enqueue(_ bytes: ByteBuffer) { received.withLock { $0.append(String(buffer: bytes)) } }
    func flushQueued() { flushes.add(1, ordering: .relaxed) }
    func disconnect(finalBytes: ByteBuffer?) {
        if let finalBytes { enqueue(finalBytes) }
        closed.store(true, ordering: .relaxed)
    }
    var lines: [String] { received.withLock { $0 } }
}

final class MemoryAccounts: AccountStore {
    let accounts = Mutex<[String: AccountRecord]>([:])
    func createAccount(_ record: AccountRecord) async throws -> Bool {
        accounts.withLock { accounts in
            let key = NameRules.key(record.name)
            guard accounts[key] == nil else { return false }
            accounts[key] = record
            return true
        }
    }
    func account(named name: String) async throws -> AccountRecord? {
        accounts.withLock { $0[NameRules.key(name)] }
    }
}

/// Not a real hash: the hub's logic is under test here, bcrypt in the end-to-end tests.
struct PlainHasher: PasswordHasher {
    func hash(_ password: String) async throws -> String { "plain:" + password }
    func verify(_ password: String, against hash: String) async throws -> Bool { hash == "plain:" + password }
}

@Suite struct HubTests {
    let loop = EmbeddedEventLoop()
    let format = EventFormat()

    func makeHub(requireLogin: Bool = false, quietRoomSize: Int? = 500) -> Hub {
        Hub(config: HubConfig(requireLogin: requireLogin, quietRoomSize: quietRoomSize), accounts: MemoryAccounts(), hasher: PlainHasher(),
            throttle: LoginThrottle(freeFailures: 100))
    }

    func connect(_ hub: Hub) -> (Session, RecordingSink) {
        let sink = RecordingSink(loop: loop, format: format)
        let session = hub.connect(door: "test", address: "127.0.0.1:1", sink: sink)!
        loop.run()
        return (session, sink)
    }

    @Test func newSessionsAreGuestsInTheLobby() {
        let hub = makeHub()
        let (a, sinkA) = connect(hub)
        let (b, _) = connect(hub)
        #expect(a.name.hasPrefix("guest-"))
        #expect(a.name != b.name)
        #expect(hub.members(of: "#lobby")?.map(\.id) == [a.id, b.id])
        #expect(sinkA.lines.contains("\(HubEvent.joined(room: "#lobby", who: b.speaker))"))
        #expect(b.speaker == Speaker(name: b.name, user: b.name, host: "127.0.0.1", account: nil, realName: b.name))
    }

    /// Above `quietRoomSize` members, comings and goings reach only the one coming or going.
    @Test func largeRoomsDoNotAnnounceJoinsPartsAndQuits() throws {
        let hub = makeHub(quietRoomSize: 3)
        let sessions = (0..<4).map { _ in connect(hub) }
        let (a, sinkA) = sessions[0]
        func joins(_ sink: RecordingSink, _ who: Session) -> Int {
            sink.lines.filter { $0 == "\(HubEvent.joined(room: "#lobby", who: who.speaker))" }.count
        }
        // The fourth member makes the lobby quiet: the others are not told, it still sees its own JOIN.
        let (d, sinkD) = sessions[3]
        #expect(joins(sinkA, sessions[2].0) == 1)
        #expect(joins(sinkA, d) == 0)
        #expect(joins(sinkD, d) == 1)
        #expect(hub.members(of: "#lobby")?.count == 4)

        // A part in a quiet room reaches the one parting only; a quit reaches no one.
        try hub.part(d, room: "#lobby")
        loop.run()
        #expect(sinkA.lines.contains { $0.hasPrefix("parted(") } == false)
        #expect(sinkD.lines.last?.hasPrefix("parted(") == true)
        try hub.join(d, room: "#lobby")
        hub.disconnect(d, reason: "bye")
        loop.run()
        #expect(sinkA.lines.contains { $0.hasPrefix("quit(") } == false)

        // Three members: announced again.
        hub.disconnect(sessions[2].0, reason: "bye")
        loop.run()
        #expect(sinkA.lines.filter { $0.hasPrefix("quit(") }.count == 1)
        let (e, _) = connect(hub)
        #expect(joins(sinkA, e) == 1)
        _ = a
    }

    @Test func roomMessagesReachMembersOnlyAndTheSenderLast() throws {
        let hub = makeHub()
        let (a, sinkA) = connect(hub)
        let (b, sinkB) = connect(hub)
        let (c, sinkC) = connect(hub)
        try hub.join(a, room: "#dev")
        try hub.join(b, room: "#dev")
        loop.run()
        let before = (sinkA.lines.count, sinkB.lines.count, sinkC.lines.count)
        let rendersBefore = format.renders.load(ordering: .relaxed)
        try hub.say(a, room: "#dev", text: "hello")
        loop.run()
        #expect(sinkA.lines.count == before.0 + 1)
        #expect(sinkB.lines.count == before.1 + 1)
        #expect(sinkC.lines.count == before.2)
        #expect(sinkB.lines.last?.contains("hello") == true)
        // Rendered once for both recipients.
        #expect(format.renders.load(ordering: .relaxed) - rendersBefore == 1)
        #expect(hub.counters.messagesRelayed.load(ordering: .relaxed) == 1)
        _ = c
    }

    /// Room messages go out through a plan made from the membership; it must follow joins, parts and a
    /// member's change of format, and a speaker from outside the room (no +n) still gets its echo.
    @Test func roomMessagesFollowJoinsPartsAndFormatChanges() throws {
        let hub = makeHub()
        let (a, sinkA) = connect(hub)
        let (b, sinkB) = connect(hub)
        let (c, sinkC) = connect(hub)
        try hub.join(a, room: "#dev")
        try hub.join(b, room: "#dev")
        try hub.say(a, room: "#dev", text: "one")
        try hub.join(c, room: "#dev")
        try hub.say(a, room: "#dev", text: "two")
        loop.run()
        // (C's join replays "one" as history, not as a message.)
        #expect(sinkC.lines.filter { $0.hasPrefix("message(") && $0.contains("text: \"one\"") }.isEmpty)
        #expect(sinkC.lines.last?.contains("text: \"two\"") == true)

        let tagged = EventFormat(prefix: "v2 ")
        sinkB.switchFormat(to: tagged)
        try hub.say(a, room: "#dev", text: "three")
        loop.run()
        #expect(sinkB.lines.last?.hasPrefix("v2 ") == true && sinkB.lines.last?.contains("text: \"three\"") == true)
        #expect(sinkA.lines.last?.hasPrefix("v2 ") == false && sinkA.lines.last?.contains("text: \"three\"") == true)

        try hub.part(b, room: "#dev")
        let deliveriesBefore = hub.counters.deliveries.load(ordering: .relaxed)
        try hub.say(c, room: "#dev", text: "four")
        loop.run()
        #expect(sinkB.lines.last?.contains("text: \"four\"") == false)
        #expect(sinkA.lines.last?.contains("text: \"four\"") == true)
        #expect(sinkC.lines.last?.contains("text: \"four\"") == true)
        #expect(hub.counters.deliveries.load(ordering: .relaxed) - deliveriesBefore == 2)

        // B is outside the room now; with -n it may still speak there, and gets its echo.
        _ = try hub.changeModes(a, room: "#dev", [ModeChange(false, .noExternal)])
        try hub.say(b, room: "#dev", text: "five")
        loop.run()
        #expect(sinkB.lines.last?.contains("text: \"five\"") == true)
        #expect(sinkA.lines.last?.contains("text: \"five\"") == true)
    }

    @Test func aSessionMayAskNotToGetItsOwnMessagesBack() throws {
        let hub = makeHub()
        let sink = RecordingSink(loop: loop, format: format, receivesOwnMessages: false)
        let quiet = try hub.connect(door: "irc", address: "10.0.0.1:9", sink: sink, name: "quiet", user: "q", joinLobby: true)
        let (other, otherSink) = connect(hub)
        loop.run()
        let before = sink.lines.count
        try hub.say(quiet, room: "#lobby", text: "hello")
        try hub.direct(quiet, to: other.name, text: "psst")
        loop.run()
        #expect(sink.lines.count == before)
        #expect(otherSink.lines.suffix(2).allSatisfy { $0.contains("name: \"quiet\", user: \"q\", host: \"10.0.0.1\"") })
    }

    @Test func connectingWithANameNeedsItFreeUnlessSharedByTheSameAccount() throws {
        let hub = makeHub()
        _ = try hub.connect(door: "irc", address: "a:1", sink: RecordingSink(loop: loop, format: format), name: "zed", user: nil, joinLobby: false)
        #expect(throws: HubError.nameTaken("ZED")) {
            _ = try hub.connect(door: "irc", address: "a:2", sink: RecordingSink(loop: loop, format: format), name: "ZED", user: nil, joinLobby: false)
        }
        _ = try hub.connect(door: "irc", address: "a:3", sink: RecordingSink(loop: loop, format: format), name: "amy", user: nil, account: "amy", joinLobby: false)
        let again = try hub.connect(door: "irc", address: "a:4", sink: RecordingSink(loop: loop, format: format), name: "amy", user: nil, account: "amy", joinLobby: false)
        #expect(hub.sessions(named: "amy").count == 2)
        #expect(again.roomKeys.isEmpty)
        _ = hub.shutdown()
        #expect(throws: HubError.shuttingDown) {
            _ = try hub.connect(door: "irc", address: "a:5", sink: RecordingSink(loop: loop, format: format), name: nil, user: nil, joinLobby: true)
        }
    }

    @Test func aSessionThatDisconnectedCannotJoinAndLeavesNoRoomBehind() throws {
        let hub = makeHub()
        let (a, _) = connect(hub)
        hub.disconnect(a)
        let result = try hub.join(a, room: "#ghost")
        #expect(result.alreadyMember)
        #expect(hub.members(of: "#ghost") == nil)
        #expect(a.roomKeys.isEmpty)
    }

    @Test func kickingTheLastMemberRemovesTheRoomAndReasonsAreCleaned() throws {
        let hub = makeHub()
        let (a, sinkA) = connect(hub)
        try hub.join(a, room: "#solo")
        try hub.kick(a, room: "#solo", target: a.name, reason: "bye\r:evil!e@h PRIVMSG #x :spoof")
        loop.run()
        #expect(hub.members(of: "#solo") == nil)
        #expect(a.roomKeys == ["#lobby"])
        #expect(sinkA.lines.last?.contains("reason: Optional(\"bye:evil!e@h PRIVMSG #x :spoof\")") == true)
    }

    @Test func theLobbyJoinOfANewSessionIgnoresTheLobbysModes() throws {
        let hub = makeHub()
        let (op, _) = connect(hub)
        try hub.changeModes(op, room: "#lobby", [ModeChange(true, .inviteOnly), ModeChange(true, .key, "k"), ModeChange(true, .limit, "1")])
        let (late, _) = connect(hub)
        #expect(late.roomKeys == ["#lobby"])
        #expect(throws: HubError.inviteOnly("#lobby")) { try hub.part(late, room: "#lobby"); try hub.join(late, room: "#lobby") }
    }

    @Test func sequenceNumbersGiveATotalOrder() throws {
        let hub = makeHub()
        let (a, sinkA) = connect(hub)
        let (b, _) = connect(hub)
        for i in 0..<5 {
            try hub.say(i % 2 == 0 ? a : b, room: "#lobby", text: "m\(i)")
        }
        loop.run()
        let seen = sinkA.lines.filter { $0.contains("text: \"m") }
        #expect(seen.count == 5)
        for (i, line) in seen.enumerated() { #expect(line.contains("sequence: \(i + 1)")) }
    }

    @Test func chatErrors() throws {
        let hub = makeHub()
        let (a, _) = connect(hub)
        #expect(throws: HubError.notInRoom("#lobby")) {
            try hub.part(a, room: "#lobby"); try hub.say(a, room: "#lobby", text: "x")
        }
        #expect(throws: HubError.noSuchRoom("#nowhere")) { try hub.say(a, room: "#nowhere", text: "x") }
        #expect(throws: HubError.noSuchUser("zed")) { try hub.direct(a, to: "zed", text: "x") }
        try hub.join(a, room: "#lobby")
        #expect(throws: HubError.emptyMessage) { try hub.say(a, room: "#lobby", text: " \u{7} ") }
    }

    @Test func emptyRoomsDisappearButTheLobbyStays() throws {
        let hub = makeHub()
        let (a, _) = connect(hub)
        try hub.join(a, room: "#tmp")
        #expect(hub.roomList().map(\.name) == ["#lobby", "#tmp"])
        try hub.part(a, room: "#TMP")
        try hub.part(a, room: "#lobby")
        #expect(hub.roomList().map(\.name) == ["#lobby"])
    }

    @Test func registerLoginLogout() async throws {
        let hub = makeHub()
        let (a, _) = connect(hub)
        let (b, _) = connect(hub)
        try await hub.register(a, name: "Alice", password: "password1")
        #expect(a.name == "Alice" && a.account == "Alice")
        await #expect(throws: HubError.nameTaken("alice")) { try await hub.register(b, name: "alice", password: "password1") }
        await #expect(throws: HubError.loginFailed) { try await hub.login(b, name: "alice", password: "wrong-password") }
        await #expect(throws: HubError.loginFailed) { try await hub.login(b, name: "nobody", password: "password1") }
        try await hub.login(b, name: "ALICE", password: "password1")
        #expect(b.name == "Alice")
        #expect(hub.sessions(named: "alice").count == 2)
        await #expect(throws: HubError.alreadyLoggedIn("Alice")) { try await hub.login(b, name: "alice", password: "password1") }
        try hub.logout(b)
        #expect(b.name.hasPrefix("guest-") && b.account == nil)
        #expect(throws: HubError.notLoggedIn) { try hub.logout(b) }
    }

    @Test func guestsCannotTakeAccountNames() async throws {
        let hub = makeHub()
        let (a, _) = connect(hub)
        let (b, _) = connect(hub)
        try await hub.register(a, name: "alice", password: "password1")
        try hub.logout(a)
        await #expect(throws: HubError.nameTaken("Alice")) { try await hub.changeGuestName(b, to: "Alice") }
        try await hub.changeGuestName(b, to: "zed")
        #expect(b.name == "zed")
        await #expect(throws: HubError.nameTaken("ZED")) { try await hub.changeGuestName(a, to: "ZED") }
        await #expect(throws: HubError.nameTaken("zed")) { try await hub.register(a, name: "zed", password: "password1") }
    }

    @Test func requireLoginRefusesGuestChat() async throws {
        let hub = makeHub(requireLogin: true)
        let (a, _) = connect(hub)
        #expect(throws: HubError.loginRequired) { try hub.say(a, room: "#lobby", text: "hi") }
        try await hub.register(a, name: "alice", password: "password1")
        try hub.say(a, room: "#lobby", text: "hi")
    }

    @Test func disconnectLeavesRoomsAndKickDisconnects() throws {
        let hub = makeHub()
        let (a, sinkA) = connect(hub)
        let (b, _) = connect(hub)
        hub.disconnect(b)
        hub.disconnect(b)
        loop.run()
        #expect(hub.members(of: "#lobby")?.map(\.id) == [a.id])
        #expect(sinkA.lines.filter { $0.contains("quit") }.count == 1)
        #expect(hub.kick(name: a.name, reason: "bye") == 1)
        loop.run()
        let closed = sinkA.closed.load(ordering: .relaxed)
        #expect(closed)
        #expect(hub.counters.activeSessions.load(ordering: .relaxed) == 1)
    }
}
