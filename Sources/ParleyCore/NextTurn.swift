import NIOCore
import Synchronization

/// Work for an event loop's next turn: after the loop has polled its sockets again.
///
/// NIO runs every task that is due before it polls, tasks queued while it runs them included, so
/// work handed on as tasks cannot let the sockets in: under load a loop's turn grew to whatever the
/// connections had sent (200 to 480 ms in the rooms benchmark, a thousand clients with 16 lines
/// each), and a PING read at the start of it was answered at its end. What waits here runs when the
/// loop is woken through a pipe it watches (`attach`), so it comes up among the sockets' reads of the
/// next turn, in the order it was put off. Before a pipe is attached (tests, or a loop without one)
/// it runs as a task instead.
// @unchecked Sendable: `waiting`, `running`, `armed`, `wake` and the flush lists are read and written
// only on `loop` (`later`, `attach`, `detach`, `run` and `flushSoon` assert it); `loop` is a constant.
public final class NextTurn: @unchecked Sendable {
    public let loop: any EventLoop
    private var waiting: [() -> Void] = []
    /// The list being run, kept to reuse its storage.
    private var running: [() -> Void] = []
    private var armed = false
    private var wake: (() -> Void)?

    public init(loop: any EventLoop) {
        self.loop = loop
    }

    // MARK: The hub's tasks

    /// The hub's tasks queued on this loop and not yet run (deliveries, and door callbacks that
    /// follow them). While none is waiting, a message published on this loop may be handed to this
    /// loop's members at once, with nothing of the hub's that should come first still queued.
    private let hubTasks = Atomic<Int>(0)

    /// Counts a hub task about to be queued on this loop; the task calls `hubTaskRan` when it ends.
    func hubTaskQueued() {
        hubTasks.add(1, ordering: .relaxed)
    }

    func hubTaskRan() {
        hubTasks.subtract(1, ordering: .releasing)
    }

    /// Whether the caller runs on this loop and no hub task waits in its queue.
    var hubIsCaughtUpHere: Bool {
        loop.inEventLoop && hubTasks.load(ordering: .acquiring) == 0
    }

    /// Runs `body` on the loop's next turn, after everything put off before it. Call on the loop.
    public func later(_ body: @escaping () -> Void) {
        loop.preconditionInEventLoop()
        waiting.append(body)
        guard !armed else { return }
        armed = true
        if let wake {
            wake()
        } else {
            loop.execute { self.run() }
        }
    }

    /// From now on the loop is woken by `wake`, which must make the loop's next poll find something
    /// that leads to `run()` (a byte written to a pipe whose reader calls it). Call on the loop.
    public func attach(wake: @escaping () -> Void) {
        loop.preconditionInEventLoop()
        self.wake = wake
    }

    /// Back to tasks (the pipe is closing); what waits still runs. Call on the loop.
    public func detach() {
        loop.preconditionInEventLoop()
        wake = nil
        if armed { loop.execute { self.run() } }
    }

    // MARK: Gathered output

    /// Connections with output gathered and not yet written, to be flushed together (`flushSoon`).
    private var unflushed: [ChannelSink] = []
    private var flushing: [ChannelSink] = []
    /// Of those, the ones holding a sender's acknowledgement, written first (`flushFirst`).
    private var unflushedFirst: [ChannelSink] = []
    private var flushingFirst: [ChannelSink] = []
    private var flushArmed = false
    /// Turns the flush has been put off by so far.
    private var flushDeferrals = 0
    /// How many turns a flush may wait while the loop has more work put off (the publishing queue's
    /// next pass): each connection's write then carries several passes' messages. A `write` to a
    /// loopback socket also runs the receiver's TCP input and wake-up, about 10 µs of the loop's time:
    /// 16 rather than 2 gave 6-10% more deliveries in rooms and fan-out to 1,000 over IRC, with lower
    /// latency (docs/benchmarks.md). A turn is bounded (its reads and one publishing pass), and a
    /// quiet loop flushes at once.
    static let maxFlushDeferrals = 16

    /// Writes `sink`'s gathered output on a coming turn, with every other connection's: at the next
    /// turn, or while more work waits for the turn after it (under load), up to `maxFlushDeferrals`
    /// turns later. Call on the loop, once per sink until it is flushed (the sink keeps a flag).
    func flushSoon(_ sink: ChannelSink) {
        loop.assertInEventLoop()
        unflushed.append(sink)
        guard !flushArmed else { return }
        flushArmed = true
        flushDeferrals = 0
        later { self.flushGathered() }
    }

    /// Writes `sink` ahead of the others in the coming flush; it must already wait for that flush
    /// (`flushSoon`). Call on the loop, once per sink until it is flushed.
    func flushFirst(_ sink: ChannelSink) {
        loop.assertInEventLoop()
        unflushedFirst.append(sink)
    }

    private func flushGathered() {
        // Other work in this turn or put off to the next (a publishing pass, connections waiting for
        // their turn to read on) means a busy loop, whose next pass will likely add to the output.
        if running.count > 1 || !waiting.isEmpty, flushDeferrals < Self.maxFlushDeferrals {
            flushDeferrals += 1
            later { self.flushGathered() }
            return
        }
        flushArmed = false
        swap(&unflushed, &flushing)
        swap(&unflushedFirst, &flushingFirst)
        // Worth it when the senders are a few among many members (fan-out); when most are senders
        // (rooms) there is nothing to put them ahead of.
        if flushingFirst.count * 4 < flushing.count {
            for sink in flushingFirst { sink.flushAcknowledgement() }
        }
        flushingFirst.removeAll(keepingCapacity: true)
        for sink in flushing { sink.flushFromTurn() }
        flushing.removeAll(keepingCapacity: true)
    }

    /// Runs what was put off until now; what it puts off in turn waits for the next turn.
    public func run() {
        loop.preconditionInEventLoop()
        armed = false
        swap(&waiting, &running)
        for body in running { body() }
        running.removeAll(keepingCapacity: true)
    }
}

/// The `NextTurn` of each event loop of a group, fixed when the server starts.
public struct LoopTurns: Sendable {
    public let all: [NextTurn]
    private let byLoop: [ObjectIdentifier: NextTurn]

    public init(loops: [any EventLoop]) {
        all = loops.map(NextTurn.init)
        byLoop = Dictionary(uniqueKeysWithValues: all.map { (ObjectIdentifier($0.loop), $0) })
    }

    /// The turn of `loop`; nil for a loop outside the group.
    public func turn(for loop: any EventLoop) -> NextTurn? {
        byLoop[ObjectIdentifier(loop)]
    }
}

extension NextTurn {
    /// Lines a connection handles in one turn; the rest of what it sent waits for the next turn. A
    /// turn then holds at most this many lines from each connection (and their fan-out), so a client
    /// that sends little is answered within a turn however much the others send.
    public static let linesPerConnection = 16
    /// Input a connection waiting for its turn may hold before it stops reading (backpressure).
    public static let bytesHeldPerConnection = 8192
}
