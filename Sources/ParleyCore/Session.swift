import Foundation
import NIOCore
import Synchronization

/// Turns hub events into bytes for one door. The hub renders each event once per format and hands
/// the same buffer to every recipient that uses that format ("encode once, write many").
public protocol WireFormat: AnyObject, Sendable {
    func render(_ event: HubEvent) -> ByteBuffer?
}

/// A door's connection as the hub sees it. Every method is called on `eventLoop` only.
public protocol SessionSink: AnyObject, Sendable {
    var eventLoop: any EventLoop { get }
    var format: any WireFormat { get }
    /// Queues bytes without flushing; a sink whose client stopped reading disconnects it here.
    func enqueue(_ bytes: ByteBuffer)
    /// Flushes what `enqueue` queued in this loop pass.
    func flushQueued()
    /// A copy of an event: `enqueue`, then `flushQueued` (one call, as the hub makes it per recipient).
    /// The bytes are lent for the call (the hub's one rendering, shared by every recipient): a sink
    /// that keeps them copies them.
    func deliver(_ bytes: UnsafeRawBufferPointer)
    /// The sender's own copy of its message, which tells it the message was accepted: `deliver`,
    /// and written ahead of the other connections' output in the loop's next gathered flush.
    func deliverAcknowledgement(_ bytes: UnsafeRawBufferPointer)
    /// Sends `finalBytes` (when given), then closes the connection.
    func disconnect(finalBytes: ByteBuffer?)
    /// Whether the sender gets a copy of its own room and direct messages.
    var receivesOwnMessages: Bool { get }
}

extension SessionSink {
    public var receivesOwnMessages: Bool { true }

    public func deliver(_ bytes: UnsafeRawBufferPointer) {
        enqueue(ByteBuffer(bytes: bytes))
        flushQueued()
    }

    public func deliverAcknowledgement(_ bytes: UnsafeRawBufferPointer) {
        deliver(bytes)
    }
}

public struct SessionInfo: Sendable, Equatable {
    public let id: Int
    public let name: String
    public let account: String?
    public let door: String
    public let address: String
    public let rooms: [String]
    public let connectedAt: Date
}

/// One connected client on any door. Identity fields change rarely (login, logout, join, part)
/// and are read by other threads (listings, routing), so they sit behind a short lock.
public final class Session: Sendable {
    public let id: Int
    public let door: String
    public let address: String
    public let connectedAt: Date
    /// The address without its port, shown as the host part of a user's mask.
    public let host: String
    let sink: any SessionSink
    /// The sink's event loop, and its identity: the hub groups a message's copies by loop.
    let loop: any EventLoop
    let loopID: ObjectIdentifier
    /// The loop's turn, which counts the hub's tasks queued there; nil for a loop the hub was not
    /// given (tests).
    let turn: NextTurn?

    struct State {
        var name: String
        var account: String?
        /// The user name an IRC client gave with USER; other doors use the session's name.
        var user: String?
        /// The "real name" an IRC client gave with USER.
        var realName: String?
        /// An away message (IRC AWAY); nil when present.
        var away: String?
        /// A server operator (IRC OPER): may kick anywhere and disconnect anyone.
        var serverOperator = false
        /// IRC user mode +i: hidden from WHO masks of users who share no room with it.
        var invisible = false
        /// Room keys in join order.
        var rooms: [String] = []
        var connected = true
        /// Direct messages to it being stored, for its PINGs' wait (`Hub.afterPublished(to:)`).
        var directs = SettleCount()
    }
    let state: Mutex<State>

    /// Runs `body` once the direct messages logged for this session up to `mark` are settled.
    func whenDirectsSettled(upTo mark: UInt32, _ body: @escaping @Sendable () -> Void) {
        let now = state.withLock { state in !state.connected || state.directs.wait(upTo: mark, body) }
        if now { body() }
    }

    /// Settles one direct message logged for this session (outside its lock).
    func settleDirect() {
        for body in state.withLock({ $0.directs.settle() }) { body() }
    }

    init(id: Int, name: String, user: String?, door: String, address: String, sink: any SessionSink, turn: NextTurn? = nil) {
        self.id = id
        self.door = door
        self.address = address
        self.host = Hub.host(of: address)
        self.connectedAt = Date()
        self.sink = sink
        self.loop = sink.eventLoop
        self.loopID = ObjectIdentifier(sink.eventLoop)
        self.turn = turn
        self.state = Mutex(State(name: name, user: user))
    }

    public var name: String { state.withLock { $0.name } }
    public var account: String? { state.withLock { $0.account } }
    public var isLoggedIn: Bool { account != nil }
    /// Whether the session takes the copy of its own messages (its acknowledgement); IRC clients
    /// that did not ask for echo-message do not.
    public var receivesOwnMessages: Bool { sink.receivesOwnMessages }
    public var roomKeys: [String] { state.withLock { $0.rooms } }
    public var realName: String? { state.withLock { $0.realName } }
    public var isInvisible: Bool {
        get { state.withLock { $0.invisible } }
        set { state.withLock { $0.invisible = newValue } }
    }
    /// Set through `Hub.makeServerOperator`, which keeps the count.
    public var isServerOperator: Bool {
        state.withLock { $0.serverOperator }
    }
    public var away: String? {
        get { state.withLock { $0.away } }
        set { state.withLock { $0.away = newValue } }
    }
    public var speaker: Speaker {
        state.withLock { Speaker(name: $0.name, user: $0.user ?? $0.name, host: host, account: $0.account, realName: $0.realName) }
    }

    func info(roomNames: [String]) -> SessionInfo {
        state.withLock {
            SessionInfo(id: id, name: $0.name, account: $0.account, door: door, address: address,
                        rooms: roomNames, connectedAt: connectedAt)
        }
    }
}

/// Messages handed to the log for a room or a session, and how many of them have been published or
/// refused since. Messages settle in the order they were logged, so a PING that came when `logged`
/// was N is answered once `settled` reaches N. 32-bit and wrapping: compared by difference.
struct SettleCount {
    var logged: UInt32 = 0
    private(set) var settled: UInt32 = 0
    private var waiting: [(mark: UInt32, then: @Sendable () -> Void)] = []

    private static func reached(_ mark: UInt32, settled: UInt32) -> Bool { Int32(bitPattern: settled &- mark) >= 0 }

    /// Whether `mark` is settled already; if not, `body` waits for it.
    mutating func wait(upTo mark: UInt32, _ body: @escaping @Sendable () -> Void) -> Bool {
        if Self.reached(mark, settled: settled) { return true }
        waiting.append((mark, body))
        return false
    }

    /// One more message settled; returns the waiters now due, to run outside the lock.
    mutating func settle() -> [@Sendable () -> Void] {
        settled &+= 1
        guard !waiting.isEmpty else { return [] }
        let settled = settled
        let due = waiting.filter { Self.reached($0.mark, settled: settled) }.map(\.then)
        if !due.isEmpty { waiting.removeAll { Self.reached($0.mark, settled: settled) } }
        return due
    }

    /// Every waiter, for a room or session that is going away.
    mutating func releaseAll() -> [@Sendable () -> Void] {
        defer { waiting = [] }
        return waiting.map(\.then)
    }
}
