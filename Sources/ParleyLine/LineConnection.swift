import NIOCore
import ParleyCore

public struct LineDoorConfig: Sendable {
    public var maxLineLength = 8192
    /// Pending bytes with no line ending for this long count as a line; nil: a line needs its ending
    /// (the UDP door, where the rest of a long line may be a retransmission away).
    public var quietPeriod: TimeAmount? = .milliseconds(100)
    /// Flood control: a burst of this many lines, then `floodRate` lines a second; 0 turns it off.
    public var floodBurst = 200.0
    public var floodRate = 100.0
    /// How long a disconnecting client gets to take its last lines before the socket is closed anyway.
    public var closeGrace = TimeAmount.seconds(2)

    public init() {}
}

/// A line-protocol connection over TCP: the transport for a `LineSession`. While the session is
/// paused (a slow command, flood control) the socket is not read, so TCP holds the client back.
public final class LineConnectionHandler: ChannelDuplexHandler {
    public typealias InboundIn = ByteBuffer
    public typealias OutboundIn = ByteBuffer
    public typealias OutboundOut = ByteBuffer

    private let hub: Hub
    private let config: LineDoorConfig
    private let turns: LoopTurns?
    private var line: LineSession?

    public init(hub: Hub, config: LineDoorConfig, turns: LoopTurns? = nil) {
        self.hub = hub
        self.config = config
        self.turns = turns
    }

    public func channelActive(context: ChannelHandlerContext) {
        let sink = ChannelSink(channel: context.channel, format: LineFormat.shared, closeGrace: config.closeGrace,
                               turn: turns?.turn(for: context.eventLoop)) { format in
            var last = ByteBuffer(string: LineReply.err("sendq-exceeded", "You stopped reading and more than your outbound limit queued up; disconnecting. Reconnect to continue.") + "\n")
            if let bye = format.render(.goodbye(.sendqExceeded)) { last.writeImmutableBuffer(bye) }
            return last
        }
        let line = LineSession(hub: hub, config: config, sink: sink, turn: turns?.turn(for: context.eventLoop))
        self.line = line
        let boundContext = NIOLoopBound(context, eventLoop: context.eventLoop)
        line.onInputWanted = { boundContext.value.read() }
        guard line.start(door: "line", address: ChannelSink.describe(context.channel.remoteAddress)) else { return }
        context.fireChannelActive()
    }

    public func channelInactive(context: ChannelHandlerContext) {
        line?.stopped()
        line = nil
        context.fireChannelInactive()
    }

    public func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        line?.received(unwrapInboundIn(data))
    }

    public func errorCaught(context: ChannelHandlerContext, error: any Error) {
        // A reset or a broken pipe: the client is gone. Nobody else is affected.
        context.close(promise: nil)
    }

    public func read(context: ChannelHandlerContext) {
        if line?.shouldReadInput() ?? true { context.read() }
    }
}

extension ChannelSink: LineSessionSink {}
