import NIOCore
import ParleyUDP
import Testing

/// Two links joined by a simulated network with a clock the test moves by hand.
private struct Network {
    var client: ReliableLink
    var server: ReliableLink
    var now = NIODeadline.uptimeNanoseconds(1_000_000_000)
    var loss: LossSimulator
    /// In flight: (deliver to server?, packet).
    var wire: [(toServer: Bool, packet: Packet)] = []
    var clientReceived = ByteBuffer()
    var serverReceived = ByteBuffer()
    var clientRetransmissions = 0
    var serverRetransmissions = 0
    var duplicates = 0
    /// Whether the server's reader takes what arrives (false: a paused reader).
    var serverReads = true

    init(loss: Double, seed: UInt64 = 1, config: LinkConfig = LinkConfig()) {
        let start = NIODeadline.uptimeNanoseconds(1_000_000_000)
        client = ReliableLink(token: 9, config: config, now: start)
        server = ReliableLink(token: 9, config: config, now: start)
        self.loss = LossSimulator(rate: loss, seed: seed)
    }

    /// One round: both sides send what they have due, the network drops some, the rest arrives.
    mutating func step(by elapsed: TimeAmount = .milliseconds(5)) {
        var fromClient: [Packet] = []
        var fromServer: [Packet] = []
        clientRetransmissions += client.collect(now: now, into: &fromClient)
        serverRetransmissions += server.collect(now: now, into: &fromServer)
        // What `collect` leaves is due later: a deadline in the past would fire a timer forever.
        #expect(client.nextDeadline > now && server.nextDeadline > now)
        for packet in fromClient where !loss.drops() { wire.append((true, packet)) }
        for packet in fromServer where !loss.drops() { wire.append((false, packet)) }
        now = now + elapsed
        let arriving = wire
        wire.removeAll()
        for (toServer, packet) in arriving {
            if toServer {
                if server.receive(packet, now: now) == .duplicate { duplicates += 1 }
            } else {
                if client.receive(packet, now: now) == .duplicate { duplicates += 1 }
            }
        }
        while serverReads, var payload = server.nextDelivery() { serverReceived.writeBuffer(&payload) }
        while var payload = client.nextDelivery() { clientReceived.writeBuffer(&payload) }
    }
}

/// A link that sent datagrams 1 to 5, one line each, at time 0; and those datagrams.
private func senderWithFiveDatagramsOut() -> (ReliableLink, [Packet]) {
    var sender = ReliableLink(token: 1, now: .uptimeNanoseconds(0))
    var packets: [Packet] = []
    for index in 1...5 {
        sender.write(ByteBuffer(string: "\(index)\n"))
        sender.collect(now: .uptimeNanoseconds(0), into: &packets)
    }
    return (sender, packets)
}

private func lines(_ range: ClosedRange<Int>, _ prefix: String) -> String {
    range.map { "\(prefix) \($0)\n" }.joined()
}

@Suite struct ReliableLinkTests {
    @Test func bothDirectionsArriveWholeAndInOrderWithoutLoss() {
        var network = Network(loss: 0)
        network.client.write(ByteBuffer(string: "/nick uma\n"))
        network.server.write(ByteBuffer(string: "WELCOME guest-1 #lobby\n"))
        for _ in 0..<3 { network.step() }
        #expect(String(buffer: network.serverReceived) == "/nick uma\n")
        #expect(String(buffer: network.clientReceived) == "WELCOME guest-1 #lobby\n")
        #expect(network.client.isDrained && network.server.isDrained)
        #expect(network.clientRetransmissions == 0 && network.serverRetransmissions == 0)
    }

    @Test func withAThirdLostBothWaysTheStreamsArriveExactlyOnceInOrder() {
        var network = Network(loss: 0.3, seed: 3)
        let up = lines(1...1000, "up")
        let down = lines(1...1000, "down")
        network.client.write(ByteBuffer(string: up))
        network.server.write(ByteBuffer(string: down))
        var rounds = 0
        while !(network.client.isDrained && network.server.isDrained) && rounds < 20_000 {
            network.step()
            rounds += 1
        }
        #expect(String(buffer: network.serverReceived) == up)
        #expect(String(buffer: network.clientReceived) == down)
        #expect(network.clientRetransmissions > 0 && network.serverRetransmissions > 0)
    }

    @Test func aDatagramPacksWholeLinesUpToTheLimitAndSplitsOnlyALongerLine() throws {
        var link = ReliableLink(token: 1, now: .now())
        let short = String(repeating: "a", count: 699) + "\n"
        link.write(ByteBuffer(string: short + short))
        let long = String(repeating: "b", count: 2999) + "\n"
        link.write(ByteBuffer(string: long))
        var packets: [Packet] = []
        link.collect(now: .now(), into: &packets)
        #expect(packets.map(\.payload.readableBytes) == [700, 700, 1200, 1200, 600])
        #expect(packets.map(\.seq) == [1, 2, 3, 4, 5])
        #expect(packets.allSatisfy { $0.payload.readableBytes <= Packet.maxPayload })
    }

    @Test func timeoutsBackOffExponentiallyUpToTheCap() {
        var link = ReliableLink(token: 1, now: .uptimeNanoseconds(0))
        link.write(ByteBuffer(string: "lost\n"))
        var now = NIODeadline.uptimeNanoseconds(0)
        var packets: [Packet] = []
        link.collect(now: now, into: &packets)
        var gaps: [Int64] = []
        for _ in 0..<6 {
            let next = link.nextDeadline
            gaps.append((next - now).nanoseconds / 1_000_000)
            now = next
            packets.removeAll()
            #expect(link.collect(now: now, into: &packets) == 1)
            #expect(packets.map(\.seq) == [1])
        }
        #expect(gaps == [100, 200, 250, 250, 250, 250])
    }

    @Test func theWindowBoundsWhatIsInFlightAndAPausedReaderHoldsTheSenderBack() {
        var network = Network(loss: 0)
        network.serverReads = false
        network.client.write(ByteBuffer(string: lines(1...100, "x")))
        var fromClient: [Packet] = []
        network.client.collect(now: network.now, into: &fromClient)
        // Each line is its own datagram only if they do not pack; these pack, so count bytes instead.
        #expect(fromClient.count <= Packet.window)
        network.wire = fromClient.map { (true, $0) }
        for _ in 0..<10 { network.step() }
        // Nothing was handed over, so nothing is acknowledged and the rest waits.
        #expect(network.serverReceived.readableBytes == 0)
        #expect(!network.client.isDrained)
        network.serverReads = true
        for _ in 0..<20 { network.step() }
        #expect(String(buffer: network.serverReceived) == lines(1...100, "x"))
    }

    @Test func duplicatesAndDatagramsBeyondTheWindowAreRecognised() {
        var link = ReliableLink(token: 1, now: .now())
        let first = Packet(.data, token: 1, seq: 1, payload: ByteBuffer(string: "a\n"))
        #expect(link.receive(first, now: .now()) == .new)
        #expect(link.receive(first, now: .now()) == .duplicate)
        #expect(link.nextDelivery() == ByteBuffer(string: "a\n"))
        #expect(link.receive(first, now: .now()) == .duplicate)
        let far = Packet(.data, token: 1, seq: UInt32(Packet.window) + 2, payload: ByteBuffer(string: "z\n"))
        #expect(link.receive(far, now: .now()) == .outOfWindow)
        let third = Packet(.data, token: 1, seq: 3, payload: ByteBuffer(string: "c\n"))
        #expect(link.receive(third, now: .now()) == .new)
        // Seq 2 is missing: nothing more is handed over, and the ack says it holds 3. Duplicates came,
        // so an ack was lost: this one goes out twice.
        #expect(link.nextDelivery() == nil)
        var packets: [Packet] = []
        link.collect(now: .now(), into: &packets)
        #expect(packets.map(\.kind) == [.ack, .ack])
        #expect(packets.first?.ack == 1)
        #expect(packets.first?.sack == 0b10)
    }

    @Test func threeLaterAcknowledgementsResendALostDatagramBeforeItsTimeout() {
        var (sender, packets) = senderWithFiveDatagramsOut()
        #expect(packets.map(\.seq) == [1, 2, 3, 4, 5])
        // The receiver got 1, 3, 4 and 5.
        let ack = Packet(.ack, token: 1, ack: 1, sack: 0b1110)
        _ = sender.receive(ack, now: .uptimeNanoseconds(1_000_000))
        packets.removeAll()
        #expect(sender.collect(now: .uptimeNanoseconds(1_000_000), into: &packets) == 1)
        #expect(packets.map(\.seq) == [2])
    }

    /// A datagram marked for early resend that the peer then turns out to hold is not due any more:
    /// the link must not report a deadline in the past, or its timer would fire forever.
    @Test func aDatagramHeldAfterAllIsNoLongerDue() {
        var (sender, packets) = senderWithFiveDatagramsOut()
        let now = NIODeadline.uptimeNanoseconds(1_000_000)
        _ = sender.receive(Packet(.ack, token: 1, ack: 0, sack: 0b11110), now: now)
        _ = sender.receive(Packet(.ack, token: 1, ack: 0, sack: 0b11111), now: now)
        packets.removeAll()
        #expect(sender.collect(now: now, into: &packets) == 0)
        #expect(packets.isEmpty)
        #expect(sender.nextDeadline > now)
    }

    /// What a closing server asks before it gives up on a client's last lines: has every datagram the
    /// client lacks been tried often enough? Datagrams the client holds but has not taken count as tried.
    @Test func transmissionsAreCountedUntilThePeerHoldsTheDatagram() {
        var (sender, _) = senderWithFiveDatagramsOut()
        #expect(sender.unacknowledgedSent(atLeast: 1))
        #expect(!sender.unacknowledgedSent(atLeast: 2))
        var now = NIODeadline.uptimeNanoseconds(0)
        var packets: [Packet] = []
        for _ in 1...3 {
            now = sender.nextDeadline
            sender.collect(now: now, into: &packets)
        }
        #expect(sender.unacknowledgedSent(atLeast: 4))
        #expect(!sender.unacknowledgedSent(atLeast: 5))
        // The peer holds 2 to 5 (a reader that stopped taking): only 1 still counts.
        _ = sender.receive(Packet(.ack, token: 1, ack: 0, sack: 0b11110), now: now)
        #expect(!sender.unacknowledgedSent(atLeast: 5))
        _ = sender.receive(Packet(.ack, token: 1, ack: 1, sack: 0b1111), now: now)
        #expect(sender.unacknowledgedSent(atLeast: 100))
    }

    @Test func repeatedControlDatagramsBackOffToTheirCap() {
        let config = LinkConfig()
        let hello = (1...4).map { config.retryInterval(after: $0, cap: config.maximumTimeout).nanoseconds / 1_000_000 }
        #expect(hello == [100, 200, 250, 250])
        let goodbye = (1...LinkConfig.goodbyeTries).map { config.retryInterval(after: $0, cap: LinkConfig.goodbyeCap).nanoseconds / 1_000_000 }
        #expect(goodbye == [100, 200, 400, 800, 1000, 1000, 1000, 1000])
    }

    @Test func lossIsRepeatableWithASeedAndNearItsRate() {
        var first = LossSimulator(rate: 0.3, seed: 42)
        var second = LossSimulator(rate: 0.3, seed: 42)
        let a = (0..<10_000).map { _ in first.drops() }
        let b = (0..<10_000).map { _ in second.drops() }
        #expect(a == b)
        let dropped = a.filter { $0 }.count
        #expect((2_700...3_300).contains(dropped))
    }
}
