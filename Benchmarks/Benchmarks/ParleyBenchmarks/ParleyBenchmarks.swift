import Benchmark
import Foundation
import NIOCore
import NIOEmbedded
import ParleyCore
import ParleyIRC
import ParleyLine
import Synchronization

// The hot paths of a busy server, one operation (or one message) per iteration, with the
// allocations each costs: what `parley load` measures end to end, taken apart.
let benchmarks: @Sendable () -> Void = {
    Benchmark.defaultConfiguration = .init(
        metrics: [.wallClock, .cpuTotal, .mallocCountTotal, .throughput],
        scalingFactor: .kilo,
        maxDuration: .seconds(3),
        maxIterations: 1_000_000
    )

    let privmsg = ":alice!alice@127.0.0.1 PRIVMSG #parley :the quick brown fox jumps over the lazy dog"
    let tagged = "@time=2026-12-01T10:00:00.000Z;msgid=abc123 :alice!alice@127.0.0.1 PRIVMSG #parley :hello there"

    Benchmark("IRC parse PRIVMSG") { benchmark in
        for _ in benchmark.scaledIterations {
            blackHole(try? IRCMessage(parsing: privmsg))
        }
    }

    Benchmark("IRC parse with tags") { benchmark in
        for _ in benchmark.scaledIterations {
            blackHole(try? IRCMessage(parsing: tagged))
        }
    }

    Benchmark("IRC serialize PRIVMSG") { benchmark in
        let message = IRCMessage(source: "alice!alice@127.0.0.1", "PRIVMSG", ["#parley", "the quick brown fox"])
        for _ in benchmark.scaledIterations {
            blackHole(message.serialized())
        }
    }

    Benchmark("line parse chat text") { benchmark in
        for _ in benchmark.scaledIterations {
            blackHole(LineParser.parse("the quick brown fox jumps over the lazy dog"))
        }
    }

    Benchmark("line parse /msg command") { benchmark in
        for _ in benchmark.scaledIterations {
            blackHole(LineParser.parse("/msg bob the quick brown fox"))
        }
    }

    Benchmark("line framer, 100 lines a read") { benchmark in
        var chunk = ByteBuffer()
        for index in 0..<100 { chunk.writeString("message number \(index) from a busy client\n") }
        for _ in benchmark.scaledIterations {
            var framer = LineFramer()
            framer.append(chunk)
            while let line = framer.next() { blackHole(line) }
        }
    }

    let message = HubEvent.message(RoomMessage(
        room: "#parley", sender: Speaker(name: "alice", user: "alice", host: "127.0.0.1", account: "alice"),
        text: "the quick brown fox jumps over the lazy dog", kind: .say, sequence: 1, time: Date(), serial: 1))

    Benchmark("render room message, IRC") { benchmark in
        let format = IRCFormats(serverName: "parley.local").format(IRCRenderOptions())
        for _ in benchmark.scaledIterations {
            blackHole(format.render(message))
        }
    }

    Benchmark("render room message, IRC with server-time and message-tags") { benchmark in
        let format = IRCFormats(serverName: "parley.local").format(IRCRenderOptions(capabilities: ["server-time", "message-tags"]))
        for _ in benchmark.scaledIterations {
            blackHole(format.render(message))
        }
    }

    Benchmark("render room message, line") { benchmark in
        for _ in benchmark.scaledIterations {
            blackHole(LineFormat.shared.render(message))
        }
    }

    // The hub's fan-out: one message to every member of a room (no history), the copies handed to
    // each member's sink on its loop. One iteration is one message; divide by the members for the
    // cost of one copy.
    for members in [100, 1000] {
        Benchmark("fan-out one message to \(members) members", configuration: .init(scalingFactor: .one)) { benchmark in
            let loop = EmbeddedEventLoop()
            let hub = Hub(config: HubConfig(), accounts: NoAccounts(), hasher: NoHasher())
            let format = IRCFormats(serverName: "parley.local").format(IRCRenderOptions())
            var sessions: [Session] = []
            for _ in 0..<members {
                guard let session = hub.connect(door: "bench", address: "127.0.0.1:1", sink: CountingSink(loop: loop, format: format)) else { return }
                _ = try? hub.join(session, room: "#fanout")
                sessions.append(session)
            }
            loop.run()
            let sender = sessions[0]
            benchmark.startMeasurement()
            for _ in benchmark.scaledIterations {
                _ = try? hub.say(sender, room: "#fanout", text: "the quick brown fox jumps over the lazy dog")
                loop.run()
            }
            benchmark.stopMeasurement()
        }
    }
}

/// A sink that counts what it is handed, as a connection's sink would gather it.
final class CountingSink: SessionSink {
    let loop: EmbeddedEventLoop
    let wireFormat: any WireFormat
    let bytes = Atomic<Int>(0)
    init(loop: EmbeddedEventLoop, format: any WireFormat) {
        self.loop = loop
        self.wireFormat = format
    }
    var eventLoop: any EventLoop { loop }
    var format: any WireFormat { wireFormat }
    func enqueue(_ buffer: ByteBuffer) { bytes.add(buffer.readableBytes, ordering: .relaxed) }
    func flushQueued() {}
    func disconnect(finalBytes: ByteBuffer?) {}
}

struct NoAccounts: AccountStore {
    func createAccount(_ record: AccountRecord) async throws -> Bool { false }
    func account(named name: String) async throws -> AccountRecord? { nil }
}

struct NoHasher: PasswordHasher {
    func hash(_ password: String) async throws -> String { password }
    func verify(_ password: String, against hash: String) async throws -> Bool { false }
}
