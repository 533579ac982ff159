import Foundation
import GRDB
import ParleyCore
import Testing
@testable import ParleyStore

/// The SQLite history on its own: the writer's order and callbacks, reading ranges, offline messages,
/// retention, restart and the database checks.
@Suite struct HistoryStoreTests {
    let directory = FileManager.default.temporaryDirectory.appendingPathComponent("parley-history-\(UUID())").path
    static let alice = Speaker(name: "alice", user: "alice", host: "127.0.0.1", account: "alice")
    static let start: Int64 = 1_800_000_000_000

    static func roomMessage(_ serial: UInt64, room: String = "#dev", text: String? = nil, atMs: Int64? = nil) -> RoomMessage {
        RoomMessage(room: room, sender: alice, text: text ?? "m\(serial)", kind: .say, sequence: serial,
                    time: Milliseconds.date(atMs ?? start + Int64(serial) * 10), serial: serial)
    }

    /// Appends and waits until every message is reported committed; returns the reports in order.
    func append(_ messages: [LoggedMessage], to log: SQLiteMessageLog) async -> [(UInt64, Bool)] {
        let reports = AsyncStream<(UInt64, Bool)>.makeStream()
        for message in messages {
            log.append(message, publisher: nil) { committed in reports.continuation.yield((message.serial, committed)) }
        }
        var seen: [(UInt64, Bool)] = []
        for await report in reports.stream {
            seen.append(report)
            if seen.count == messages.count { break }
        }
        return seen
    }

    @Test func messagesAreCommittedInOrderAndReadBackByRange() async throws {
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let store = try SQLiteStore(directory: directory)
        let log = SQLiteMessageLog(store: store)
        let reports = await append((1...30).map { .room(Self.roomMessage($0)) }, to: log)
        #expect(reports.map(\.0) == Array(1...30))
        #expect(reports.allSatisfy { $0.1 })
        #expect(log.messagesStored.load(ordering: .relaxed) == 30)

        let latest = try await log.messages(target: "#dev", in: HistoryRange(limit: 5, newestFirst: true))
        #expect(latest.map(\.serial) == [26, 27, 28, 29, 30])
        let before = try await log.messages(target: "#dev", in: HistoryRange(before: latest[0].cursor, limit: 3, newestFirst: true))
        #expect(before.map(\.serial) == [23, 24, 25])
        let after = try await log.messages(target: "#dev", in: HistoryRange(after: before[0].cursor, limit: 2, newestFirst: false))
        #expect(after.map(\.serial) == [24, 25])
        // Time bounds exclude the whole millisecond of the reference.
        let byTime = try await log.messages(target: "#dev", in: HistoryRange(after: .after(Milliseconds.date(Self.start + 100)),
                                                                            before: .before(Milliseconds.date(Self.start + 150)), limit: 10, newestFirst: false))
        #expect(byTime.map(\.serial) == [11, 12, 13, 14])
        #expect(try await log.messages(target: "#other", in: HistoryRange(limit: 5, newestFirst: true)).isEmpty)

        #expect(try await log.message(serial: 7, in: "#other") == nil)
        guard case .room(let seven)? = try await log.message(serial: 7, in: "#dev") else { Issue.record("no room message 7"); return }
        #expect(seven.text == "m7" && seven.sender == Self.alice && seven.time == Self.roomMessage(7).time)
        await log.close()
        try store.close()
    }

    /// Holds the writer until the returned gate is signalled, so that what is appended meanwhile
    /// goes into one batch. (The writer runs a barrier's body on its own thread.)
    func holdWriter(_ log: SQLiteMessageLog) async -> DispatchSemaphore {
        let gate = DispatchSemaphore(value: 0)
        let held = DispatchSemaphore(value: 0)
        log.barrier { held.signal(); gate.wait() }
        await withCheckedContinuation { (done: CheckedContinuation<Void, Never>) in
            DispatchQueue.global().async { held.wait(); done.resume() }
        }
        return gate
    }

    /// Appends while the writer is held, so that every message goes into one transaction, and waits
    /// until they are reported committed.
    func appendInOneTransaction(_ messages: [LoggedMessage], to log: SQLiteMessageLog) async {
        let gate = await holdWriter(log)
        let reports = AsyncStream<Bool>.makeStream()
        for message in messages { log.append(message, publisher: nil) { reports.continuation.yield($0) } }
        gate.signal()
        var count = 0
        for await _ in reports.stream {
            count += 1
            if count == messages.count { break }
        }
    }

    /// Every text column of one batch reads back byte for byte: 32 long lines (more than one chunk of
    /// the writer's text arena), other scripts, tags, and a direct message's conversation and
    /// recipient, in a single multi-row insert.
    @Test func theTextsOfOneBatchReadBackExactly() async throws {
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let store = try SQLiteStore(directory: directory)
        let log = SQLiteMessageLog(store: store)
        let gate = await holdWriter(log)
        let bob = Speaker(name: "Bøb", user: "b", host: "::1", account: nil)
        var sent: [LoggedMessage] = (UInt64(1)...32).map { serial in
            let long = String(repeating: "\(serial % 10)é", count: 1500 + Int(serial))
            return .room(RoomMessage(room: "#Dev", sender: serial % 2 == 0 ? bob : Self.alice, text: long, kind: .action, sequence: 0,
                                     time: Milliseconds.date(Self.start + Int64(serial)), serial: serial,
                                     tags: serial == 5 ? [MessageTag("+draft/react", "👍;x"), MessageTag("+typing", nil)] : []))
        }
        sent.append(.direct(DirectMessage(from: bob, to: "alice", text: "日本語 ok", kind: .notice, echo: false,
                                          time: Milliseconds.date(Self.start + 40), serial: 33, tags: []),
                            conversation: "@alice bøb", pendingFor: "alice"))
        let reports = AsyncStream<Bool>.makeStream()
        for message in sent { log.append(message, publisher: nil) { reports.continuation.yield($0) } }
        gate.signal()
        var committed = 0
        for await report in reports.stream {
            #expect(report)
            committed += 1
            if committed == sent.count { break }
        }
        #expect(log.transactions.load(ordering: .relaxed) == 1)
        let room = try await log.messages(target: "#dev", in: HistoryRange(limit: 100, newestFirst: false))
        // A room message's sequence is the room's live order, not history: it reads back as 0.
        #expect(room == Array(sent.prefix(32)))
        let conversation = try await log.messages(target: "@alice bøb", in: HistoryRange(limit: 10, newestFirst: false))
        #expect(conversation == [sent[32]])
        await log.close()
        try store.close()
    }

    /// One transaction holding 42 room messages in two rooms, a direct message, a pending mark and a
    /// claim, then more room messages: the rooms' messages go in as a chunk per room, the direct one as
    /// a row that the mark and the claim find stored.
    @Test func aLargeBatchIsStoredInOrderAroundMarksAndClaims() async throws {
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let store = try SQLiteStore(directory: directory)
        let log = SQLiteMessageLog(store: store)
        let gate = await holdWriter(log)
        let reports = AsyncStream<(UInt64, Bool)>.makeStream()
        func append(_ message: LoggedMessage) {
            log.append(message, publisher: nil) { committed in reports.continuation.yield((message.serial, committed)) }
        }
        for serial in UInt64(1)...42 { append(.room(Self.roomMessage(serial, room: serial % 3 == 0 ? "#three" : "#dev"))) }
        append(.direct(DirectMessage(from: Self.alice, to: "bob", text: "d43", kind: .say, echo: false,
                                     time: Milliseconds.date(Self.start + 430), serial: 43), conversation: "@alice bob", pendingFor: nil))
        log.markPending(serial: 43, account: "bob")
        async let claimed = log.claimPending(account: "bob")
        for serial in UInt64(44)...45 { append(.room(Self.roomMessage(serial))) }
        gate.signal()
        var seen: [(UInt64, Bool)] = []
        for await report in reports.stream {
            seen.append(report)
            if seen.count == 45 { break }
        }
        #expect(seen.map(\.0) == Array(1...45))
        #expect(seen.allSatisfy { $0.1 })
        #expect(try await claimed.map(\.serial) == [43])
        let dev = try await log.messages(target: "#dev", in: HistoryRange(limit: 100, newestFirst: false))
        #expect(dev.map(\.serial) == (1...42).filter { $0 % 3 != 0 }.map(UInt64.init) + [44, 45])
        let three = try await log.messages(target: "#three", in: HistoryRange(limit: 100, newestFirst: false))
        #expect(three.map(\.serial) == stride(from: 3, through: 42, by: 3).map(UInt64.init))
        guard case .room(let last)? = dev.last else { Issue.record("no last message"); return }
        #expect(last.text == "m45" && last.sender == Self.alice && last.time == Self.roomMessage(45).time)
        await log.close()
        try store.close()
    }

    @Test func offlineDirectMessagesAreClaimedOnceOldestFirst() async throws {
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let store = try SQLiteStore(directory: directory)
        let log = SQLiteMessageLog(store: store)
        func direct(_ serial: UInt64, pending: String?) -> LoggedMessage {
            .direct(DirectMessage(from: Self.alice, to: "bob", text: "d\(serial)", kind: .say, echo: false,
                                  time: Milliseconds.date(Self.start + Int64(serial)), serial: serial,
                                  tags: [MessageTag("+draft/react", "a;b\\c"), MessageTag("+flag", nil)]),
                    conversation: "@alice bob", pendingFor: pending)
        }
        _ = await append([direct(1, pending: "bob"), direct(2, pending: nil), direct(3, pending: "bob")], to: log)
        log.markPending(serial: 2, account: "bob")
        let claimed = try await log.claimPending(account: "bob")
        #expect(claimed.map(\.serial) == [1, 2, 3])
        #expect(claimed.first == direct(1, pending: "bob"))
        #expect(try await log.claimPending(account: "bob").isEmpty)
        // Still in the conversation's history.
        #expect(try await log.messages(target: "@alice bob", in: HistoryRange(limit: 10, newestFirst: true)).count == 3)
        await log.close()
        try store.close()
    }

    @Test func activeTargetsCountOnlyEachTargetsLatestMessage() async throws {
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let store = try SQLiteStore(directory: directory)
        let log = SQLiteMessageLog(store: store)
        let dm = LoggedMessage.direct(DirectMessage(from: Self.alice, to: "bob", text: "hi", kind: .say, echo: false,
                                                    time: Milliseconds.date(Self.start + 25), serial: 4), conversation: "@alice bob", pendingFor: nil)
        let other = LoggedMessage.direct(DirectMessage(from: Self.alice, to: "zed", text: "hi", kind: .say, echo: false,
                                                       time: Milliseconds.date(Self.start + 26), serial: 5), conversation: "@carol zed", pendingFor: nil)
        _ = await append([.room(Self.roomMessage(1)), .room(Self.roomMessage(2, room: "#b")), .room(Self.roomMessage(3)), dm, other], to: log)
        let all = try await log.activeTargets(rooms: ["#dev", "#b"], conversationsOf: "alice", from: .distantPast, to: .distantFuture, limit: 10)
        #expect(all.map(\.target) == ["#b", "@alice bob", "#dev"])
        // #dev's latest (m3, at +30) is past the window's end: left out although m1 is inside it.
        let early = try await log.activeTargets(rooms: ["#dev", "#b"], conversationsOf: "alice", from: .distantPast,
                                                to: Milliseconds.date(Self.start + 28), limit: 10)
        #expect(early.map(\.target) == ["#b", "@alice bob"])
        #expect(try await log.activeTargets(rooms: ["#dev"], conversationsOf: nil, from: .distantPast, to: .distantFuture, limit: 1).map(\.target) == ["#dev"])
        await log.close()
        try store.close()
    }

    @Test func pruningKeepsTheNewestPerRoomAndDropsOldMessages() async throws {
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let store = try SQLiteStore(directory: directory)
        let log = SQLiteMessageLog(store: store, retention: .init(maxPerRoom: 5, maxAge: .seconds(3600), interval: .seconds(3600)))
        let now = Self.start + 10_000_000
        var messages: [LoggedMessage] = (1...12).map { .room(Self.roomMessage($0, atMs: now - 60_000 + Int64($0))) }
        messages.append(.room(Self.roomMessage(13, room: "#old", atMs: now - 7_200_000)))
        messages.append(.room(Self.roomMessage(14, room: "#old", atMs: now - 1_000)))
        // One transaction: #dev's twelve share a chunk that the count cuts through, and #old's two a
        // chunk that the age cuts through.
        await appendInOneTransaction(messages, to: log)
        #expect(log.transactions.load(ordering: .relaxed) == 1)
        let pruned = try log.prune(rooms: ["#dev", "#old"], now: Milliseconds.date(now))
        #expect(pruned == 8)
        #expect(try await log.messages(target: "#dev", in: HistoryRange(limit: 20, newestFirst: true)).map(\.serial) == [8, 9, 10, 11, 12])
        #expect(try await log.messages(target: "#old", in: HistoryRange(limit: 20, newestFirst: true)).map(\.serial) == [14])
        await log.close()
        try store.close()
    }

    /// Rooms written over several transactions, a chunk per room each, read back by every kind of
    /// range exactly as the same messages filtered from one list.
    @Test func roomRangesReadAcrossChunksAsFromOneList() async throws {
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let store = try SQLiteStore(directory: directory)
        let log = SQLiteMessageLog(store: store)
        let rooms = ["#a", "#b", "#c"]
        var sent: [RoomMessage] = []
        var serial: UInt64 = 0
        // Four transactions of 1, 7, 20 and 3 messages; three messages share each millisecond.
        for size in [1, 7, 20, 3] {
            let batch: [LoggedMessage] = (0..<size).map { index in
                serial += 1
                let message = Self.roomMessage(serial, room: rooms[(index * 7 + Int(serial)) % 3 == 0 ? 0 : Int(serial) % 3], atMs: Self.start + Int64(serial / 3))
                sent.append(message)
                return .room(message)
            }
            await appendInOneTransaction(batch, to: log)
        }
        #expect(log.transactions.load(ordering: .relaxed) == 4)
        // Every other message's own cursor (inside chunks and at their ends), and time references.
        let cursors = [nil] + sent.enumerated().filter { $0.offset % 2 == 0 }.map { Optional(HistoryCursor(timeMs: Milliseconds.from($0.element.time), id: $0.element.serial)) }
            + [.before(Milliseconds.date(Self.start + 4)), .after(Milliseconds.date(Self.start + 4))]
        var checked = 0
        for room in rooms {
            let all = sent.filter { $0.room == room }
            for after in cursors {
                for before in cursors where before == nil || after == nil || after! < before! {
                    for limit in [1, 4, 100] {
                        for newestFirst in [false, true] {
                            let within = all.filter { message in
                                let cursor = HistoryCursor(timeMs: Milliseconds.from(message.time), id: message.serial)
                                return (after.map { cursor > $0 } ?? true) && (before.map { cursor < $0 } ?? true)
                            }
                            let expected = newestFirst ? Array(within.suffix(limit)) : Array(within.prefix(limit))
                            let read = try await log.messages(target: room, in: HistoryRange(after: after, before: before, limit: limit, newestFirst: newestFirst))
                            #expect(read.map(\.serial) == expected.map(\.serial), "\(room) after \(String(describing: after)) before \(String(describing: before)) limit \(limit) newestFirst \(newestFirst)")
                            checked += 1
                        }
                    }
                }
            }
        }
        #expect(checked > 2000)
        for message in sent {
            let found = try await log.message(serial: message.serial, in: message.room)
            guard case .room(let stored)? = found else { Issue.record("no message \(message.serial) in \(message.room)"); continue }
            #expect(stored.serial == message.serial && stored.text == message.text && stored.time == message.time)
            #expect(try await log.message(serial: message.serial, in: message.room == "#a" ? "#b" : "#a") == nil)
        }
        await log.close()
        try store.close()
    }

    /// A transaction holding 600 of one room's messages stores them in chunks of at most 256, so a
    /// read near one message never decodes an unbounded body; all of them read back in order.
    @Test func aLongTransactionOfOneRoomIsSplitIntoBoundedChunks() async throws {
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let store = try SQLiteStore(directory: directory)
        let log = SQLiteMessageLog(store: store)
        await appendInOneTransaction((1...600).map { .room(Self.roomMessage($0)) }, to: log)
        let counts = try await store.pool.read { db in try Int.fetchAll(db, sql: "SELECT count FROM chunk ORDER BY id") }
        #expect(counts == [256, 256, 88])
        #expect(try await log.messages(target: "#dev", in: HistoryRange(limit: 1000, newestFirst: false)).map(\.serial) == Array(1...600))
        let middle = try await log.message(serial: 300, in: "#dev")
        #expect(middle?.serial == 300)
        #expect(try await log.messages(target: "#dev", in: HistoryRange(before: middle?.cursor, limit: 3, newestFirst: true)).map(\.serial) == [297, 298, 299])
        await log.close()
        try store.close()
    }

    /// A chunk body keeps everything a message is read back with, whatever varies between its
    /// messages: senders that come back, one with the same nick from another host, no account,
    /// kinds, tags, a room written in another case, a serial gap and a clock that went back.
    @Test func aChunkBodyReadsBackEveryMessageAsWritten() throws {
        let bob = Speaker(name: "bob", user: "b", host: "10.0.0.2", account: nil)
        let otherBob = Speaker(name: "bob", user: "b", host: "10.0.0.3", account: nil)
        let senders = [Self.alice, bob, Self.alice, otherBob, bob, Self.alice, Self.alice]
        let kinds: [MessageKind] = [.say, .action, .notice, .tagOnly, .say, .say, .say]
        let times: [Int64] = [0, 5, 5, 3, 400_000, 400_001, 400_001]
        let messages = senders.indices.map { index in
            RoomMessage(room: index == 4 ? "#Dev" : "#dev", sender: senders[index], text: index == 3 ? "" : "héllo \(index)", kind: kinds[index],
                        sequence: 0, time: Milliseconds.date(Self.start + times[index]), serial: index == 5 ? 1_000_000 : UInt64(10 + index),
                        tags: index == 2 ? [MessageTag("+draft/reply", "1"), MessageTag("+x", nil)] : [])
        }
        var writer = RoomChunks.BodyWriter()
        writer.encode(messages[...])
        let read = try #require(RoomChunks.decode(Data(writer.bytes)))
        #expect(read == messages)
        // A busy room's chunk: each sender written out once, serials and times as small steps.
        let busy = (1...50).map { (index: Int) -> RoomMessage in
            let sender = index % 2 == 0 ? Self.alice : bob
            let time = Milliseconds.date(Self.start + Int64(index / 3))
            return RoomMessage(room: "#dev", sender: sender, text: "message \(index)", kind: .say, sequence: 0, time: time, serial: 1_000 + UInt64(index))
        }
        writer.encode(busy[...])
        #expect(try #require(RoomChunks.decode(Data(writer.bytes))) == busy)
        let texts = busy.reduce(0) { $0 + $1.text.utf8.count }
        // Five bytes a message beside its text; the header, the first serial and time, two senders in full.
        #expect(writer.bytes.count <= texts + 5 * busy.count + 60)
    }

    /// Bodies a previous version wrote (each message whole) read as before, beside new ones.
    @Test func firstFormatChunksStillRead() async throws {
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let store = try SQLiteStore(directory: directory)
        let log = SQLiteMessageLog(store: store)
        let old = (1...3).map { Self.roomMessage($0) }
        var body: [UInt8] = []
        for message in old {
            RoomChunks.appendVarint(message.serial, to: &body)
            RoomChunks.appendVarint(UInt64(Milliseconds.from(message.time)), to: &body)
            body.append(0)
            for text in [message.sender.name, message.sender.user, message.sender.host] { RoomChunks.appendText(text, to: &body) }
            RoomChunks.appendOptionalText(message.sender.account, to: &body)
            RoomChunks.appendText(message.room, to: &body)
            RoomChunks.appendText(message.text, to: &body)
            RoomChunks.appendOptionalText(message.serial == 2 ? "+x=y" : nil, to: &body)
        }
        let written = Data(body)
        try await store.pool.write { db in
            try db.execute(sql: "INSERT INTO chunk (id, target, firstTime, lastTime, count, body) VALUES (3, '#dev', ?, ?, 3, ?)",
                           arguments: [Milliseconds.from(old[0].time), Milliseconds.from(old[2].time), written])
        }
        _ = await append([.room(Self.roomMessage(4))], to: log)
        let read = try await log.messages(target: "#dev", in: HistoryRange(limit: 10, newestFirst: false)).compactMap { logged in
            if case .room(let message) = logged { message } else { nil }
        }
        #expect(read.map(\.serial) == [1, 2, 3, 4])
        #expect(read.map(\.text) == ["m1", "m2", "m3", "m4"] && read[1].tags == [MessageTag("+x", "y")] && read[0].sender == Self.alice)
        await log.close()
        try store.close()
    }

    /// The writer's batch gathers each room's messages of a transaction into that room's chunk
    /// however they interleave, and starts over for the next transaction.
    @Test func aTransactionsRoomsEachGetTheirOwnChunk() throws {
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let store = try SQLiteStore(directory: directory)
        let batch = RoomChunkBatch()
        let rooms = ["#a", "#a", "#b", "#a", "#c", "#b", "#b"]
        for (index, room) in rooms.enumerated() { batch.add(Self.roomMessage(UInt64(index + 1), room: room)) }
        var wrote: [String] = []
        try store.pool.write { db in try batch.insert(db) { wrote.append($0) } }
        // Chunks in order of their last serials.
        #expect(wrote == ["#a", "#c", "#b"])
        batch.add(Self.roomMessage(8, room: "#c"))
        batch.add(Self.roomMessage(9, room: "#a"))
        try store.pool.write { db in try batch.insert(db) { _ in } }
        let chunks = try store.pool.read { db in
            try Row.fetchAll(db, sql: "SELECT target, body FROM chunk ORDER BY id").map { row in
                (row["target"] as String, RoomChunks.decode(row["body"])?.map(\.serial) ?? [])
            }
        }
        #expect(chunks.map(\.0) == ["#a", "#c", "#b", "#c", "#a"])
        #expect(chunks.map(\.1) == [[1, 2, 4], [5], [3, 6, 7], [8], [9]])
        try store.close()
    }

    /// A damaged body of the current format reads as nothing rather than as wrong messages.
    @Test func damagedBodiesReadAsNothing() {
        var writer = RoomChunks.BodyWriter()
        writer.encode([Self.roomMessage(1), Self.roomMessage(2)][...])
        let whole = writer.bytes
        #expect(RoomChunks.decode(Data(whole))?.count == 2)
        // Cut short anywhere (between two messages too: the header counts them), an unknown version,
        // or a sender number never written out.
        for length in 1..<whole.count { #expect(RoomChunks.decode(Data(whole.prefix(length))) == nil, "cut to \(length)") }
        #expect(RoomChunks.decode(Data([0, 9] + whole.dropFirst(2))) == nil)
        // A flag this version does not know (the first message's flags byte follows the marker, the
        // version, the count and the room, 1 + 4 bytes).
        var unknownFlag = whole
        unknownFlag[8] |= 0x80
        #expect(RoomChunks.decode(Data(unknownFlag)) == nil)
        let header: [UInt8] = [0, 2, 1, 4] + Array("#dev".utf8)
        var unknownSender = header + [0, 1, 1, 3]
        RoomChunks.appendText("hi", to: &unknownSender)
        #expect(RoomChunks.decode(Data(unknownSender)) == nil)
        // A time no message could have (turned back into milliseconds, its date would trap), in
        // either format.
        var farTime = header + [RoomChunks.Flag.newSender, 1]
        RoomChunks.appendVarint(RoomChunks.zigzag(1 << 60), to: &farTime)
        for text in ["alice", "alice", "127.0.0.1"] { RoomChunks.appendText(text, to: &farTime) }
        farTime += [0]
        RoomChunks.appendText("hi", to: &farTime)
        #expect(RoomChunks.decode(Data(farTime)) == nil)
        var farTimeFirstFormat: [UInt8] = [1]
        RoomChunks.appendVarint(UInt64(bitPattern: Int64.min), to: &farTimeFirstFormat)
        farTimeFirstFormat += [0]
        for text in ["alice", "alice", "127.0.0.1"] { RoomChunks.appendText(text, to: &farTimeFirstFormat) }
        farTimeFirstFormat += [0]
        for text in ["#dev", "hi"] { RoomChunks.appendText(text, to: &farTimeFirstFormat) }
        farTimeFirstFormat += [0]
        #expect(RoomChunks.decode(Data(farTimeFirstFormat)) == nil)
        // The same bodies with a plausible time read (so the checks above fail for the time alone).
        var nearTime = header + [RoomChunks.Flag.newSender, 1]
        RoomChunks.appendVarint(RoomChunks.zigzag(Self.start), to: &nearTime)
        nearTime += farTime[(header.count + 2 + 9)...]
        #expect(RoomChunks.decode(Data(nearTime))?.first?.text == "hi")
    }

    /// A database written before chunks (one row per message) opens with its room messages in chunks,
    /// readable as before, and its direct messages and pending marks untouched.
    @Test func aVersion2DatabaseMovesItsRoomMessagesIntoChunks() async throws {
        defer { try? FileManager.default.removeItem(atPath: directory) }
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        do {
            let queue = try DatabaseQueue(path: directory + "/parley.sqlite")
            try SQLiteStore.migrator.migrate(queue, upTo: "v2-history")
            try await queue.write { db in
                try db.execute(sql: "PRAGMA application_id = \(SQLiteStore.applicationID)")
                for serial in 1...300 {
                    try db.execute(sql: """
                        INSERT INTO message (id, target, time, kind, sender, senderUser, senderHost, senderAccount, recipient, text, tags, pendingFor)
                        VALUES (?, ?, ?, 0, 'alice', 'alice', '127.0.0.1', 'alice', ?, ?, ?, NULL)
                        """, arguments: [serial, serial % 2 == 0 ? "#dev" : "#ops", Self.start + Int64(serial), serial % 2 == 0 ? "#Dev" : "#ops",
                                         "m\(serial)", serial == 4 ? "+draft/react=x" : nil])
                }
                try db.execute(sql: """
                    INSERT INTO message (id, target, time, kind, sender, senderUser, senderHost, senderAccount, recipient, text, tags, pendingFor)
                    VALUES (301, '@alice bob', ?, 0, 'alice', 'alice', '127.0.0.1', 'alice', 'bob', 'dm', NULL, 'bob')
                    """, arguments: [Self.start + 301])
            }
            try queue.close()
        }
        let store = try SQLiteStore(directory: directory)
        let log = SQLiteMessageLog(store: store)
        let dev = try await log.messages(target: "#dev", in: HistoryRange(limit: 1000, newestFirst: false)).compactMap { logged in
            if case .room(let message) = logged { message } else { nil }
        }
        #expect(dev.map(\.serial) == stride(from: 2, through: 300, by: 2).map(UInt64.init))
        #expect(dev.first?.room == "#Dev" && dev[1].tags == [MessageTag("+draft/react", "x")] && dev.last?.text == "m300")
        #expect(try await log.messages(target: "#ops", in: HistoryRange(limit: 2, newestFirst: true)).map(\.serial) == [297, 299])
        #expect(try await log.claimPending(account: "bob").map(\.serial) == [301])
        let resumed = try log.resume(perRoom: 1)
        #expect(resumed.nextSerial == 302 && resumed.recent.map(\.serial) == [300, 299])
        #expect(try await store.pool.read { db in try Int.fetchOne(db, sql: "SELECT COUNT(*) FROM message") } == 1)
        await log.close()
        try store.close()
    }

    /// Damaged chunks that pruning by age cannot cut (more of them than one slice) are left in place,
    /// pruning ends, and the room's other messages are pruned and read as before.
    @Test(.timeLimit(.minutes(1))) func pruningByAgePassesOverDamagedChunks() async throws {
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let store = try SQLiteStore(directory: directory)
        let log = SQLiteMessageLog(store: store, retention: .init(maxAge: .seconds(60), interval: .seconds(3600)))
        let now = Self.start + 10_000_000
        try await store.pool.write { db in
            for id in 1...600 {
                try db.execute(sql: "INSERT INTO chunk (id, target, firstTime, lastTime, count, body) VALUES (?, '#dev', ?, ?, 2, x'FF')",
                               arguments: [id, now - 120_000, now])
            }
        }
        _ = await append([.room(Self.roomMessage(601, atMs: now - 90_000)), .room(Self.roomMessage(602, atMs: now - 1_000))], to: log)
        #expect(try log.prune(rooms: [], now: Milliseconds.date(now)) == 1)
        #expect(try await log.messages(target: "#dev", in: HistoryRange(limit: 10, newestFirst: true)).map(\.serial) == [602])
        await log.close()
        try store.close()
    }

    /// The writer prunes by count the rooms its transactions wrote to, between transactions.
    @Test func theWriterPrunesTheRoomsItWroteTo() async throws {
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let store = try SQLiteStore(directory: directory)
        let log = SQLiteMessageLog(store: store, retention: .init(maxPerRoom: 2, interval: .zero))
        _ = await append((1...7).map { .room(Self.roomMessage($0, room: $0 <= 5 ? "#dev" : "#ops")) }, to: log)
        // A barrier runs after the writer's next pass, so after the prune that followed the appends.
        await withCheckedContinuation { (done: CheckedContinuation<Void, Never>) in log.barrier { done.resume() } }
        #expect(try await log.messages(target: "#dev", in: HistoryRange(limit: 20, newestFirst: true)).map(\.serial) == [4, 5])
        #expect(try await log.messages(target: "#ops", in: HistoryRange(limit: 20, newestFirst: true)).map(\.serial) == [6, 7])
        #expect(log.messagesPruned.load(ordering: .relaxed) == 3)
        await log.close()
        try store.close()
    }

    @Test func resumingAfterARestartContinuesIdsAndReplays() async throws {
        defer { try? FileManager.default.removeItem(atPath: directory) }
        do {
            let store = try SQLiteStore(directory: directory)
            let log = SQLiteMessageLog(store: store)
            _ = await append((1...8).map { .room(Self.roomMessage($0, room: $0 % 2 == 0 ? "#even" : "#odd")) }, to: log)
            await log.close()
            try store.close()
        }
        let store = try SQLiteStore(directory: directory)
        let log = SQLiteMessageLog(store: store)
        let resumed = try log.resume(perRoom: 3)
        #expect(resumed.nextSerial == 9)
        #expect(resumed.lastTimeMs == Self.start + 80)
        #expect(resumed.recent.map(\.serial) == [4, 6, 8, 3, 5, 7])
        #expect(resumed.recent.first?.room == "#even")
        await log.close()
        try store.close()
    }

    @Test func anotherProgramsDatabaseIsRefusedByName() throws {
        defer { try? FileManager.default.removeItem(atPath: directory) }
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        let queue = try DatabaseQueue(path: directory + "/parley.sqlite")
        try queue.write { db in try db.execute(sql: "CREATE TABLE invoices (id INTEGER PRIMARY KEY)") }
        try queue.close()
        #expect {
            _ = try SQLiteStore(directory: directory)
        } throws: { error in
            "\(error)".contains("parley.sqlite") && "\(error)".contains("not a Parley database") && "\(error)".contains("invoices")
        }
    }

    @Test func aDamagedDatabaseIsRefusedByName() async throws {
        defer { try? FileManager.default.removeItem(atPath: directory) }
        do {
            let store = try SQLiteStore(directory: directory)
            let log = SQLiteMessageLog(store: store)
            _ = await append((1...2000).map { .room(Self.roomMessage($0, text: String(repeating: "x", count: 200))) }, to: log)
            await log.close()
            try store.close()
        }
        // Overwrite pages in the middle of the file: the header stays valid, the b-trees do not.
        let handle = try FileHandle(forWritingTo: URL(fileURLWithPath: directory + "/parley.sqlite"))
        try handle.seek(toOffset: 40_960)
        handle.write(Data(repeating: 0xA5, count: 65_536))
        try handle.close()
        #expect {
            _ = try SQLiteStore(directory: directory)
        } throws: { error in
            "\(error)".contains("parley.sqlite") && "\(error)".contains("damaged")
        }
    }

    @Test func aBackupIsACompleteDatabaseAndNeverOverwrites() async throws {
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let store = try SQLiteStore(directory: directory)
        _ = try await store.createAccount(AccountRecord(name: "alice", passwordHash: "h", createdAt: Date()))
        let log = SQLiteMessageLog(store: store)
        _ = await append((1...3).map { .room(Self.roomMessage($0)) }, to: log)
        let copy = directory + "/backup.sqlite"
        try store.backup(to: copy)
        #expect { try store.backup(to: copy) } throws: { error in "\(error)".contains("already exists") }
        await log.close()
        try store.close()

        let restored = directory + "/restored"
        try FileManager.default.createDirectory(atPath: restored, withIntermediateDirectories: true)
        try FileManager.default.copyItem(atPath: copy, toPath: restored + "/parley.sqlite")
        let reopened = try SQLiteStore(directory: restored)
        let reopenedLog = SQLiteMessageLog(store: reopened)
        #expect(try await reopened.account(named: "alice") != nil)
        #expect(try await reopenedLog.messages(target: "#dev", in: HistoryRange(limit: 10, newestFirst: true)).map(\.serial) == [1, 2, 3])
        await reopenedLog.close()
        try reopened.close()
    }

    @Test func timestampsRoundTripToTheMillisecond() {
        let date = Milliseconds.date(1_764_602_359_123)
        #expect(Milliseconds.iso8601(date) == "2025-12-01T15:19:19.123Z")
        #expect(Milliseconds.parse("2025-12-01T15:19:19.123Z") == date)
        #expect(Milliseconds.parse("2025-12-01T15:19:19Z") == Milliseconds.date(1_764_602_359_000))
        #expect(Milliseconds.parse("2025-12-01T15:19:19.1Z") == Milliseconds.date(1_764_602_359_100))
        #expect(Milliseconds.parse("2025-12-01 15:19:19Z") == nil)
        #expect(Milliseconds.parse("yesterday") == nil)
        #expect(MessageID.serial(MessageID.string(123_456_789)) == 123_456_789)
    }
}
