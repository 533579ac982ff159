import NIOCore
import NIOEmbedded
@testable import ParleyCore
@testable import ParleyStore
import Synchronization
import Testing

/// How many committed messages one publishing pass takes: 64, more for a big room's messages (its
/// members get the longer pass in the same one write each), never a turn's worth of copies.
@Suite struct PublishQueueTests {
    /// Submits 300 messages that each make `members` copies, runs one pass, and returns how many it
    /// published; the rest wait for the loop's next turn.
    func firstPass(members: Int) -> (published: Int, wakes: Int) {
        let loop = EmbeddedEventLoop()
        let turn = NextTurn(loop: loop)
        var wakes = 0
        // The wake-up is counted, not acted on: the next pass waits until the test runs the turn.
        turn.attach { wakes += 1 }
        let copies = Atomic<Int>(0)
        let published = Atomic<Int>(0)
        let queue = PublishQueue(turn: turn) { copies.load(ordering: .relaxed) }
        queue.submit((0..<300).map { _ in
            Work { _ in
                copies.add(members, ordering: .relaxed)
                published.add(1, ordering: .relaxed)
            }
        }, committed: true)
        loop.run()
        return (published.load(ordering: .relaxed), wakes)
    }

    /// A queue on an embedded loop whose turn the test runs (`turn.run()`).
    func attachedQueue() -> (EmbeddedEventLoop, NextTurn, PublishQueue) {
        let loop = EmbeddedEventLoop()
        let turn = NextTurn(loop: loop)
        turn.attach {}
        return (loop, turn, PublishQueue(turn: turn))
    }

    @Test func smallRoomsMessagesTake64APass() {
        #expect(firstPass(members: 10) == (64, 1))
    }

    @Test func aBigRoomsMessagesGoOnToAboutSixteenThousandCopies() {
        // 163 messages make 16,300 copies, under the 16,384: the 164th is taken, then the pass stops.
        #expect(firstPass(members: 100) == (164, 1))
    }

    @Test func aThousandMembersMessagesStopAt64() {
        #expect(firstPass(members: 1000) == (64, 1))
    }

    @Test func eachWorkRunsWithItsTransactionsOutcome() {
        let seen = Mutex<[Bool]>([])
        let record = Work { committed in seen.withLock { $0.append(committed) } }
        let (loop, _, queue) = attachedQueue()
        queue.submit([record], committed: true)
        queue.submit([record, record], committed: false)
        loop.run()
        #expect(seen.withLock { $0 } == [true, false, false])
    }

    @Test func theRestIsPublishedOnLaterTurnsInOrder() {
        let order = Mutex<[Int]>([])
        let (loop, turn, queue) = attachedQueue()
        queue.submit((0..<150).map { index in Work { _ in order.withLock { $0.append(index) } } }, committed: true)
        loop.run()
        #expect(order.withLock { $0.count } == 64)
        turn.run()
        #expect(order.withLock { $0.count } == 128)
        turn.run()
        #expect(order.withLock { $0 } == Array(0..<150))
        // Nothing left: the next submission starts a pass of its own.
        queue.submit([Work { _ in order.withLock { $0.append(150) } }], committed: true)
        loop.run()
        #expect(order.withLock { $0.last } == 150)
    }

    @Test func aBacklogIsPublishedARoomAtATimeEachInItsOrder() {
        let order = Mutex<[String]>([])
        let (loop, _, queue) = attachedQueue()
        // Three rooms' messages as the writer hands them over, interleaved.
        let submitted = ["#a1", "#b1", "#c1", "#a2", "#b2", "#a3", "#c2", "#b3"]
        queue.submit(submitted.map { name in
            Work(room: String(name.prefix(2))) { _ in order.withLock { $0.append(name) } }
        }, committed: true)
        loop.run()
        // Each room's together, rooms in the order they first had a message waiting.
        #expect(order.withLock { $0 } == ["#a1", "#a2", "#a3", "#b1", "#b2", "#b3", "#c1", "#c2"])
    }

    @Test func aRoomWhoseMessagesKeepComingWaitsItsTurn() {
        var backlog = RoomBacklog<String>()
        backlog.append("a1", room: "#a")
        backlog.append("a2", room: "#a")
        backlog.append("b1", room: "#b")
        #expect(backlog.popFirst() == "a1")
        // Arrives during #a's visit, which took the two it had when it began.
        backlog.append("a3", room: "#a")
        #expect(backlog.popFirst() == "a2")
        #expect(backlog.popFirst() == "b1")
        #expect(backlog.popFirst() == "a3")
        #expect(backlog.popFirst() == nil)
        #expect(backlog.isEmpty)
        // Empty again, it starts over cleanly.
        backlog.append("c1", room: "#c")
        #expect(backlog.count == 1)
        #expect(backlog.popFirst() == "c1")
    }

    @Test func roomsThatComeAndGoKeepTheirOwnOrder() {
        var backlog = RoomBacklog<String>()
        backlog.append("a1", room: "#a")
        backlog.append("b1", room: "#b")
        #expect(backlog.popFirst() == "a1")
        // #a has emptied; #c and then #a again come after #b, each with its own messages.
        backlog.append("c1", room: "#c")
        backlog.append("a2", room: "#a")
        backlog.append("c2", room: "#c")
        backlog.append("b2", room: "#b")
        #expect(backlog.count == 5)
        #expect((0..<5).compactMap { _ in backlog.popFirst() } == ["b1", "b2", "c1", "c2", "a2"])
        #expect(backlog.isEmpty)
    }

    /// A slot a room emptied and another took is that room's alone: a message of the first room,
    /// queued right after, waits behind the second's in a slot of its own.
    @Test func aSlotTakenByAnotherRoomKeepsTheRoomsApart() {
        var backlog = RoomBacklog<String>()
        backlog.append("a1", room: "#a")
        #expect(backlog.popFirst() == "a1")
        backlog.append("c1", room: "#c")
        backlog.append("a2", room: "#a")
        backlog.append("c2", room: "#c")
        #expect((0..<3).compactMap { _ in backlog.popFirst() } == ["c1", "c2", "a2"])
    }

    /// The history writer's hand-over gives each loop's queue its own works, in order, with the
    /// transaction's outcome, and starts empty for the next transaction.
    @Test func theWritersHandoverGivesEachQueueItsWorksInOrder() {
        let runs = Mutex<[String]>([])
        let (firstLoop, _, first) = attachedQueue()
        let (secondLoop, _, second) = attachedQueue()
        let handover = Handover()
        func work(_ name: String) -> Work { Work { committed in runs.withLock { $0.append("\(name) \(committed)") } } }
        for (name, queue) in [("a1", first), ("b1", second), ("a2", first), ("b2", second), ("a3", first)] {
            handover.add(work(name), reads: ColdReads(), for: queue)
        }
        handover.handOver(committed: true)
        firstLoop.run()
        #expect(runs.withLock { $0 } == ["a1 true", "a2 true", "a3 true"])
        secondLoop.run()
        #expect(runs.withLock { $0 } == ["a1 true", "a2 true", "a3 true", "b1 true", "b2 true"])
        handover.add(work("b3"), reads: ColdReads(), for: second)
        handover.handOver(committed: false)
        firstLoop.run()
        secondLoop.run()
        #expect(runs.withLock { $0 }.suffix(2) == ["b2 true", "b3 false"])
    }

    /// A pass asks the cache for the next item's memory while it runs one: the hint must name the
    /// item the backlog gives next, across the end of a room's visit too.
    @Test func theHintIsForTheItemTakenNext() {
        let works = ["#a", "#a", "#b", "#c"].map { room in Work(room: room) { _ in } }
        var backlog = RoomBacklog<PublishQueue.Item>()
        for work in works { backlog.append(PublishQueue.Item(work: work, committed: true), room: work.room) }
        func address(_ work: any CommittedWork) -> UInt { UInt(bitPattern: Unmanaged<AnyObject>.passUnretained(work).toOpaque()) }
        var taken: [UInt] = []
        var hinted: [UInt] = [backlog.firstReadsOfFirst?.addresses.first ?? 0]
        while let item = backlog.popFirst() {
            taken.append(address(item.work))
            hinted.append(backlog.firstReadsOfFirst?.addresses.first ?? 0)
        }
        #expect(taken == works.map(address))
        // The hint before each pop is the work popped; after the last, there is none.
        #expect(hinted == taken + [0])
    }

    @Test func coldReadsNameWhatIsOutsideTheirHolder() {
        var reads = ColdReads()
        // Up to 15 UTF-8 bytes a string is inline: nothing to fetch.
        reads.add(storageOf: "short")
        #expect(reads.addresses.isEmpty)
        reads.add(storageOf: String(repeating: "long text ", count: 3))
        #expect(reads.addresses.count == 1)
        // A closure that captures nothing has no context; one that captures a value has one.
        reads.add(contextOf: { _ in })
        #expect(reads.addresses.count == 1)
        let flag = Flag()
        reads.add(contextOf: { _ in flag.set() })
        #expect(reads.addresses.count == 2 && reads.addresses[1] != 0)
        // Six at most; more are dropped.
        for _ in 0..<10 { reads.add(flag) }
        #expect(reads.addresses.count == 6)
    }
}
