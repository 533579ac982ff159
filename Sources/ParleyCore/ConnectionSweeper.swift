import NIOCore
import Synchronization

/// A connection that the sweeper visits every period, on its event loop (keep-alive, timeouts).
public protocol SweptConnection: AnyObject, SendableMetatype {
    /// Its place in its loop's list; kept by the sweeper, -1 when it is not in one.
    var sweepSlot: Int { get set }
    /// Called on the connection's loop once per period.
    func sweep(now: NIODeadline)
}

/// One timer per event loop for the periodic checks of all its connections. A repeated task per
/// connection (a timer, its promise and closures) cost about 500 bytes of every idle connection;
/// here a connection costs a slot in an array.
public final class ConnectionSweeper<Connection: SweptConnection>: Sendable {
    public let period: TimeAmount
    private let loops = Mutex<[ObjectIdentifier: LoopSweep<Connection>]>([:])

    public init(period: TimeAmount) {
        self.period = period
    }

    /// Starts visiting `connection`; call on `loop`, the connection's.
    public func add(_ connection: Connection, on loop: any EventLoop) {
        guard connection.sweepSlot < 0 else { return }
        let sweep = loops.withLock { loops in
            if let sweep = loops[ObjectIdentifier(loop)] { return sweep }
            let sweep = LoopSweep<Connection>(loop: loop, period: period)
            loops[ObjectIdentifier(loop)] = sweep
            return sweep
        }
        sweep.add(connection)
    }

    /// Stops visiting `connection`; call on `loop`. A loop's timer stops with its last connection.
    public func remove(_ connection: Connection, on loop: any EventLoop) {
        guard connection.sweepSlot >= 0 else { return }
        loops.withLock { $0[ObjectIdentifier(loop)] }?.remove(connection)
    }

    /// How many connections are visited, over all loops (for tests).
    public var count: Int {
        loops.withLock { loops in loops.values.reduce(0) { $0 + $1.count.load(ordering: .relaxed) } }
    }
}

/// The connections of one loop.
// @unchecked Sendable: `members` and `timer` are read and written only on `loop` (`add`, `remove`
// and the timer's task all run there; `ConnectionSweeper`'s callers are the connections' handlers,
// which live on their loop, and the debug precondition checks it). `count` is atomic.
final class LoopSweep<Connection: SweptConnection>: @unchecked Sendable {
    let loop: any EventLoop
    let period: TimeAmount
    let count = Atomic<Int>(0)
    private var members: [Connection] = []
    private var timer: RepeatedTask?

    init(loop: any EventLoop, period: TimeAmount) {
        self.loop = loop
        self.period = period
    }

    func add(_ connection: Connection) {
        loop.assertInEventLoop()
        connection.sweepSlot = members.count
        members.append(connection)
        count.store(members.count, ordering: .relaxed)
        if timer == nil {
            timer = loop.scheduleRepeatedTask(initialDelay: period, delay: period) { [self] _ in sweep() }
        }
    }

    func remove(_ connection: Connection) {
        loop.assertInEventLoop()
        let slot = connection.sweepSlot
        guard slot >= 0, slot < members.count, members[slot] === connection else { return }
        // The last member takes the freed slot.
        let last = members.removeLast()
        if last !== connection {
            members[slot] = last
            last.sweepSlot = slot
        }
        connection.sweepSlot = -1
        count.store(members.count, ordering: .relaxed)
        if members.isEmpty {
            timer?.cancel()
            timer = nil
            // Some capacity is worth keeping; ten thousand slots after a burst are not.
            if members.capacity > 1024 { members = [] }
        }
    }

    private func sweep() {
        let now = NIODeadline.now()
        // A visit may close a connection, which leaves the list meanwhile: visit a snapshot, and skip
        // those that left.
        let visiting = members
        for connection in visiting where connection.sweepSlot >= 0 {
            connection.sweep(now: now)
        }
    }
}
