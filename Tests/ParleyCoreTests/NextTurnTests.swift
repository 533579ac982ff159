import NIOCore
import NIOEmbedded
import ParleyCore
import Testing

/// `NextTurn` on a loop the test drives: what is put off runs in order, on the next turn only, and
/// one wake-up covers everything put off before the turn comes.
@Suite struct NextTurnTests {
    @Test func whatIsPutOffRunsInOrderOnTheNextTurnOnly() {
        let loop = EmbeddedEventLoop()
        let turn = NextTurn(loop: loop)
        var wakes = 0
        turn.attach { wakes += 1 }
        var ran: [String] = []
        turn.later { ran.append("a") }
        turn.later {
            ran.append("b")
            // Put off during a turn: waits for the turn after.
            turn.later { ran.append("d") }
        }
        turn.later { ran.append("c") }
        #expect(ran.isEmpty)
        #expect(wakes == 1)
        turn.run()
        #expect(ran == ["a", "b", "c"])
        #expect(wakes == 2)
        turn.run()
        #expect(ran == ["a", "b", "c", "d"])
        // Nothing waits: a turn runs nothing, and no wake-up is asked for.
        turn.run()
        #expect(ran.count == 4 && wakes == 2)
    }

    @Test func withoutAWakerOrAfterDetachingItRunsAsATask() {
        let loop = EmbeddedEventLoop()
        let turn = NextTurn(loop: loop)
        var ran: [Int] = []
        turn.later { ran.append(1) }
        #expect(ran.isEmpty)
        loop.run()
        #expect(ran == [1])

        var wakes = 0
        turn.attach { wakes += 1 }
        turn.later { ran.append(2) }
        #expect(wakes == 1)
        // The pipe closes before its byte is read: what waits still runs.
        turn.detach()
        loop.run()
        #expect(ran == [1, 2])
        turn.later { ran.append(3) }
        loop.run()
        #expect(ran == [1, 2, 3] && wakes == 1)
    }

    @Test func eachLoopOfAGroupHasItsTurn() {
        let loops = [EmbeddedEventLoop(), EmbeddedEventLoop()]
        let turns = LoopTurns(loops: loops)
        #expect(turns.all.count == 2)
        #expect(turns.turn(for: loops[1])?.loop === loops[1])
        #expect(turns.turn(for: EmbeddedEventLoop()) == nil)
    }
}
