import NIOCore
import NIOEmbedded
import ParleyCore
import Testing

/// A connection that counts the sweeper's visits and can leave during one.
final class CountingConnection: SweptConnection {
    var sweepSlot = -1
    var visits = 0
    var onVisit: (() -> Void)?
    func sweep(now: NIODeadline) {
        visits += 1
        onVisit?()
    }
}

@Suite struct ConnectionSweeperTests {
    @Test func visitsEachConnectionOncePerPeriodUntilItLeaves() {
        let loop = EmbeddedEventLoop()
        let sweeper = ConnectionSweeper<CountingConnection>(period: .seconds(1))
        let connections = (0..<4).map { _ in CountingConnection() }
        for connection in connections { sweeper.add(connection, on: loop) }
        sweeper.add(connections[0], on: loop)  // a second add changes nothing
        #expect(sweeper.count == 4)

        loop.advanceTime(by: .milliseconds(999))
        #expect(connections.map(\.visits) == [0, 0, 0, 0])
        loop.advanceTime(by: .milliseconds(1))
        #expect(connections.map(\.visits) == [1, 1, 1, 1])

        // One leaves between sweeps, and one leaves (taking another with it) during a sweep: the
        // others are still visited, the ones that left are not.
        sweeper.remove(connections[1], on: loop)
        connections[0].onVisit = {
            sweeper.remove(connections[0], on: loop)
            sweeper.remove(connections[3], on: loop)
        }
        loop.advanceTime(by: .seconds(1))
        #expect(connections.map(\.visits) == [2, 1, 2, 1])
        #expect(sweeper.count == 1)
        loop.advanceTime(by: .seconds(1))
        #expect(connections[2].visits == 3 && connections[0].visits == 2 && connections[1].visits == 1)

        // The last one leaving stops the timer; a newcomer starts it again.
        sweeper.remove(connections[2], on: loop)
        #expect(sweeper.count == 0)
        loop.advanceTime(by: .seconds(5))
        #expect(connections[2].visits == 3)
        let late = CountingConnection()
        sweeper.add(late, on: loop)
        loop.advanceTime(by: .seconds(1))
        #expect(late.visits == 1)
        sweeper.remove(late, on: loop)
        #expect(late.sweepSlot == -1)
    }
}
