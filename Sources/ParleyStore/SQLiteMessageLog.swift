import Dispatch
import Foundation
import GRDB
import GRDBSQLite
import ParleyCore
import Synchronization

/// The message history in SQLite, written by one thread of its own. Messages queue up while a
/// transaction commits and the next transaction takes all of them (group commit): under load one
/// commit carries hundreds of messages, at rest each message gets its own. Each message is reported
/// committed in queue order, after the commit that holds it, so the hub publishes what is durable.
public final class SQLiteMessageLog: MessageLog, Sendable {
    public struct Retention: Sendable {
        public var maxPerRoom: Int?
        public var maxAge: Duration?
        /// How often the writer prunes (between transactions).
        public var interval: Duration

        public init(maxPerRoom: Int? = nil, maxAge: Duration? = nil, interval: Duration = .seconds(60)) {
            self.maxPerRoom = maxPerRoom
            self.maxAge = maxAge
            self.interval = interval
        }
    }

    /// A direct message to store, and whom to tell once it is committed.
    final class Append: CommittedWork {
        let message: LoggedMessage
        let publisher: PublishQueue?
        let committed: @Sendable (Bool) -> Void
        var room: String { "" }
        init(_ message: LoggedMessage, _ publisher: PublishQueue?, _ committed: @escaping @Sendable (Bool) -> Void) {
            self.message = message
            self.publisher = publisher
            self.committed = committed
        }

        func run(committed: Bool) { self.committed(committed) }
    }

    /// A room message given with a callback (`append(_:publisher:committed:)`) rather than as an entry.
    final class ReportedRoomMessage: RoomLogEntry {
        let message: RoomMessage
        let publisher: PublishQueue?
        let committed: @Sendable (Bool) -> Void
        var room: String { message.room }
        init(_ message: RoomMessage, _ publisher: PublishQueue?, _ committed: @escaping @Sendable (Bool) -> Void) {
            self.message = message
            self.publisher = publisher
            self.committed = committed
        }

        func run(committed: Bool) { self.committed(committed) }
    }

    /// The writer's other work, rare beside appends.
    enum Job: Sendable {
        case markPending(serial: UInt64, account: String)
        case barrier(@Sendable () -> Void)
        case claim(account: String, CheckedContinuation<[LoggedMessage], any Error>)
        case stop(CheckedContinuation<Void, Never>)
    }

    /// What waits for the writer, in queue order. Room messages and direct messages are kept apart
    /// from each other and from the other jobs, so the writer's passes over hundreds of them copy a
    /// reference, not an enum (copying jobs was 6% of its thread). The two kinds of message are stored
    /// and reported independently: only the other jobs keep their place among them.
    struct Queued {
        var rooms: [any RoomLogEntry] = []
        /// Each room entry's first reads (`ColdReads.of`), taken when it was queued (on the loop, with
        /// the entry in the cache), so the writer can fetch the entries ahead without touching them.
        var roomReads: [ColdReads] = []
        var directs: [Append] = []
        /// Each with how many messages of each kind were queued before it: it comes after those.
        var others: [(rooms: Int, directs: Int, job: Job)] = []

        var isEmpty: Bool { rooms.isEmpty && directs.isEmpty && others.isEmpty }
        var count: Int { rooms.count + directs.count + others.count }
        var messages: Int { rooms.count + directs.count }

        mutating func add(_ job: Job) {
            others.append((rooms.count, directs.count, job))
        }

        mutating func removeAll() {
            rooms.removeAll(keepingCapacity: true)
            roomReads.removeAll(keepingCapacity: true)
            directs.removeAll(keepingCapacity: true)
            others.removeAll(keepingCapacity: true)
        }

        /// Visits everything in queue order: before each other job, the messages queued before it.
        func forEach(room: (any RoomLogEntry, ColdReads) throws -> Void, direct: (Append) throws -> Void, other: (Job) throws -> Void) rethrows {
            var (nextRoom, nextDirect) = (0, 0)
            func messages(upTo end: (rooms: Int, directs: Int)) throws {
                while nextRoom < end.rooms {
                    // The loop made these entries a transaction ago and has run since: they are out of
                    // the cache. Fetch a few ahead the entry and what it points to (its message and
                    // text, which the encoding reads).
                    if nextRoom + 4 < roomReads.count { roomReads[nextRoom + 4].prefetchFirstThree() }
                    try room(rooms[nextRoom], roomReads[nextRoom])
                    nextRoom += 1
                }
                while nextDirect < end.directs {
                    try direct(directs[nextDirect])
                    nextDirect += 1
                }
            }
            for queued in others {
                try messages(upTo: (queued.rooms, queued.directs))
                try other(queued.job)
            }
            try messages(upTo: (rooms.count, directs.count))
        }
    }

    private let pool: DatabasePool
    private let retention: Retention
    /// A batch this large means load; one this large is worth committing without delay. A commit's
    /// fixed part (BEGIN, the database header page, the rooms' index pages, SQLite's locks) is shared
    /// by what it holds: in rooms 2,048 against 256 gave commits of ~2,750 messages instead of ~775
    /// and 1-4% more deliveries, the same latency.
    static let busyBatch = 32
    static let fullBatch = 2048
    static let commitDelayMicroseconds: UInt32 = 4000
    /// How long a batch must go without growing before it is committed: what the loop may sit idle
    /// for when everything in flight waits on this commit (500 µs gave 10 to 25% fewer deliveries).
    static let commitDelayStep: UInt32 = 100
    private let queue = Mutex<Queued>(Queued())
    /// Signalled when the queue goes from empty to not empty.
    private let wake = DispatchSemaphore(value: 0)
    private let stopped = Atomic<Bool>(false)
    /// The threads that append (the event loops), if known: see `watch(feeders:)`.
    private let feeders = Mutex<ThreadStates?>(nil)
    /// Counters for the console and the benchmarks.
    public let messagesStored = Atomic<Int>(0)
    public let transactions = Atomic<Int>(0)
    public let messagesPruned = Atomic<Int>(0)

    /// Starts the writer thread.
    public init(store: SQLiteStore, retention: Retention = Retention()) {
        pool = store.pool
        self.retention = retention
        let thread = Thread { [self] in
            nameThisThread("parley-history")
            preferNotToPreempt()
            run()
        }
        thread.start()
    }

    // MARK: Writing (the writer thread)

    /// Queues with `add`, waking the writer if the queue was empty.
    private func enqueue(_ add: (inout Queued) -> Void) {
        let wasEmpty = queue.withLock { queue in
            defer { add(&queue) }
            return queue.isEmpty
        }
        if wasEmpty { wake.signal() }
    }

    private func submit(_ job: Job) {
        enqueue { $0.add(job) }
    }

    public func append(_ message: LoggedMessage, publisher: PublishQueue?, committed: @escaping @Sendable (Bool) -> Void) {
        if case .room(let message) = message { return append(ReportedRoomMessage(message, publisher, committed)) }
        guard !stopped.load(ordering: .relaxed) else { return committed(false) }
        let append = Append(message, publisher, committed)
        enqueue { $0.directs.append(append) }
    }

    public func append(_ entry: any RoomLogEntry) {
        guard !stopped.load(ordering: .relaxed) else { return entry.run(committed: false) }
        let reads = ColdReads.of(entry)
        enqueue { queued in
            queued.rooms.append(entry)
            queued.roomReads.append(reads)
        }
    }

    /// The threads that append (the server's event loops): a batch stops waiting to grow once all of
    /// them are asleep.
    public func watch(feeders: ThreadStates) {
        self.feeders.withLock { $0 = feeders }
    }

    /// Runs `body` on the writer thread once every message queued before it has been committed and
    /// handed to its `committed` callback (tests wait on the writer with it).
    public func barrier(_ body: @escaping @Sendable () -> Void) {
        submit(.barrier(body))
    }

    public func markPending(serial: UInt64, account: String) {
        submit(.markPending(serial: serial, account: account))
    }

    public func claimPending(account: String) async throws -> [LoggedMessage] {
        try await withCheckedThrowingContinuation { continuation in
            submit(.claim(account: account, continuation))
        }
    }

    /// Stores what is queued, then stops the writer; later appends are refused.
    public func close() async {
        guard !stopped.exchange(true, ordering: .relaxed) else { return }
        await withCheckedContinuation { continuation in submit(.stop(continuation)) }
    }

    private func run() {
        var lastPrune = ContinuousClock.now
        var touchedRooms: Set<String> = []
        var lastBatch = 0
        let arena = TextArena()
        let batch = RoomChunkBatch()
        let handover = Handover()
        var jobs = Queued()
        while true {
            _ = wake.wait(timeout: .now() + .seconds(1))
            // Woken while busy (the last pass stored something), let the thread that woke it go on
            // first: on a shared core the writer otherwise preempts a loop at the first message of a
            // read and commits it nearly alone. Over the line door, fan-out to 1,000 settled at 5 to 9
            // messages a transaction (36 with the yield, and 13 to 25% more deliveries).
            if lastBatch > 0 { sched_yield() }
            // Commit delay: a transaction costs a few hundred microseconds whatever it holds. Under load
            // (the last batch held `busyBatch` messages or more), let a small batch grow for up to 4 ms,
            // but only while it is growing: once a step passes with nothing new, the loops have handed
            // over what they had and their clients are waiting for this commit (with a few hundred
            // messages in flight, waiting for a full batch was 2 ms of idle per commit). At rest a
            // message is written at once.
            if lastBatch >= Self.busyBatch {
                var waited: UInt32 = 0
                var queued = queue.withLock { $0.count }
                let feeders = feeders.withLock { $0 }
                while waited < Self.commitDelayMicroseconds && queued < Self.fullBatch {
                    // Every event loop asleep: nothing more is coming before this commit.
                    if let feeders, !feeders.anyRunning() { break }
                    usleep(Self.commitDelayStep)
                    waited += Self.commitDelayStep
                    let now = queue.withLock { $0.count }
                    if now == queued { break }
                    queued = now
                }
            }
            // The queue and this list trade buffers: no copy, and no allocation once both have grown.
            jobs.removeAll()
            queue.withLock { swap(&$0, &jobs) }
            lastBatch = jobs.count
            var stop: CheckedContinuation<Void, Never>?
            if !jobs.isEmpty {
                let writes = jobs.messages > 0 || jobs.others.contains { if case .barrier = $0.job { false } else { true } }
                let tracksRooms = retention.maxPerRoom != nil
                let result: Result<(claims: [[LoggedMessage]], rooms: Set<String>), any Error> =
                    writes ? Result { try pool.write { db in try Self.perform(jobs, db, trackRooms: tracksRooms, arena: arena, batch: batch) } } : .success(([], []))
                if case .success(let done) = result { touchedRooms.formUnion(done.rooms) }
                if writes { transactions.add(1, ordering: .relaxed) }
                let committed = (try? result.get()) != nil
                func hand(_ work: any CommittedWork, reads: ColdReads?, to publisher: PublishQueue?) {
                    guard let publisher else { return work.run(committed: committed) }
                    handover.add(work, reads: reads ?? ColdReads.of(work), for: publisher)
                }
                var claimIndex = 0
                jobs.forEach { entry, reads in
                    hand(entry, reads: reads, to: entry.publisher)
                } direct: { append in
                    hand(append, reads: nil, to: append.publisher)
                } other: { job in
                    switch job {
                    case .markPending:
                        break
                    case .barrier(let body):
                        // Everything before the barrier is handed over before it runs.
                        handover.handOver(committed: committed)
                        body()
                    case .claim(_, let continuation):
                        switch result {
                        case .success(let done): continuation.resume(returning: done.claims[claimIndex])
                        case .failure(let error): continuation.resume(throwing: error)
                        }
                        claimIndex += 1
                    case .stop(let continuation):
                        stop = continuation
                    }
                }
                handover.handOver(committed: committed)
                if case .success = result { messagesStored.add(jobs.messages, ordering: .relaxed) }
            }
            if let stop {
                stop.resume()
                return
            }
            if ContinuousClock.now - lastPrune >= retention.interval {
                lastPrune = .now
                let rooms = touchedRooms
                touchedRooms = []
                if let pruned = try? prune(rooms: rooms, now: Date()) { messagesPruned.add(pruned, ordering: .relaxed) }
            }
        }
    }

    /// One transaction for a batch of jobs; returns what each claim took, in order, and, when
    /// `trackRooms`, the rooms written to (for pruning by count).
    private static func perform(_ jobs: Queued, _ db: Database, trackRooms: Bool, arena: TextArena, batch: RoomChunkBatch) throws -> (claims: [[LoggedMessage]], rooms: Set<String>) {
        batch.clear()
        var claims: [[LoggedMessage]] = []
        var rooms: Set<String> = []
        // Direct messages in a row are inserted together; an update or a claim after them sees them
        // stored. Room messages (which marks and claims never touch) go in at the end, a chunk per room.
        var run: [Append] = []
        func insertRun() throws {
            try Self.insert(run, db, arena: arena)
            run.removeAll(keepingCapacity: true)
        }
        try jobs.forEach { entry, _ in
            batch.add(entry.message)
        } direct: { append in
            run.append(append)
        } other: { job in
            switch job {
            case .markPending(let serial, let account):
                try insertRun()
                try db.execute(sql: "UPDATE message SET pendingFor = ? WHERE id = ?", arguments: [account, Int64(bitPattern: serial)])
            case .claim(let account, _):
                try insertRun()
                let rows = try Row.fetchAll(db, sql: "SELECT * FROM message WHERE pendingFor = ? ORDER BY time, id", arguments: [account])
                try db.execute(sql: "UPDATE message SET pendingFor = NULL WHERE pendingFor = ?", arguments: [account])
                claims.append(rows.compactMap(Self.message))
            case .stop, .barrier:
                break
            }
        }
        try insertRun()
        try batch.insert(db) { room in if trackRooms { rooms.insert(room) } }
        return (claims, rooms)
    }

    static let columnsPerRow: Int32 = 12
    /// The largest number of rows one INSERT carries. Each statement costs a fixed part (its setup
    /// and its end, `sqlite3VdbeHalt`, a quarter of a one-row insert in the writer's profile) that
    /// several rows share.
    static let maxRowsPerInsert = 32
    /// `INSERT ... VALUES (...)` for 1, 2, 4, ... `maxRowsPerInsert` rows, made once; the statement
    /// for `rows` (a power of two) is at `rows.trailingZeroBitCount`.
    static let insertSQL: [String] = {
        let row = "(" + Array(repeating: "?", count: Int(columnsPerRow)).joined(separator: ", ") + ")"
        return (0...maxRowsPerInsert.trailingZeroBitCount).map { power in
            """
            INSERT INTO message (id, target, time, kind, sender, senderUser, senderHost, senderAccount, recipient, text, tags, pendingFor)
            VALUES \(Array(repeating: row, count: 1 << power).joined(separator: ", "))
            """
        }
    }()

    /// Inserts direct `messages` in order, a row each, as few statements as the sizes allow (32 + 8 +
    /// 2 for 42).
    private static func insert(_ messages: [Append], _ db: Database, arena: TextArena) throws {
        var start = 0
        while start < messages.count {
            var rows = maxRowsPerInsert
            while rows > messages.count - start { rows /= 2 }
            let handle = try db.cachedStatement(sql: insertSQL[rows.trailingZeroBitCount]).sqliteStatement
            sqlite3_reset(handle)
            arena.reset()
            for row in 0..<rows {
                bind(messages[start + row].message, from: Int32(row) * columnsPerRow + 1, handle, arena)
            }
            let code = sqlite3_step(handle)
            // The statement stays cached: it must not keep pointers into the arena, reused by the next.
            sqlite3_clear_bindings(handle)
            guard code == SQLITE_DONE else {
                throw DatabaseError(resultCode: ResultCode(rawValue: code), message: String(cString: sqlite3_errmsg(sqlite3_db_handle(handle))))
            }
            start += rows
        }
    }

    /// Binds one message's columns, from parameter `first` on, straight to SQLite: this runs once per
    /// message on the one writer thread, and GRDB's `StatementArguments` (an array of existentials
    /// per row) cost more than the insert itself.
    private static func bind(_ logged: LoggedMessage, from first: Int32, _ handle: OpaquePointer, _ arena: TextArena) {
        let (serial, target, time, kind, sender, recipient, text, tags, pendingFor): (UInt64, String, Date, MessageKind, Speaker, String, String, [MessageTag], String?)
        switch logged {
        case .room(let message):
            (serial, target, time, kind, sender, recipient, text, tags, pendingFor) =
                (message.serial, NameRules.key(message.room), message.time, message.kind, message.sender, message.room, message.text, message.tags, nil)
        case .direct(let message, let conversation, let pending):
            (serial, target, time, kind, sender, recipient, text, tags, pendingFor) =
                (message.serial, conversation, message.time, message.kind, message.from, message.to, message.text, message.tags, pending)
        }
        sqlite3_bind_int64(handle, first, Int64(bitPattern: serial))
        bind(target, first + 1, handle, arena)
        sqlite3_bind_int64(handle, first + 2, Milliseconds.from(time))
        sqlite3_bind_int64(handle, first + 3, Int64(kindCode(kind)))
        bind(sender.name, first + 4, handle, arena)
        bind(sender.user, first + 5, handle, arena)
        bind(sender.host, first + 6, handle, arena)
        bind(sender.account, first + 7, handle, arena)
        bind(recipient, first + 8, handle, arena)
        bind(text, first + 9, handle, arena)
        bind(TagCoding.encode(tags), first + 10, handle, arena)
        bind(pendingFor, first + 11, handle, arena)
    }

    /// Binds `text` (nil: NULL) to parameter `index` from a copy in `arena`, which SQLite reads in
    /// place (SQLITE_STATIC) until the statement has run.
    private static func bind(_ text: String?, _ index: Int32, _ handle: OpaquePointer, _ arena: TextArena) {
        guard let text else {
            sqlite3_bind_null(handle, index)
            return
        }
        let copy = text.utf8.withContiguousStorageIfAvailable { arena.copy(UnsafeRawBufferPointer($0)) }
            ?? Array(text.utf8).withUnsafeBytes { arena.copy($0) }
        _ = sqlite3_bind_text(handle, index, copy.assumingMemoryBound(to: CChar.self), Int32(text.utf8.count), nil)
    }

    // MARK: Pruning

    /// Deletes messages past the retention period, and the oldest messages of `rooms` beyond the
    /// per-room limit; returns how many went. Runs on the writer thread, in slices, so that messages
    /// waiting to be stored are not held up long.
    func prune(rooms: Set<String>, now: Date) throws -> Int {
        var deleted = 0
        if let maxAge = retention.maxAge {
            let cutoff = Milliseconds.from(now) - Int64(maxAge.components.seconds) * 1000 - maxAge.components.attoseconds / 1_000_000_000_000_000
            while true {
                let count = try pool.write { db in
                    try db.execute(sql: "DELETE FROM message WHERE id IN (SELECT id FROM message WHERE time < ? ORDER BY id LIMIT 5000)", arguments: [cutoff])
                    return db.changesCount
                }
                deleted += count
                if count < 5000 { break }
            }
            // Chunks that started before the cutoff: wholly older ones go, the others lose their older
            // part. Walked in (firstTime, id) order from where the last slice ended, so a chunk left in
            // place (a damaged body) is not visited again.
            var from: (firstTime: Int64, id: Int64) = (.min, .min)
            while true {
                let (count, chunks) = try pool.write { db in
                    let old = try Row.fetchAll(db, sql: """
                        SELECT id, firstTime, lastTime, count FROM chunk WHERE firstTime < ? AND (firstTime, id) > (?, ?)
                        ORDER BY firstTime, id LIMIT 500
                        """, arguments: [cutoff, from.firstTime, from.id])
                    if let last = old.last { from = (last["firstTime"], last["id"]) }
                    var count = 0
                    for chunk in old {
                        let lastTime: Int64 = chunk["lastTime"]
                        if lastTime < cutoff {
                            try db.execute(sql: "DELETE FROM chunk WHERE id = ?", arguments: [chunk["id"] as Int64])
                            count += chunk["count"] as Int
                        } else {
                            count += try RoomChunks.trim(db, id: chunk["id"]) { messages in
                                messages.drop { Milliseconds.from($0.time) < cutoff }
                            }
                        }
                    }
                    return (count, old.count)
                }
                deleted += count
                if chunks < 500 { break }
            }
        }
        if let maxPerRoom = retention.maxPerRoom {
            for room in rooms.sorted() {
                deleted += try pool.write { db in
                    // Newest first, the chunk that reaches the limit keeps its newest part; older ones go.
                    let chunks = try Row.fetchCursor(db, sql: "SELECT id, lastTime, count FROM chunk WHERE target = ? ORDER BY lastTime DESC, id DESC", arguments: [room])
                    var kept = 0
                    var boundary: (id: Int64, lastTime: Int64, keep: Int)?
                    while let chunk = try chunks.next() {
                        let count: Int = chunk["count"]
                        if kept + count >= maxPerRoom {
                            boundary = (chunk["id"], chunk["lastTime"], maxPerRoom - kept)
                            break
                        }
                        kept += count
                    }
                    guard let boundary, maxPerRoom > 0 else { return 0 }
                    let older: StatementArguments = [room, boundary.lastTime, boundary.id]
                    var count = try Int.fetchOne(db, sql: "SELECT SUM(count) FROM chunk WHERE target = ? AND (lastTime, id) < (?, ?)", arguments: older) ?? 0
                    try db.execute(sql: "DELETE FROM chunk WHERE target = ? AND (lastTime, id) < (?, ?)", arguments: older)
                    count += try RoomChunks.trim(db, id: boundary.id) { messages in messages.suffix(boundary.keep) }
                    return count
                }
            }
        }
        return deleted
    }

    // MARK: Reading (GRDB's reader threads)

    public func messages(target: String, in range: HistoryRange) async throws -> [LoggedMessage] {
        guard Self.isConversation(target) else {
            return try await pool.read { db in try RoomChunks.messages(db, target: target, in: range).map(LoggedMessage.room) }
        }
        var conditions = ["target = ?"]
        var values: [DatabaseValue] = [target.databaseValue]
        if let after = range.after {
            conditions.append("(time, id) > (?, ?)")
            values += [after.timeMs.databaseValue, Int64(clamping: after.id).databaseValue]
        }
        if let before = range.before {
            conditions.append("(time, id) < (?, ?)")
            values += [before.timeMs.databaseValue, Int64(clamping: before.id).databaseValue]
        }
        let order = range.newestFirst ? "DESC" : "ASC"
        let sql = "SELECT * FROM message WHERE \(conditions.joined(separator: " AND ")) ORDER BY time \(order), id \(order) LIMIT \(max(0, range.limit))"
        let messages = try await pool.read { [values] db in
            try Row.fetchAll(db, sql: sql, arguments: StatementArguments(values)).compactMap(Self.message)
        }
        return range.newestFirst ? messages.reversed() : messages
    }

    public func message(serial: UInt64, in target: String) async throws -> LoggedMessage? {
        try await pool.read { db in
            guard Self.isConversation(target) else { return try RoomChunks.message(db, serial: serial, target: target).map(LoggedMessage.room) }
            guard let row = try Row.fetchOne(db, sql: "SELECT * FROM message WHERE id = ? AND target = ?", arguments: [Int64(clamping: serial), target]) else { return nil }
            return Self.message(row)
        }
    }

    /// Direct conversations (`@a b`) are stored a row per message; everything else is a room's, in chunks.
    static func isConversation(_ target: String) -> Bool { target.hasPrefix("@") }

    public func activeTargets(rooms: [String], conversationsOf participant: String?, from: Date, to: Date, limit: Int) async throws -> [(target: String, latest: Date)] {
        let (low, high) = (Milliseconds.from(from), Milliseconds.from(to))
        let found: [(String, Int64)] = try await pool.read { db in
            var latest: [(String, Int64)] = []
            for room in rooms {
                if let time = try Int64.fetchOne(db, sql: "SELECT MAX(lastTime) FROM chunk WHERE target = ?", arguments: [room]) {
                    latest.append((room, time))
                }
            }
            if let participant {
                // Conversation keys are `@a b` with the two parties sorted: a range of the index for the
                // conversations where it comes first, and a scan of the direct messages for the others.
                let rows = try Row.fetchAll(db, sql: """
                    SELECT target, MAX(time) AS latest FROM message
                    WHERE target >= '@' AND target < 'A' AND (target LIKE ? ESCAPE '\\' OR target LIKE ? ESCAPE '\\')
                    GROUP BY target
                    """, arguments: ["@" + Self.escapeLike(participant) + " %", "@% " + Self.escapeLike(participant)])
                for row in rows { latest.append((row["target"], row["latest"])) }
            }
            return latest
        }
        // Only a target's latest message counts: a target whose latest message is outside the window is left out.
        return found.filter { $0.1 > low && $0.1 < high }
            .sorted { ($0.1, $0.0) < ($1.1, $1.0) }
            .prefix(max(0, limit))
            .map { ($0.0, Milliseconds.date($0.1)) }
    }

    /// The newest `perRoom` messages of every room, oldest first, for replay after a restart; and the
    /// next serial and the latest time, so that ids and times carry on increasing.
    public func resume(perRoom: Int) throws -> (nextSerial: UInt64, lastTimeMs: Int64, recent: [RoomMessage]) {
        try pool.read { db in
            let maxID = max(try Int64.fetchOne(db, sql: "SELECT MAX(id) FROM message") ?? 0,
                            try Int64.fetchOne(db, sql: "SELECT MAX(id) FROM chunk") ?? 0)
            let maxTime = max(try Int64.fetchOne(db, sql: "SELECT MAX(time) FROM message") ?? 0,
                              try Int64.fetchOne(db, sql: "SELECT MAX(lastTime) FROM chunk") ?? 0)
            var recent: [RoomMessage] = []
            var previous = ""
            while perRoom > 0, let room = try String.fetchOne(db, sql: "SELECT MIN(target) FROM chunk WHERE target > ?", arguments: [previous]) {
                previous = room
                recent += try RoomChunks.messages(db, target: room, in: HistoryRange(limit: perRoom, newestFirst: true))
            }
            return (UInt64(max(0, maxID)) + 1, maxTime, recent)
        }
    }

    // MARK: Rows

    /// Chunk bodies keep a kind in two bits (`RoomChunks.Flag.kindMask`): a fifth kind needs a new
    /// body format.
    static func kindCode(_ kind: MessageKind) -> Int {
        switch kind {
        case .say: return 0
        case .action: return 1
        case .notice: return 2
        case .tagOnly: return 3
        }
    }

    static func kind(_ code: Int) -> MessageKind {
        [MessageKind.say, .action, .notice, .tagOnly][max(0, min(3, code))]
    }

    static func message(_ row: Row) -> LoggedMessage? {
        let target: String = row["target"]
        let serial = UInt64(bitPattern: row["id"] as Int64)
        let time = Milliseconds.date(row["time"])
        let sender = Speaker(name: row["sender"], user: row["senderUser"], host: row["senderHost"], account: row["senderAccount"])
        let tags = TagCoding.decode(row["tags"])
        let kind = kind(row["kind"])
        if target.hasPrefix("#") {
            return .room(RoomMessage(room: row["recipient"], sender: sender, text: row["text"], kind: kind, sequence: 0,
                                     time: time, serial: serial, tags: tags))
        }
        let pendingFor: String? = row["pendingFor"]
        return .direct(DirectMessage(from: sender, to: row["recipient"], text: row["text"], kind: kind, echo: false,
                                     time: time, serial: serial, tags: tags),
                       conversation: target, pendingFor: pendingFor)
    }

    static func escapeLike(_ text: String) -> String {
        text.replacingOccurrences(of: "\\", with: "\\\\").replacingOccurrences(of: "%", with: "\\%").replacingOccurrences(of: "_", with: "\\_")
    }
}

/// A transaction's committed work gathered per publishing queue, so that each queue (one per event
/// loop) gets one submission a transaction, with the first reads the loop took as it queued each room
/// entry. Used by the writer thread alone, and kept across transactions so that its arrays keep their
/// storage: gathered afresh, with a dictionary from queue to group, the hand-over was a quarter of the
/// writer's thread (hashing, dynamic exclusivity checks on captured variables, arrays regrown).
final class Handover {
    // @exclusivity(unchecked): no run-time exclusivity check per message. Only the writer's thread
    // uses a handover, and no access is held across a call that could reach it again (`submit` is
    // given copies of the arrays, which are emptied only after it returns).
    @exclusivity(unchecked) private var groups: [(publisher: PublishQueue, works: [any CommittedWork], reads: [ColdReads])] = []
    /// Groups in use this transaction (`groups` beyond it keep their storage for later ones).
    @exclusivity(unchecked) private var used = 0
    /// The group the last work went to: consecutive works mostly share a queue.
    @exclusivity(unchecked) private var last = 0

    func add(_ work: any CommittedWork, reads: ColdReads, for publisher: PublishQueue) {
        if last >= used || groups[last].publisher !== publisher {
            // A few queues (one per event loop): a look along them beats hashing.
            last = (0..<used).first { groups[$0].publisher === publisher } ?? open(for: publisher)
        }
        groups[last].works.append(work)
        groups[last].reads.append(reads)
    }

    private func open(for publisher: PublishQueue) -> Int {
        if used == groups.count {
            groups.append((publisher, [], []))
        } else {
            groups[used].publisher = publisher
        }
        used += 1
        return used - 1
    }

    /// Submits each queue's works, in the order they were added, then empties the groups.
    func handOver(committed: Bool) {
        for index in 0..<used {
            groups[index].publisher.submit(groups[index].works, firstReads: groups[index].reads, committed: committed)
            groups[index].works.removeAll(keepingCapacity: true)
            groups[index].reads.removeAll(keepingCapacity: true)
        }
        used = 0
        last = 0
    }
}

/// The bytes of the texts bound to one INSERT, kept until it has run. SQLite is told not to copy
/// them (SQLITE_STATIC): its own copy was a malloc, a copy and a free per text, eight texts a message,
/// on the writer's thread that shares the server's core. Used by the writer thread alone.
final class TextArena {
    /// Chunks are kept across statements; a statement of 32 chat lines fits in the first.
    private var chunks: [(start: UnsafeMutableRawPointer, size: Int)] = []
    private var current = 0
    private var used = 0
    static let chunkSize = 64 << 10

    /// Makes every byte reusable: the statement that read them has run.
    func reset() {
        current = 0
        used = 0
    }

    /// Copies `bytes` and returns where the copy is; it stays there until `reset`.
    func copy(_ bytes: UnsafeRawBufferPointer) -> UnsafeRawPointer {
        while current < chunks.count && chunks[current].size - used < bytes.count {
            current += 1
            used = 0
        }
        if current == chunks.count {
            let size = max(Self.chunkSize, bytes.count)
            chunks.append((.allocate(byteCount: size, alignment: 1), size))
        }
        let destination = chunks[current].start + used
        if let source = bytes.baseAddress { destination.copyMemory(from: source, byteCount: bytes.count) }
        used += bytes.count
        return UnsafeRawPointer(destination)
    }

    deinit {
        for chunk in chunks { chunk.start.deallocate() }
    }
}

/// Client tags in one column: `key=value;key` with `\\` and `\:` escapes in values (IRCv3's own).
enum TagCoding {
    static func encode(_ tags: [MessageTag]) -> String? {
        guard !tags.isEmpty else { return nil }
        return tags.map { tag in
            guard let value = tag.value else { return tag.key }
            return tag.key + "=" + value.replacingOccurrences(of: "\\", with: "\\\\").replacingOccurrences(of: ";", with: "\\:")
        }.joined(separator: ";")
    }

    static func decode(_ text: String?) -> [MessageTag] {
        guard let text, !text.isEmpty else { return [] }
        return text.split(separator: ";").map { item in
            guard let equals = item.firstIndex(of: "=") else { return MessageTag(String(item), nil) }
            var value = ""
            var escaped = false
            for character in item[item.index(after: equals)...] {
                if escaped {
                    value.append(character == ":" ? ";" : character)
                    escaped = false
                } else if character == "\\" {
                    escaped = true
                } else {
                    value.append(character)
                }
            }
            return MessageTag(String(item[..<equals]), value)
        }
    }
}

/// Puts the calling thread in Linux's SCHED_BATCH class: woken, it does not preempt the thread that
/// woke it, so an event loop that hands the writer its first message finishes its turn (and hands
/// over the rest) first. On a shared core this gave rooms 926, 885, 1,061k deliveries/s against 694,
/// 975, 813k, and fan-out to 100 5% more. With a core to itself it still runs as soon as it is woken.
func preferNotToPreempt() {
    #if os(Linux)
    var parameters = sched_param()
    parameters.sched_priority = 0
    // SCHED_BATCH is 3 (<linux/sched.h>; glibc defines it only with _GNU_SOURCE, which Swift's
    // Glibc module does not import). Failure (it cannot fail for an unprivileged thread) is harmless.
    _ = sched_setscheduler(0, 3, &parameters)
    #endif
}

/// Names the calling thread as `top -H`, `perf` and /proc show it (15 characters at most). Foundation's
/// `Thread.name` does not reach the kernel on Linux.
func nameThisThread(_ name: String) {
    #if os(Linux)
    try? name.write(toFile: "/proc/thread-self/comm", atomically: false, encoding: .utf8)
    #endif
}
