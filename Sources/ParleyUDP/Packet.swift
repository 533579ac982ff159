import NIOCore

/// One datagram of the UDP door's protocol (see docs/udp.md): a fixed 24-byte header, then a payload.
///
/// ```
/// 0  'P'     magic
/// 1  1       version
/// 2  type    hello, welcome, data, ack, ping, bye, reset, error
/// 3  0       flags (reserved, sent as 0, ignored)
/// 4  token   UInt64, the session's token (0 in a hello)
/// 12 seq     UInt32, a data datagram's sequence number (from 1); 0 otherwise
/// 16 ack     UInt32, every sequence number up to this one was received and handed over in order
/// 20 sack    UInt32, bit i set: sequence number ack+1+i is held as well (selective acknowledgement)
/// 24 payload at most `maxPayload` bytes
/// ```
/// All integers are big-endian.
public struct Packet: Equatable, Sendable {
    public enum Kind: UInt8, Sendable, CaseIterable {
        /// Client: open a session. Payload: an 8-byte nonce that makes a repeated hello recognisable.
        case hello = 1
        /// Server: the session is open; `token` is its token. Payload: the hello's nonce.
        case welcome = 2
        /// Bytes of the session's line stream, numbered by `seq`.
        case data = 3
        /// Acknowledgement only.
        case ack = 4
        /// Keepalive; answered with an ack.
        case ping = 5
        /// The session ends; the receiver frees it and answers with a bye of its own.
        case bye = 6
        /// Server: no session has that token (it timed out, or the server restarted). Header only.
        case reset = 7
        /// Server: a datagram was refused. Payload: UTF-8 text saying why. Not numbered.
        case error = 8
    }

    public static let magic: UInt8 = 0x50  // "P"
    public static let version: UInt8 = 1
    public static let headerSize = 24
    /// The largest payload: a datagram stays under the 1280-byte IPv6 minimum MTU, so it is never fragmented.
    public static let maxPayload = 1200
    /// How many sequence numbers a sender may have unacknowledged; the selective ack covers them all.
    public static let window = 32

    public var kind: Kind
    public var token: UInt64
    public var seq: UInt32
    public var ack: UInt32
    public var sack: UInt32
    public var payload: ByteBuffer

    public init(_ kind: Kind, token: UInt64, seq: UInt32 = 0, ack: UInt32 = 0, sack: UInt32 = 0, payload: ByteBuffer = ByteBuffer()) {
        self.kind = kind
        self.token = token
        self.seq = seq
        self.ack = ack
        self.sack = sack
        self.payload = payload
    }

    public enum DecodeError: Error, Equatable, Sendable {
        /// Shorter than a header, or not starting with the magic byte.
        case malformed
        /// A version this server does not speak.
        case unsupportedVersion(UInt8)
        case unknownKind(UInt8)
        /// The payload is longer than `maxPayload`.
        case oversize(payloadBytes: Int)
    }

    /// Reads a whole datagram.
    public static func decode(_ datagram: ByteBuffer) throws(DecodeError) -> Packet {
        var buffer = datagram
        guard buffer.readableBytes >= headerSize,
              let magic = buffer.readInteger(as: UInt8.self), magic == Self.magic,
              let version = buffer.readInteger(as: UInt8.self),
              let kindByte = buffer.readInteger(as: UInt8.self),
              let _ = buffer.readInteger(as: UInt8.self),
              let token = buffer.readInteger(as: UInt64.self),
              let seq = buffer.readInteger(as: UInt32.self),
              let ack = buffer.readInteger(as: UInt32.self),
              let sack = buffer.readInteger(as: UInt32.self)
        else { throw .malformed }
        guard version == Self.version else { throw .unsupportedVersion(version) }
        guard let kind = Kind(rawValue: kindByte) else { throw .unknownKind(kindByte) }
        guard buffer.readableBytes <= maxPayload else { throw .oversize(payloadBytes: buffer.readableBytes) }
        if kind == .data && seq == 0 { throw .malformed }
        return Packet(kind, token: token, seq: seq, ack: ack, sack: sack, payload: buffer)
    }

    public func encode(into buffer: inout ByteBuffer) {
        buffer.writeInteger(Self.magic)
        buffer.writeInteger(Self.version)
        buffer.writeInteger(kind.rawValue)
        buffer.writeInteger(UInt8(0))
        buffer.writeInteger(token)
        buffer.writeInteger(seq)
        buffer.writeInteger(ack)
        buffer.writeInteger(sack)
        buffer.writeImmutableBuffer(payload)
    }

    public func encoded(allocator: ByteBufferAllocator = ByteBufferAllocator()) -> ByteBuffer {
        var buffer = allocator.buffer(capacity: Self.headerSize + payload.readableBytes)
        encode(into: &buffer)
        return buffer
    }
}
