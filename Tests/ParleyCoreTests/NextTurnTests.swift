import NIOCore
import NIOEmbedded
@testable import ParleyCore
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

/// Connections' queued flushes wait in their loop's turn and go out together: one write per
/// connection for everything delivered before the turn, later still while the loop has more work put
/// off, but never more than `maxFlushDeferrals` turns later.
@Suite struct GatheredFlushTests {
    /// A connection on `loop` whose sink flushes through `turn`.
    func connection(_ loop: EmbeddedEventLoop, _ turn: NextTurn) -> (EmbeddedChannel, ChannelSink) {
        let channel = EmbeddedChannel(loop: loop)
        let sink = ChannelSink(channel: channel, format: EventFormat(), closeGrace: .seconds(1), turn: turn) { _ in nil }
        return (channel, sink)
    }

    func deliver(_ text: String, to sink: ChannelSink) {
        Array(text.utf8).withUnsafeBytes { sink.deliver($0) }
    }

    /// Records which connection's channel is flushed, in order, across connections.
    final class FlushOrder: ChannelOutboundHandler {
        typealias OutboundIn = ByteBuffer
        let name: String
        let order: Box
        final class Box { var names: [String] = [] }
        init(_ name: String, _ order: Box) {
            self.name = name
            self.order = order
        }
        func flush(context: ChannelHandlerContext) {
            order.names.append(name)
            context.flush()
        }
    }

    /// Connections named `names` on one loop, each recording its flushes in `order`.
    func connections(_ names: [String], _ loop: EmbeddedEventLoop, _ turn: NextTurn, _ order: FlushOrder.Box) throws -> [ChannelSink] {
        try names.map { name in
            let channel = EmbeddedChannel(loop: loop)
            try channel.pipeline.syncOperations.addHandler(FlushOrder(name, order))
            return ChannelSink(channel: channel, format: EventFormat(), closeGrace: .seconds(1), turn: turn) { _ in nil }
        }
    }

    /// A sender's own copy (its acknowledgement) is written ahead of the members that came before it
    /// in the flush, once, when the senders are few among those flushed (fan-out); when most are
    /// senders (rooms) the flush keeps its order.
    @Test func aFewSendersAcknowledgementsAreWrittenFirst() throws {
        let loop = EmbeddedEventLoop()
        let turn = NextTurn(loop: loop)
        turn.attach {}
        let order = FlushOrder.Box()
        let sinks = try connections(["m1", "m2", "m3", "m4", "sender"], loop, turn, order)
        for sink in sinks.dropLast() { deliver("hi\n", to: sink) }
        Array("hi\n".utf8).withUnsafeBytes { sinks[4].deliverAcknowledgement($0) }
        turn.run()
        #expect(order.names == ["sender", "m1", "m2", "m3", "m4"])
        // Most of them senders: the order they were given output in.
        order.names.removeAll()
        for sink in sinks.prefix(2) { deliver("hi\n", to: sink) }
        for sink in sinks.suffix(3) { Array("hi\n".utf8).withUnsafeBytes { sink.deliverAcknowledgement($0) } }
        turn.run()
        #expect(order.names == ["m1", "m2", "m3", "m4", "sender"])
        // Again most of them senders, one with more than a chunk gathered (part of it handed to the
        // channel unflushed before the turn): every byte is flushed.
        order.names.removeAll()
        let big = String(repeating: "x", count: ChannelSink.writeChunk + 100) + "\n"
        for sink in sinks.suffix(4) { Array(big.utf8).withUnsafeBytes { sink.deliverAcknowledgement($0) } }
        turn.run()
        #expect(order.names == ["m2", "m3", "m4", "sender"])
        // And a few senders again: the first ones go first once more.
        order.names.removeAll()
        for sink in sinks.dropLast() { deliver("hi\n", to: sink) }
        Array("hi\n".utf8).withUnsafeBytes { sinks[4].deliverAcknowledgement($0) }
        turn.run()
        #expect(order.names == ["sender", "m1", "m2", "m3", "m4"])
    }

    /// Everything written to `channel` so far, one string per write.
    func writes(_ channel: EmbeddedChannel) throws -> [String] {
        var all: [String] = []
        while let buffer = try channel.readOutbound(as: ByteBuffer.self) { all.append(String(buffer: buffer)) }
        return all
    }

    @Test func deliveriesOfATurnGoOutAsOneWritePerConnectionOnTheNextTurn() throws {
        let loop = EmbeddedEventLoop()
        let turn = NextTurn(loop: loop)
        var wakes = 0
        turn.attach { wakes += 1 }
        let (first, firstSink) = connection(loop, turn)
        let (second, secondSink) = connection(loop, turn)
        deliver("a1\n", to: firstSink)
        deliver("b1\n", to: secondSink)
        deliver("a2\n", to: firstSink)
        loop.run()
        #expect(try writes(first).isEmpty)
        #expect(wakes == 1)
        turn.run()
        #expect(try writes(first) == ["a1\na2\n"])
        #expect(try writes(second) == ["b1\n"])
        // Nothing more was delivered: the next turn writes nothing.
        turn.run()
        #expect(try writes(first).isEmpty && writes(second).isEmpty)
        deliver("a3\n", to: firstSink)
        turn.run()
        #expect(try writes(first) == ["a3\n"])
    }

    @Test func whileMoreWorkIsPutOffTheFlushWaitsABoundedNumberOfTurns() throws {
        let loop = EmbeddedEventLoop()
        let turn = NextTurn(loop: loop)
        turn.attach {}
        let (channel, sink) = connection(loop, turn)
        deliver("m1\n", to: sink)
        // A publishing pass that puts its next pass off, turn after turn, delivering each time.
        var pass = 1
        func publish() {
            pass += 1
            deliver("m\(pass)\n", to: sink)
            turn.later { publish() }
        }
        turn.later { publish() }
        var written: [[String]] = []
        for _ in 0..<(NextTurn.maxFlushDeferrals + 2) {
            turn.run()
            written.append(try writes(channel))
        }
        // Put off while the loop was busy, then written once, holding every pass so far; what the
        // next pass delivers waits again.
        let waited = NextTurn.maxFlushDeferrals
        #expect(written.prefix(waited).allSatisfy { $0.isEmpty })
        #expect(written[waited] == [(1...(waited + 1)).map { "m\($0)\n" }.joined()])
        #expect(written[waited + 1].isEmpty)
    }
}
