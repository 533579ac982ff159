import NIOCore

/// One framed unit of input.
public enum FramedLine: Equatable, Sendable {
    /// A line's bytes, without its LF or CRLF.
    case line(ByteBuffer)
    /// A line longer than the limit; its bytes were discarded.
    case tooLong
}

/// Splits a byte stream into lines ending in LF or CRLF, with a bounded line length. Shared by the
/// line-based doors (line protocol, IRC): framing is protocol-neutral, what a line means is not.
/// Bytes are kept until a caller asks for the next line, so a paused reader keeps its input.
public struct LineFramer: Sendable {
    public let maxLineLength: Int
    private var buffer: ByteBuffer
    /// How far `buffer` has been searched for LF, so a long partial line is not rescanned.
    private var scanned = 0
    /// Inside an over-long line: drop bytes up to the next LF.
    private var discarding = false

    public init(maxLineLength: Int = 8192) {
        self.maxLineLength = maxLineLength
        self.buffer = ByteBuffer()
    }

    public mutating func append(_ bytes: ByteBuffer) {
        var bytes = bytes
        if buffer.readableBytes == 0 {
            // Nothing pending: the read itself is the buffer, without a copy. It is let go of once its
            // lines are taken (`next`), so the channel can reuse it and an idle connection holds none.
            buffer = bytes
            scanned = 0
            return
        }
        if buffer.readerIndex > 64 * 1024 {
            // Lines already handed out would otherwise stay in memory behind a pending partial line.
            buffer.discardReadBytes()
        }
        buffer.writeBuffer(&bytes)
    }

    /// Bytes received that do not yet form a line.
    public var hasPartialLine: Bool { buffer.readableBytes > 0 || discarding }

    /// Bytes received and not yet taken as lines.
    public var bufferedBytes: Int { buffer.readableBytes }

    /// The next complete line, `.tooLong` for an over-long one, or nil when more input is needed.
    public mutating func next() -> FramedLine? {
        while true {
            let view = buffer.readableBytesView
            let searchStart = view.index(view.startIndex, offsetBy: scanned)
            if let lf = view[searchStart...].firstIndex(of: UInt8(ascii: "\n")) {
                let length = lf - view.startIndex
                scanned = 0
                if discarding {
                    buffer.moveReaderIndex(forwardBy: length + 1)
                    discarding = false
                    continue
                }
                var contentLength = length
                if contentLength > 0, view[view.startIndex + contentLength - 1] == UInt8(ascii: "\r") {
                    contentLength -= 1
                }
                guard contentLength <= maxLineLength, let line = buffer.readSlice(length: contentLength) else {
                    buffer.moveReaderIndex(forwardBy: length + 1)
                    return .tooLong
                }
                buffer.moveReaderIndex(forwardBy: length - contentLength + 1)
                return .line(line)
            }
            if view.isEmpty {
                buffer = ByteBuffer()
                scanned = 0
                return nil
            }
            scanned = view.count
            // No line ending yet. A partial line that is already too long (allowing one byte for a CR)
            // is reported once and then dropped as it arrives.
            if view.count > maxLineLength + 1 {
                buffer.moveReaderIndex(forwardBy: view.count)
                scanned = 0
                if discarding { return nil }
                discarding = true
                return .tooLong
            }
            return nil
        }
    }

    /// The quiet period after a partial line expired: take what is pending as a complete line.
    /// Ends an over-long line being discarded, too: what comes next is a new line.
    public mutating func terminatePartialLine() {
        scanned = 0
        if discarding {
            // The tail of an over-long line (already reported) is dropped, not taken as a line.
            discarding = false
            buffer.moveReaderIndex(forwardBy: buffer.readableBytes)
            return
        }
        guard buffer.readableBytes > 0 else { return }
        buffer.writeInteger(UInt8(ascii: "\n"))
    }
}
