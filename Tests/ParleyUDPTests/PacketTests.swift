import NIOCore
import ParleyUDP
import Testing

@Suite struct PacketTests {
    @Test func aPacketSurvivesEncodingWithItsHeaderFieldsAndPayload() throws {
        let packet = Packet(.data, token: 0x0102_0304_0506_0708, seq: 7, ack: 5, sack: 0b101, payload: ByteBuffer(string: "/join #a\n"))
        let bytes = packet.encoded()
        #expect(bytes.readableBytes == Packet.headerSize + 9)
        #expect(Array(bytes.readableBytesView.prefix(4)) == [0x50, 1, 3, 0])
        #expect(try Packet.decode(bytes) == packet)
    }

    @Test func badDatagramsAreRefusedWithTheirReason() {
        let valid = Packet(.ack, token: 1).encoded()
        #expect(throws: Packet.DecodeError.malformed) { try Packet.decode(ByteBuffer(bytes: [0x50, 1, 4])) }
        var wrongMagic = valid
        wrongMagic.setInteger(UInt8(0x51), at: 0)
        #expect(throws: Packet.DecodeError.malformed) { try Packet.decode(wrongMagic) }
        var newer = valid
        newer.setInteger(UInt8(2), at: 1)
        #expect(throws: Packet.DecodeError.unsupportedVersion(2)) { try Packet.decode(newer) }
        var unknown = valid
        unknown.setInteger(UInt8(99), at: 2)
        #expect(throws: Packet.DecodeError.unknownKind(99)) { try Packet.decode(unknown) }
        let oversize = Packet(.data, token: 1, seq: 1, payload: ByteBuffer(repeating: 0x61, count: Packet.maxPayload + 1)).encoded()
        #expect(throws: Packet.DecodeError.oversize(payloadBytes: Packet.maxPayload + 1)) { try Packet.decode(oversize) }
        let unnumbered = Packet(.data, token: 1, seq: 0).encoded()
        #expect(throws: Packet.DecodeError.malformed) { try Packet.decode(unnumbered) }
        let largest = Packet(.data, token: 1, seq: 1, payload: ByteBuffer(repeating: 0x61, count: Packet.maxPayload)).encoded()
        #expect((try? Packet.decode(largest)) != nil)
    }
}
