import Foundation
import GRDB
import GRDBSQLite
import ParleyCore

/// Room history is stored in chunks: one row per room per transaction, holding that room's messages
/// of the transaction in a compact body, instead of one row and one index entry per message. Under
/// load a transaction holds dozens of one room's messages, and SQLite's cost is per row and per index
/// page touched, not per byte: a message row with its (target, time) index entry cost the writer 6 to
/// 17 µs, on the core the event loop also needs.
///
/// A chunk's id is the serial of its last message and `lastTime` that message's time; `firstTime` is
/// its first message's time. A room's messages are stamped and queued under the room's lock, so
/// within a room chunks never overlap and (time, serial) order is chunk order then body order: every
/// read walks the `chunk_by_target` index (target, lastTime, id) and decodes a few bodies.
enum RoomChunks {
    static let schema = """
        CREATE TABLE chunk (
            id INTEGER PRIMARY KEY,
            target TEXT NOT NULL,
            firstTime INTEGER NOT NULL,
            lastTime INTEGER NOT NULL,
            count INTEGER NOT NULL,
            body BLOB NOT NULL
        );
        CREATE INDEX chunk_by_target ON chunk(target, lastTime);
        CREATE INDEX chunk_by_age ON chunk(firstTime);
        """

    /// The most messages one chunk holds.
    static let maxPerChunk = 256

    static let insertSQL = "INSERT INTO chunk (id, target, firstTime, lastTime, count, body) VALUES (?, ?, ?, ?, ?, ?)"

    /// Inserts one chunk of `target`'s messages (in serial order, at least one) through the statement
    /// `handle` (`insertSQL`), encoding with `body`, which the caller keeps for the next chunk.
    static func insert(target: String, _ messages: ArraySlice<RoomMessage>, handle: OpaquePointer, body: inout BodyWriter) throws {
        guard let first = messages.first?.time, let last = messages.last else { return }
        body.encode(messages)
        try insert(target: target, body: body.bytes, count: messages.count, firstTime: first, lastTime: last.time, lastSerial: last.serial, handle: handle)
    }

    /// Inserts one chunk whose body is encoded, through the statement `handle` (`insertSQL`).
    static func insert(target: String, body: [UInt8], count: Int, firstTime: Date, lastTime: Date, lastSerial: UInt64, handle: OpaquePointer) throws {
        sqlite3_reset(handle)
        var key = target
        let code = key.withUTF8 { key in
            body.withUnsafeBytes { bytes in
                // SQLITE_STATIC (nil): both buffers outlive the step, and the bindings are cleared after it.
                sqlite3_bind_int64(handle, 1, Int64(bitPattern: lastSerial))
                _ = sqlite3_bind_text(handle, 2, UnsafeRawPointer(key.baseAddress)?.assumingMemoryBound(to: CChar.self), Int32(key.count), nil)
                sqlite3_bind_int64(handle, 3, Milliseconds.from(firstTime))
                sqlite3_bind_int64(handle, 4, Milliseconds.from(lastTime))
                sqlite3_bind_int64(handle, 5, Int64(count))
                _ = sqlite3_bind_blob(handle, 6, bytes.baseAddress, Int32(bytes.count), nil)
                let code = sqlite3_step(handle)
                sqlite3_clear_bindings(handle)
                return code
            }
        }
        guard code == SQLITE_DONE else {
            throw DatabaseError(resultCode: ResultCode(rawValue: code), message: String(cString: sqlite3_errmsg(sqlite3_db_handle(handle))))
        }
    }

    /// Inserts `messages` of one room (serial order) as chunks of at most `maxPerChunk`, through GRDB's
    /// statement cache (the migration and chunk rewrites; the writer keeps its own statement).
    static func insert(target: String, _ messages: [RoomMessage], _ db: Database, maxPerChunk: Int = maxPerChunk) throws {
        let handle = try db.cachedStatement(sql: insertSQL).sqliteStatement
        var body = BodyWriter()
        var start = 0
        while start < messages.count {
            let end = min(messages.count, start + maxPerChunk)
            try insert(target: target, messages[start..<end], handle: handle, body: &body)
            start = end
        }
    }

    // MARK: Reading

    /// The messages of a chunk's body, oldest first; nil if the body is damaged. Reads both formats.
    static func decode(_ body: Data) -> [RoomMessage]? {
        body.withUnsafeBytes { bytes in
            var reader = Reader(bytes: bytes)
            return reader.messages()
        }
    }

    /// A room's messages in a range (see `HistoryRange`), oldest first.
    static func messages(_ db: Database, target: String, in range: HistoryRange) throws -> [RoomMessage] {
        let limit = max(0, range.limit)
        guard limit > 0 else { return [] }
        var found: [RoomMessage] = []
        /// Takes a chunk's messages in reading order; false once the range or the limit is reached.
        func take(_ body: Data, newestFirst: Bool) -> Bool {
            guard let messages = decode(body) else { return true }
            for message in newestFirst ? messages.reversed() : messages {
                let cursor = HistoryCursor(timeMs: Milliseconds.from(message.time), id: message.serial)
                if let after = range.after, cursor <= after {
                    if newestFirst { return false } else { continue }
                }
                if let before = range.before, cursor >= before {
                    if newestFirst { continue } else { return false }
                }
                found.append(message)
                if found.count == limit { return false }
            }
            return true
        }
        if range.newestFirst {
            // The first chunk ending at or past `before` may start before it; older chunks follow.
            var olderSQL = "SELECT body FROM chunk WHERE target = ?"
            var arguments: StatementArguments = [target]
            if let before = range.before {
                let bound: StatementArguments = [target, before.timeMs, Int64(clamping: before.id)]
                if let straddling = try Data.fetchOne(db, sql: "SELECT body FROM chunk WHERE target = ? AND (lastTime, id) >= (?, ?) ORDER BY lastTime, id LIMIT 1", arguments: bound),
                   !take(straddling, newestFirst: true) {
                    return found.reversed()
                }
                olderSQL += " AND (lastTime, id) < (?, ?)"
                arguments = bound
            }
            let bodies = try Data.fetchCursor(db, sql: olderSQL + " ORDER BY lastTime DESC, id DESC", arguments: arguments)
            while let body = try bodies.next(), take(body, newestFirst: true) {}
            return found.reversed()
        }
        var sql = "SELECT body FROM chunk WHERE target = ?"
        var arguments: StatementArguments = [target]
        if let after = range.after {
            // Chunks ending at or before `after` hold nothing after it.
            sql += " AND (lastTime, id) > (?, ?)"
            arguments += [after.timeMs, Int64(clamping: after.id)]
        }
        let bodies = try Data.fetchCursor(db, sql: sql + " ORDER BY lastTime, id", arguments: arguments)
        while let body = try bodies.next(), take(body, newestFirst: false) {}
        return found
    }

    /// A room's message by serial: in the room's first chunk ending at or after it. Serials and times
    /// rise together (one stamper hands out both), so the chunk of any room ending just before the
    /// serial gives a time the message is not older than, and the room's index is entered there.
    static func message(_ db: Database, serial: UInt64, target: String) throws -> RoomMessage? {
        let wanted = Int64(clamping: serial)
        let notOlder = try Int64.fetchOne(db, sql: "SELECT lastTime FROM chunk WHERE id < ? ORDER BY id DESC LIMIT 1", arguments: [wanted]) ?? .min
        let ids = try Int64.fetchCursor(db, sql: "SELECT id FROM chunk WHERE target = ? AND lastTime >= ? ORDER BY lastTime, id", arguments: [target, notOlder])
        var holder: Int64?
        while let id = try ids.next() {
            if id >= wanted {
                holder = id
                break
            }
        }
        guard let holder, let body = try Data.fetchOne(db, sql: "SELECT body FROM chunk WHERE id = ?", arguments: [holder]) else { return nil }
        return decode(body)?.first { $0.serial == serial }
    }

    // MARK: Pruning

    /// Keeps the messages of chunk `id` that `keep` accepts (the newest of it, so its id and last time
    /// stand), or deletes the chunk if none; returns how many messages went.
    static func trim(_ db: Database, id: Int64, keeping keep: ([RoomMessage]) -> ArraySlice<RoomMessage>) throws -> Int {
        guard let row = try Row.fetchOne(db, sql: "SELECT target, body FROM chunk WHERE id = ?", arguments: [id]),
              let messages = decode(row["body"]) else { return 0 }
        let kept = keep(messages)
        guard kept.count < messages.count else { return 0 }
        try db.execute(sql: "DELETE FROM chunk WHERE id = ?", arguments: [id])
        if !kept.isEmpty { try insert(target: row["target"], Array(kept), db, maxPerChunk: .max) }
        return messages.count - kept.count
    }

    // MARK: Encoding

    /// The first byte of a body in the current format. A first-format body starts with its first
    /// message's serial as a varint, and serials start at 1, so it never starts with 0.
    static let formatMarker: UInt8 = 0
    static let formatVersion: UInt8 = 2

    /// Bits of a message's first byte in the current format; the low two bits are its kind.
    enum Flag {
        static let kindMask: UInt8 = 0b11
        /// The sender is written out (and numbered for later messages), not a number of an earlier one.
        static let newSender: UInt8 = 1 << 2
        static let tags: UInt8 = 1 << 3
        /// The message names its room itself: it differs from the body's (in case only, once a room
        /// was recreated as `#Dev` where it was `#dev`).
        static let ownRoom: UInt8 = 1 << 4
        /// Any other bit set means a body this version cannot read.
        static let known: UInt8 = kindMask | newSender | tags | ownRoom
    }

    /// Encodes chunk bodies, keeping its buffers for the next one. The current format (2):
    ///
    ///     0x00 0x02 message-count room-name
    ///     per message: flags, serial (varint, the difference from the previous message's, the first
    ///     from 0), time (zigzag varint of milliseconds, likewise), then the sender written out (name,
    ///     user, host, account) or the number of an earlier written-out sender (varint), the room if
    ///     `ownRoom`, the text, the tags if `tags`.
    ///
    /// Texts are a varint length and UTF-8; optional ones (the account) length + 1, 0 for none. A
    /// chunk holds dozens of messages from a few senders of one room, at times milliseconds apart:
    /// the first format wrote the room, the sender in full and whole serials and times with each
    /// message, about 40 of its 70 bytes in the rooms benchmark, and the writer's commit and SQLite's
    /// checkpoint cost by the byte.
    struct BodyWriter {
        private(set) var bytes: [UInt8] = []
        /// The senders written out so far in this body, in their numbering.
        private var senders: [Speaker] = []
        /// How far back a sender is looked for; past it, one is written out again.
        static let senderSearch = 32

        mutating func encode(_ messages: ArraySlice<RoomMessage>) {
            bytes.removeAll(keepingCapacity: true)
            senders.removeAll(keepingCapacity: true)
            guard let room = messages.first?.room else { return }
            bytes.append(formatMarker)
            bytes.append(formatVersion)
            appendVarint(UInt64(messages.count), to: &bytes)
            appendText(room, to: &bytes)
            var (serial, time): (UInt64, Int64) = (0, 0)
            for index in messages.indices {
                let message = messages[index]
                let sender = senderNumber(message.sender)
                let tags = TagCoding.encode(message.tags)
                var flags = UInt8(SQLiteMessageLog.kindCode(message.kind)) & Flag.kindMask
                if sender == nil { flags |= Flag.newSender }
                if tags != nil { flags |= Flag.tags }
                if message.room != room { flags |= Flag.ownRoom }
                bytes.append(flags)
                appendVarint(message.serial &- serial, to: &bytes)
                let milliseconds = Milliseconds.from(message.time)
                appendVarint(zigzag(milliseconds &- time), to: &bytes)
                (serial, time) = (message.serial, milliseconds)
                if let sender {
                    appendVarint(UInt64(sender), to: &bytes)
                } else {
                    appendText(message.sender.name, to: &bytes)
                    appendText(message.sender.user, to: &bytes)
                    appendText(message.sender.host, to: &bytes)
                    appendOptionalText(message.sender.account, to: &bytes)
                    senders.append(message.sender)
                }
                if message.room != room { appendText(message.room, to: &bytes) }
                appendText(message.text, to: &bytes)
                if let tags { appendText(tags, to: &bytes) }
            }
        }

        /// The number of a sender written out earlier in this body, looking back a bounded way (the
        /// same session's messages share their strings, so each comparison is short).
        private func senderNumber(_ sender: Speaker) -> Int? {
            var index = senders.count - 1
            let end = max(0, senders.count - Self.senderSearch)
            while index >= end {
                if RoomChunks.sameStoredSender(senders[index], sender) { return index }
                index -= 1
            }
            return nil
        }
    }

    /// Whether two senders store the same bytes: the body keeps name, user, host and account. Names,
    /// hosts and accounts are ASCII, where `==` is byte equality; an IRC user name may be any text, and
    /// `==` would take two spellings of one canonical form for the same.
    static func sameStoredSender(_ a: Speaker, _ b: Speaker) -> Bool {
        a.name == b.name && a.host == b.host && a.account == b.account && a.user.utf8.elementsEqual(b.user.utf8)
    }

    static func zigzag(_ value: Int64) -> UInt64 {
        UInt64(bitPattern: (value << 1) ^ (value >> 63))
    }

    static func unzigzag(_ value: UInt64) -> Int64 {
        Int64(bitPattern: value >> 1) ^ -Int64(bitPattern: value & 1)
    }

    static func appendVarint(_ value: UInt64, to body: inout [UInt8]) {
        var value = value
        while value >= 0x80 {
            body.append(UInt8(truncatingIfNeeded: value) | 0x80)
            value >>= 7
        }
        body.append(UInt8(value))
    }

    static func appendText(_ text: String, to body: inout [UInt8]) {
        appendVarint(UInt64(text.utf8.count), to: &body)
        appendBytes(of: text, to: &body)
    }

    static func appendOptionalText(_ text: String?, to body: inout [UInt8]) {
        guard let text else { return body.append(0) }
        appendVarint(UInt64(text.utf8.count) + 1, to: &body)
        appendBytes(of: text, to: &body)
    }

    /// A native string's UTF-8 is copied in one go; the generic `append(contentsOf: utf8)` went
    /// byte by byte (a few percent of the writer's thread).
    static func appendBytes(of text: String, to body: inout [UInt8]) {
        let copied: Void? = text.utf8.withContiguousStorageIfAvailable { body.append(contentsOf: $0) }
        if copied == nil { body.append(contentsOf: text.utf8) }
    }

    /// Reads a body; every read is bounds-checked, and a damaged body reads as nil, never a crash.
    struct Reader {
        let bytes: UnsafeRawBufferPointer
        var offset = 0

        var atEnd: Bool { offset >= bytes.count }

        mutating func varint() -> UInt64? {
            var value: UInt64 = 0
            var shift: UInt64 = 0
            while offset < bytes.count, shift < 64 {
                let byte = bytes[offset]
                offset += 1
                value |= UInt64(byte & 0x7F) << shift
                if byte < 0x80 { return value }
                shift += 7
            }
            return nil
        }

        mutating func text(length: UInt64) -> String? {
            guard length <= UInt64(bytes.count - offset) else { return nil }
            let end = offset + Int(length)
            defer { offset = end }
            return String(decoding: UnsafeRawBufferPointer(rebasing: bytes[offset..<end]), as: UTF8.self)
        }

        mutating func text() -> String? {
            guard let length = varint() else { return nil }
            return text(length: length)
        }

        /// nil inside: no value; nil outside: damaged.
        mutating func optionalText() -> String?? {
            guard let length = varint() else { return nil }
            if length == 0 { return .some(nil) }
            guard let text = text(length: length - 1) else { return nil }
            return .some(text)
        }

        /// Whether a time read from a body could be a message's (within about 285,000 years of 1970):
        /// a damaged body's would otherwise make a date that traps when turned back into milliseconds.
        static func plausible(_ milliseconds: Int64) -> Bool {
            milliseconds.magnitude < 1 << 53
        }

        /// Every message of the body, in either format.
        mutating func messages() -> [RoomMessage]? {
            guard offset < bytes.count, bytes[offset] == formatMarker else { return firstFormatMessages() }
            offset += 1
            guard offset < bytes.count, bytes[offset] == formatVersion else { return nil }
            offset += 1
            guard let count = varint(), let room = text() else { return nil }
            var senders: [Speaker] = []
            var messages: [RoomMessage] = []
            var (serial, time): (UInt64, Int64) = (0, 0)
            while !atEnd {
                let flags = bytes[offset]
                offset += 1
                guard flags & ~Flag.known == 0, let serialStep = varint(), let timeStep = varint() else { return nil }
                serial = serial &+ serialStep
                time = time &+ unzigzag(timeStep)
                let sender: Speaker
                if flags & Flag.newSender != 0 {
                    guard let name = text(), let user = text(), let host = text(), let account = optionalText() else { return nil }
                    sender = Speaker(name: name, user: user, host: host, account: account)
                    senders.append(sender)
                } else {
                    guard let number = varint(), number < UInt64(senders.count) else { return nil }
                    sender = senders[Int(number)]
                }
                var ownRoom = room
                if flags & Flag.ownRoom != 0 {
                    guard let named = text() else { return nil }
                    ownRoom = named
                }
                guard let text = text() else { return nil }
                var tags: String?
                if flags & Flag.tags != 0 {
                    guard let written = self.text() else { return nil }
                    tags = written
                }
                guard Self.plausible(time) else { return nil }
                messages.append(RoomMessage(room: ownRoom, sender: sender, text: text, kind: SQLiteMessageLog.kind(Int(flags & Flag.kindMask)),
                                            sequence: 0, time: Milliseconds.date(time), serial: serial, tags: TagCoding.decode(tags)))
            }
            // A body cut between two messages would otherwise read as fewer messages.
            return count == UInt64(messages.count) ? messages : nil
        }

        /// The first format: each message whole, as serial and time (varints), kind, sender, user,
        /// host, account, room, text and tags.
        mutating func firstFormatMessages() -> [RoomMessage]? {
            var messages: [RoomMessage] = []
            while !atEnd {
                guard let serial = varint(), let time = varint(), offset < bytes.count else { return nil }
                let kind = SQLiteMessageLog.kind(Int(bytes[offset]))
                offset += 1
                guard let name = text(), let user = text(), let host = text(), let account = optionalText(),
                      let room = text(), let text = text(), let tags = optionalText(),
                      Self.plausible(Int64(bitPattern: time)) else { return nil }
                messages.append(RoomMessage(room: room, sender: Speaker(name: name, user: user, host: host, account: account), text: text,
                                            kind: kind, sequence: 0, time: Milliseconds.date(Int64(bitPattern: time)), serial: serial,
                                            tags: TagCoding.decode(tags)))
            }
            return messages
        }
    }
}

/// One transaction's room messages, gathered by room for `RoomChunks`. Used by the writer thread alone;
/// kept across transactions so its storage is reused.
final class RoomChunkBatch {
    // @exclusivity(unchecked): no run-time exclusivity check per message added. The batch lives on the
    // writer's thread alone, and no access is held across a call that could reach it again.
    @exclusivity(unchecked) private var rooms: [String: Int] = [:]
    @exclusivity(unchecked) private var chunks: [(room: String, messages: [RoomMessage])] = []
    @exclusivity(unchecked) private var body = RoomChunks.BodyWriter()

    func clear() {
        rooms.removeAll(keepingCapacity: true)
        chunks.removeAll(keepingCapacity: true)
    }

    /// The chunk the last message went to.
    @exclusivity(unchecked) private var last = 0

    /// Adds a room message.
    func add(_ message: RoomMessage) {
        let room = message.room
        // Consecutive messages are mostly one room's: its chunk is checked before the name is hashed.
        if last < chunks.count, chunks[last].room == room {
            chunks[last].messages.append(message)
        } else if let index = rooms[room] {
            chunks[index].messages.append(message)
            last = index
        } else {
            last = chunks.count
            rooms[room] = chunks.count
            chunks.append((room, [message]))
        }
    }

    /// Inserts a chunk per room, in order of their last serials (appending to the table's b-tree),
    /// telling `wrote` each room; then clears.
    func insert(_ db: Database, wrote: (String) -> Void) throws {
        defer { clear() }
        guard !chunks.isEmpty else { return }
        chunks.sort { ($0.messages.last?.serial ?? 0) < ($1.messages.last?.serial ?? 0) }
        let handle = try db.cachedStatement(sql: RoomChunks.insertSQL).sqliteStatement
        for index in chunks.indices {
            let target = NameRules.key(chunks[index].room)
            var start = 0
            // A bounded chunk bounds what a read decodes to reach one message.
            while start < chunks[index].messages.count {
                let messages = chunks[index].messages[start..<min(start + RoomChunks.maxPerChunk, chunks[index].messages.count)]
                start = messages.endIndex
                try RoomChunks.insert(target: target, messages, handle: handle, body: &body)
            }
            wrote(target)
        }
    }
}
