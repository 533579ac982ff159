import Foundation
import NIOCore
import NIOPosix
import ParleyCore

/// Wakes an event loop for its `NextTurn`: a byte written to a pipe makes the loop's next poll find
/// the pipe readable, and reading it runs what waits for the turn, among the sockets' reads.
final class TurnWaker: ChannelInboundHandler {
    typealias InboundIn = ByteBuffer

    private let turn: NextTurn
    /// The pipe's write end; the channel owns the read end.
    private let writeEnd: CInt

    private init(turn: NextTurn, writeEnd: CInt) {
        self.turn = turn
        self.writeEnd = writeEnd
    }

    /// Makes the pipe, watches its read end on `turn`'s loop and attaches; returns the pipe's channel.
    static func attach(to turn: NextTurn) async throws -> any Channel {
        var ends: [CInt] = [-1, -1]
        guard pipe(&ends) == 0 else {
            throw TurnWakerError.noPipe(String(cString: strerror(errno)))
        }
        let (readEnd, writeEnd) = (ends[0], ends[1])
        // A full pipe already wakes the loop: a write that would block is not needed.
        _ = fcntl(writeEnd, F_SETFL, fcntl(writeEnd, F_GETFL) | O_NONBLOCK)
        _ = fcntl(writeEnd, F_SETFD, FD_CLOEXEC)
        _ = fcntl(readEnd, F_SETFD, FD_CLOEXEC)
        do {
            return try await NIOPipeBootstrap(group: turn.loop)
                .channelInitializer { channel in
                    channel.eventLoop.makeCompletedFuture {
                        try channel.pipeline.syncOperations.addHandler(TurnWaker(turn: turn, writeEnd: writeEnd))
                    }
                }
                .takingOwnershipOfDescriptor(input: readEnd).get()
        } catch {
            close(readEnd)
            close(writeEnd)
            throw error
        }
    }

    func handlerAdded(context: ChannelHandlerContext) {
        let writeEnd = self.writeEnd
        turn.attach {
            var byte: UInt8 = 1
            _ = write(writeEnd, &byte, 1)
        }
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        turn.run()
    }

    func channelInactive(context: ChannelHandlerContext) {
        turn.detach()
        close(writeEnd)
        context.fireChannelInactive()
    }
}

enum TurnWakerError: Error, CustomStringConvertible {
    case noPipe(String)

    var description: String {
        switch self {
        case .noPipe(let reason): "cannot make the pipe that wakes an event loop: \(reason)"
        }
    }
}
