import CMemoryHints
import Foundation
import NIOCore
import Synchronization

/// Message ids and timestamps. Every message gets a serial number (its id, global and increasing) and a
/// millisecond timestamp that never goes backwards, taken together, so history ordered by time then id
/// is the order in which messages were accepted. The IRC `msgid` is the serial in base 36.
public enum MessageID {
    public static func string(_ serial: UInt64) -> String { String(serial, radix: 36) }
    public static func serial(_ string: String) -> UInt64? { UInt64(string, radix: 36) }
}

/// A position in a target's history: messages are ordered by (time, id).
public struct HistoryCursor: Sendable, Equatable, Comparable {
    public var timeMs: Int64
    public var id: UInt64

    public init(timeMs: Int64, id: UInt64) {
        self.timeMs = timeMs
        self.id = id
    }

    /// Just before every message of that millisecond (a `timestamp=` reference used as a lower bound
    /// excludes nothing of it; as an upper bound, all of it).
    public static func before(_ date: Date) -> HistoryCursor { HistoryCursor(timeMs: Milliseconds.from(date), id: 0) }
    /// Just after every message of that millisecond.
    public static func after(_ date: Date) -> HistoryCursor { HistoryCursor(timeMs: Milliseconds.from(date), id: UInt64(Int64.max)) }

    public static func < (a: HistoryCursor, b: HistoryCursor) -> Bool { (a.timeMs, a.id) < (b.timeMs, b.id) }
}

/// Timestamps travel as whole milliseconds, so a message's time reads the same live, from history and
/// in a reference a client sends back.
public enum Milliseconds {
    public static func from(_ date: Date) -> Int64 { Int64((date.timeIntervalSince1970 * 1000).rounded()) }
    public static func date(_ ms: Int64) -> Date { Date(timeIntervalSince1970: Double(ms) / 1000) }

    /// ISO 8601 in UTC with milliseconds (`2026-12-01T15:19:19.123Z`), exact for whole milliseconds.
    public static func iso8601(_ date: Date) -> String {
        let ms = from(date)
        let seconds = Int(ms.quotientAndRemainder(dividingBy: 1000).quotient - (ms < 0 && ms % 1000 != 0 ? 1 : 0))
        let fraction = Int(ms - Int64(seconds) * 1000)
        var calendar = Calendar(identifier: .gregorian)
        calendar.timeZone = TimeZone(identifier: "UTC") ?? .current
        let parts = calendar.dateComponents([.year, .month, .day, .hour, .minute, .second],
                                            from: Date(timeIntervalSince1970: TimeInterval(seconds)))
        func pad(_ value: Int?, _ width: Int) -> String {
            let text = String(value ?? 0)
            return String(repeating: "0", count: max(0, width - text.count)) + text
        }
        return "\(pad(parts.year, 4))-\(pad(parts.month, 2))-\(pad(parts.day, 2))T\(pad(parts.hour, 2)):\(pad(parts.minute, 2)):\(pad(parts.second, 2)).\(pad(fraction, 3))Z"
    }

    /// Parses `YYYY-MM-DDThh:mm:ss[.sss]Z` (what `iso8601` writes and IRC clients send).
    public static func parse(_ text: String) -> Date? {
        let scalars = Array(text.utf8)
        guard scalars.count >= 20, scalars.last == UInt8(ascii: "Z") else { return nil }
        func number(_ range: Range<Int>) -> Int? {
            guard range.upperBound <= scalars.count else { return nil }
            var value = 0
            for byte in scalars[range] {
                guard (48...57).contains(byte) else { return nil }
                value = value * 10 + Int(byte - 48)
            }
            return value
        }
        guard let year = number(0..<4), scalars[4] == UInt8(ascii: "-"), let month = number(5..<7),
              scalars[7] == UInt8(ascii: "-"), let day = number(8..<10), scalars[10] == UInt8(ascii: "T"),
              let hour = number(11..<13), scalars[13] == UInt8(ascii: ":"), let minute = number(14..<16),
              scalars[16] == UInt8(ascii: ":"), let second = number(17..<19) else { return nil }
        var milliseconds = 0
        if scalars[19] == UInt8(ascii: ".") {
            let digits = scalars[20..<(scalars.count - 1)]
            guard !digits.isEmpty, digits.count <= 9, let fraction = number(20..<(scalars.count - 1)) else { return nil }
            milliseconds = digits.count >= 3 ? fraction / Int(pow(10.0, Double(digits.count - 3)))
                                             : fraction * Int(pow(10.0, Double(3 - digits.count)))
        } else if scalars.count != 20 {
            return nil
        }
        var calendar = Calendar(identifier: .gregorian)
        calendar.timeZone = TimeZone(identifier: "UTC") ?? .current
        guard (1...12).contains(month), (1...31).contains(day), hour < 24, minute < 60, second < 61,
              let base = calendar.date(from: DateComponents(year: year, month: month, day: day, hour: hour, minute: minute, second: second))
        else { return nil }
        return Milliseconds.date(Milliseconds.from(base) + Int64(milliseconds))
    }
}

/// Hands out (serial, time) pairs: serials increase by one, times never go backwards, both under one
/// short lock so that their orders agree.
final class MessageStamper: Sendable {
    private let state: Mutex<(serial: UInt64, lastMs: Int64)>

    init(firstSerial: UInt64, lastTimeMs: Int64) {
        state = Mutex((firstSerial, lastTimeMs))
    }

    func next() -> (serial: UInt64, time: Date) {
        let now = Milliseconds.from(Date())
        let (serial, ms) = state.withLock { state in
            state.lastMs = max(state.lastMs, now)
            defer { state.serial += 1 }
            return (state.serial, state.lastMs)
        }
        return (serial, Milliseconds.date(ms))
    }
}

/// What the history keeps of one message.
public enum LoggedMessage: Sendable, Equatable {
    case room(RoomMessage)
    /// `conversation`: the key both participants' history is found under; `pendingFor`: the account
    /// key of an offline recipient that has yet to be handed it.
    case direct(DirectMessage, conversation: String, pendingFor: String?)

    public var serial: UInt64 {
        switch self {
        case .room(let message): return message.serial
        case .direct(let message, _, _): return message.serial
        }
    }

    public var time: Date {
        switch self {
        case .room(let message): return message.time
        case .direct(let message, _, _): return message.time
        }
    }

    public var cursor: HistoryCursor { HistoryCursor(timeMs: Milliseconds.from(time), id: serial) }
}

/// Which part of a target's history to read; results always come oldest first.
public struct HistoryRange: Sendable, Equatable {
    /// Exclusive bounds; nil: unbounded.
    public var after: HistoryCursor?
    public var before: HistoryCursor?
    public var limit: Int
    /// Take the `limit` messages nearest `before` (true) or nearest `after` (false).
    public var newestFirst: Bool

    public init(after: HistoryCursor? = nil, before: HistoryCursor? = nil, limit: Int, newestFirst: Bool) {
        self.after = after
        self.before = before
        self.limit = limit
        self.newestFirst = newestFirst
    }
}

/// The durable history: a single writer stores messages in order, many at a time (group commit), and
/// reports each once its transaction has committed; only then does the hub publish it. The hub sees
/// only this protocol; SQLite is one implementation.
public protocol MessageLog: Sendable {
    /// Queues a message. `committed` runs once the transaction that holds it has committed (true) or
    /// failed (false): on `publisher` when given (the callbacks of one transaction for one publisher in
    /// one task), on the log's writer thread otherwise. Room messages are reported in the order they
    /// were queued, direct messages too, and both after the marks, claims and barriers queued before
    /// them; a room message and a direct message queued between the same two of those may be reported
    /// in either order (they never share a target).
    func append(_ message: LoggedMessage, publisher: PublishQueue?, committed: @escaping @Sendable (Bool) -> Void)
    /// Queues a room message that is its own callback: `entry.run` runs once the transaction that
    /// holds it has ended, on `entry.publisher` (or the writer thread without one), in queue order.
    func append(_ entry: any RoomLogEntry)
    /// Marks a stored direct message as waiting for `account` (its recipients went away before it
    /// could be handed to them).
    func markPending(serial: UInt64, account: String)
    /// Takes every message waiting for `account`, oldest first; they are not handed out again. Runs
    /// after every message queued before it.
    func claimPending(account: String) async throws -> [LoggedMessage]
    /// Messages of one target (a room key or a conversation key), oldest first.
    func messages(target: String, in range: HistoryRange) async throws -> [LoggedMessage]
    /// A message of one target by serial; nil if that target has no such message.
    func message(serial: UInt64, in target: String) async throws -> LoggedMessage?
    /// Of the given room keys and the conversations of `participant` (nil: none), those with messages
    /// between two times, with their latest message's time in that window, oldest first.
    func activeTargets(rooms: [String], conversationsOf participant: String?, from: Date, to: Date, limit: Int) async throws -> [(target: String, latest: Date)]
}

/// History settings the hub applies.
public struct HistoryConfig: Sendable {
    /// Messages replayed to a session that joins a room (0: none).
    public var replayOnJoin: Int
    /// Messages kept per room, and how long messages are kept (nil: no limit); the log prunes.
    public var maxPerRoom: Int?
    public var maxAge: Duration?

    public init(replayOnJoin: Int = 20, maxPerRoom: Int? = nil, maxAge: Duration? = nil) {
        self.replayOnJoin = replayOnJoin
        self.maxPerRoom = maxPerRoom
        self.maxAge = maxAge
    }
}

/// A room's most recent published messages, kept for replay on join, and the queue its messages are
/// published from. It outlives the room object (a room that empties is forgotten, its history is not).
final class RecentMessages: Sendable {
    private let capacity: Int
    /// A ring: once full, `oldest` is where the next message goes.
    private let state = Mutex<(messages: [RoomMessage], oldest: Int)>(([], 0))
    /// Where the room's committed messages are fanned out, in order; nil: on the log's thread.
    let publisher: PublishQueue?

    init(capacity: Int, initial: [RoomMessage] = [], publisher: PublishQueue? = nil) {
        self.capacity = capacity
        self.publisher = publisher
        state.withLock { $0.messages = Array(initial.suffix(capacity)) }
    }

    func append(_ message: RoomMessage) {
        guard capacity > 0 else { return }
        state.withLock { ring in
            if ring.messages.count < capacity {
                ring.messages.append(message)
            } else {
                ring.messages[ring.oldest] = message
                ring.oldest = (ring.oldest + 1) % capacity
            }
        }
    }

    /// The newest messages, oldest first, not older than `notBefore`.
    func snapshot(notBefore: Date?) -> [RoomMessage] {
        let all = state.withLock { ring in Array(ring.messages[ring.oldest...] + ring.messages[..<ring.oldest]) }
        guard let notBefore else { return all }
        return all.filter { $0.time >= notBefore }
    }
}

/// What a publisher runs for one message once the transaction that holds it has ended: a log's own
/// record of the message, which knows whom to tell. An object, so that queues of them hold references.
public protocol CommittedWork: AnyObject, Sendable {
    /// The room (its name) whose message this is: a publisher keeps each room's works in order.
    var room: String { get }
    func run(committed: Bool)
    /// What `run` reads first besides the work itself (its message, the message's text), for the
    /// publisher to ask the cache for while it runs the work before (`ColdReads`).
    var firstReads: ColdReads { get }
}

extension CommittedWork {
    public var firstReads: ColdReads { ColdReads() }
}

/// Up to six places in memory a piece of work reads first, to be fetched into the cache ahead of
/// it. A message waits in the publishing queue behind the thousands in flight (about 100 ms in the
/// rooms benchmark), so its objects are out of the cache when it is published, and each first read
/// waited for memory: a fifth of the loop's time in rooms went to the first touches (retains) of the
/// queue's item, the message, its text and the sender's callback. Fetched while the item before it
/// runs (microseconds), they are there when it starts. Bit patterns, not pointers: only hints, never
/// dereferenced here, and a hint to a stale address costs nothing but the fetch.
public struct ColdReads: Sendable {
    private var reads: (UInt, UInt, UInt, UInt, UInt, UInt) = (0, 0, 0, 0, 0, 0)
    private var count = 0

    public init() {}

    /// An object's first cache lines (where its header and first fields are).
    public mutating func add(_ object: AnyObject) {
        add(UInt(bitPattern: Unmanaged.passUnretained(object).toOpaque()))
    }

    /// A string's bytes and the header of its storage, when it has storage of its own (a string of
    /// up to 15 UTF-8 bytes is kept inline, in whatever holds it).
    public mutating func add(storageOf text: String) {
        guard text.utf8.count > 15,
              let bytes = text.utf8.withContiguousStorageIfAvailable({ UInt(bitPattern: $0.baseAddress) }) else { return }
        // A native string's bytes follow its storage object's 32-byte header.
        add(bytes &- 32)
    }

    /// What a room message's callback captured: the second word of a closure value is its context
    /// object. Read from a struct that holds the closure, since a closure handed to a generic function
    /// (`withUnsafeBytes(of:)`) would come wrapped in a thunk with a context of its own. Nothing checks
    /// the layout, so a closure laid out otherwise gives a useless hint, never a wrong read.
    public mutating func add(contextOf handler: @escaping PublishedHandler<RoomMessage>) {
        struct Held { let handler: PublishedHandler<RoomMessage> }
        let context = withUnsafeBytes(of: Held(handler: handler)) { raw in
            raw.count == 2 * MemoryLayout<UInt>.size ? raw.load(fromByteOffset: MemoryLayout<UInt>.size, as: UInt.self) : 0
        }
        if context != 0 { add(context) }
    }

    private mutating func add(_ address: UInt) {
        switch count {
        case 0: reads.0 = address
        case 1: reads.1 = address
        case 2: reads.2 = address
        case 3: reads.3 = address
        case 4: reads.4 = address
        case 5: reads.5 = address
        default: return
        }
        count += 1
    }

    /// The work object itself, then its first reads.
    public static func of(_ work: any CommittedWork) -> ColdReads {
        var reads = ColdReads()
        reads.add(work)
        let more = work.firstReads
        if more.count > 0 { reads.add(more.reads.0) }
        if more.count > 1 { reads.add(more.reads.1) }
        if more.count > 2 { reads.add(more.reads.2) }
        if more.count > 3 { reads.add(more.reads.3) }
        if more.count > 4 { reads.add(more.reads.4) }
        return reads
    }

    /// The places, in the order they were added (tests).
    var addresses: [UInt] {
        Array([reads.0, reads.1, reads.2, reads.3, reads.4, reads.5].prefix(count))
    }

    /// Starts fetching the first three places only, and returns at once: what the log's writer reads
    /// (an entry made by `of`, its message and its text), not what the publisher reads of the sender.
    public func prefetchFirstThree() {
        parley_prefetch(reads.0, 3)
        parley_prefetch(reads.1, 3)
        parley_prefetch(reads.2, 3)
    }

    /// Starts the fetches (three cache lines from each place) and returns at once.
    public func prefetch() {
        parley_prefetch(reads.0, 3)
        parley_prefetch(reads.1, 3)
        parley_prefetch(reads.2, 3)
        parley_prefetch(reads.3, 3)
        parley_prefetch(reads.4, 3)
        parley_prefetch(reads.5, 3)
    }
}

/// A room message as the log keeps it until its transaction ends, and then the work its room's
/// publisher runs: one object for the log's record, the callback and the queue's item (three
/// allocations a message when they were apart, each touched again, cold, on the writer's thread).
public protocol RoomLogEntry: CommittedWork {
    var message: RoomMessage { get }
    /// Where `run` is handed once the transaction has ended; nil: on the log's writer thread.
    var publisher: PublishQueue? { get }
}

/// Runs work on one event loop, each room's in the order it was submitted, a bounded number of items
/// per loop pass. The log's writer thread hands each room's committed messages to the room's queue, so rooms
/// are fanned out on all the event loops at once while each room keeps its order.
///
/// A backlog is taken a room at a time (`RoomBacklog`), so that a pass's messages go to few members,
/// each getting several in its one write.
///
/// The bound is for the loop's other clients: one pass a turn (`NextTurn`), so a committed batch of
/// hundreds of messages to a thousand members each does not hold every PING on the loop while it is
/// fanned out.
public final class PublishQueue: Sendable {
    /// Items (a message each, usually) per pass; the rest wait until the loop has read its sockets.
    /// Each pass ends in one write per member, so more messages a pass means fewer writes a message:
    /// 64 against 16 gave 15% more deliveries in fanout with no slower PING (docs/benchmarks.md).
    static let itemsPerPass = 64
    /// Past `itemsPerPass` a pass goes on while its items averaged at least `bigRoomDeliveries` copies
    /// (messages to big rooms, whose members a longer pass reaches with no more writes) and it made
    /// fewer than `deliveriesPerPass`: with 100 members, all of 160 messages in flight in one pass.
    /// Small rooms' messages stop at 64, as each adds members to write to; a thousand members' at 64
    /// too (64,000 copies, a turn of tens of milliseconds).
    static let bigRoomDeliveries = 50
    static let deliveriesPerPass = 16_384

    let turn: NextTurn
    /// The hub's count of copies handed out, read before and during a pass. Other loops' copies
    /// count too when there are several: the rule is a guide to a pass's cost, not an exact budget.
    private let deliveries: @Sendable () -> Int
    /// A committed message's work and the outcome it is run with. The pair, not a closure that
    /// captures both: the writer hands over hundreds a commit, and a closure each was an allocation
    /// per message on its thread (and a closure kept in an array, another, to re-abstract it).
    struct Item {
        let work: any CommittedWork
        let committed: Bool
        /// The work object and its `firstReads`, read while the work is still in the cache (on the
        /// log's thread, which has just stored its message).
        let firstReads: ColdReads

        init(work: any CommittedWork, committed: Bool, firstReads: ColdReads? = nil) {
            self.work = work
            self.committed = committed
            self.firstReads = firstReads ?? ColdReads.of(work)
        }
    }

    private let state = Mutex<(items: RoomBacklog<Item>, scheduled: Bool)>((RoomBacklog(), false))

    init(turn: NextTurn, deliveries: @escaping @Sendable () -> Int = { 0 }) {
        self.turn = turn
        self.deliveries = deliveries
    }

    /// Queues `works`, each to be run with `committed` (whether their transaction committed).
    public func submit(_ works: [any CommittedWork], committed: Bool) {
        submit(works, firstReads: works.map(ColdReads.of), committed: committed)
    }

    /// The same, with each work's `ColdReads.of` taken already (the log takes them as it queues).
    public func submit(_ works: [any CommittedWork], firstReads: [ColdReads], committed: Bool) {
        enqueue { items in
            for (work, reads) in zip(works, firstReads) {
                items.append(Item(work: work, committed: committed, firstReads: reads), room: work.room)
            }
        }
    }

    /// Queues one work that has nothing to commit (no history): it runs as committed.
    func submit(_ work: any CommittedWork) {
        enqueue { $0.append(Item(work: work, committed: true), room: work.room) }
    }

    /// Adds to the backlog; the first addition to an idle queue schedules a pass.
    private func enqueue(_ add: (inout RoomBacklog<Item>) -> Void) {
        let schedule = state.withLock { state in
            add(&state.items)
            defer { state.scheduled = true }
            return !state.scheduled
        }
        if schedule { turn.loop.execute { self.drain() } }
    }

    /// Whether a pass that ran `items` items and made `copies` copies takes another.
    static func continues(items: Int, copies: Int) -> Bool {
        items < itemsPerPass || (copies >= items * bigRoomDeliveries && copies < deliveriesPerPass)
    }

    private func drain() {
        let start = deliveries()
        var ran = 0
        while let (item, next) = state.withLock({ state -> (Item, ColdReads?)? in
            guard Self.continues(items: ran, copies: deliveries() - start), let item = state.items.popFirst() else { return nil }
            return (item, state.items.firstReadsOfFirst)
        }) {
            // The next item's memory comes in while this one runs.
            next?.prefetch()
            item.work.run(committed: item.committed)
            ran += 1
        }
        let more = state.withLock { state in
            state.scheduled = !state.items.isEmpty
            return state.scheduled
        }
        // The next pass waits for the loop's next turn, so that its sockets are read in between.
        if more { turn.later { self.drain() } }
    }
}

/// Counts down from a number, from any thread.
final class ManagedCounter: Sendable {
    private let value: Atomic<Int>
    init(_ value: Int) { self.value = Atomic(value) }
    /// Returns the value after the decrement.
    func decrement() -> Int { value.subtract(1, ordering: .acquiringAndReleasing).newValue }
}

/// Items waiting per room, taken a room at a time: all of the oldest waiting room's items (as many as
/// it had when its visit began), then the next room's. Each room's items keep their order; rooms
/// interleave, as they already do between loops.
///
/// Taken in plain submission order, a backlog of many rooms' messages gave each pass a few messages
/// of many rooms: with 100 rooms of 10 over the line door, 64 messages reached 37 members, 17
/// messages a `write`. A room's waiting messages taken together go to its members in one write each.
struct RoomBacklog<Item> {
    /// Slots of rooms with items waiting, in the order they are visited; the first is being taken from.
    private var visits = CircularBuffer<Int>()
    /// The slot of each room with items waiting.
    private var slots: [String: Int] = [:]
    /// Each slot's room and items. A slot whose room has emptied keeps its buffer for the next room
    /// (`free`): a room's messages usually come one or two a burst, and a buffer allocated per burst
    /// was an allocation per message.
    private var queues: [(room: String, items: CircularBuffer<Item>)] = []
    private var free: [Int] = []
    /// Items the first room may still give in this visit, so that a room whose messages keep coming
    /// does not hold the others back.
    private var visitLeft = 0
    /// The slot the last item went to.
    private var lastAppended = 0
    private(set) var count = 0

    var isEmpty: Bool { count == 0 }

    mutating func append(_ item: Item, room: String) {
        count += 1
        // Consecutive items are mostly one room's: its slot is checked before the names are hashed.
        if lastAppended < queues.count, queues[lastAppended].room == room, !queues[lastAppended].items.isEmpty {
            queues[lastAppended].items.append(item)
            return
        }
        if let slot = slots[room] {
            queues[slot].items.append(item)
            lastAppended = slot
            return
        }
        let slot: Int
        if let reused = free.popLast() {
            slot = reused
            queues[slot].room = room
        } else {
            slot = queues.count
            queues.append((room, CircularBuffer(initialCapacity: 4)))
        }
        queues[slot].items.append(item)
        slots[room] = slot
        visits.append(slot)
        lastAppended = slot
    }

    mutating func popFirst() -> Item? {
        guard let slot = visits.first else { return nil }
        guard let item = queues[slot].items.popFirst() else {
            // Not reached: a room is visited while it has items.
            visits.removeFirst()
            visitLeft = 0
            return popFirst()
        }
        if visitLeft == 0 { visitLeft = queues[slot].items.count + 1 }
        count -= 1
        visitLeft -= 1
        if queues[slot].items.isEmpty {
            slots[queues[slot].room] = nil
            queues[slot].room = ""
            free.append(slot)
            visits.removeFirst()
            visitLeft = 0
        } else if visitLeft == 0 {
            // Its visit is over; what came meanwhile waits behind the other rooms.
            visits.removeFirst()
            visits.append(slot)
        }
        return item
    }
}

extension RoomBacklog where Item == PublishQueue.Item {
    /// The first reads of the item `popFirst` gives next, left in place (only its plain fields are
    /// read: the work object is not retained, which would be a first touch itself).
    var firstReadsOfFirst: ColdReads? {
        guard let slot = visits.first, !queues[slot].items.isEmpty else { return nil }
        return queues[slot].items[queues[slot].items.startIndex].firstReads
    }
}
