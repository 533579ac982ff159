import Foundation
import ParleyClient
import ParleyServer
import Testing

extension LineClient {
    /// Sends `/history ...` and returns the HISTORY lines and the closing OK or ERR.
    func history(_ command: String = "/history") async throws -> (lines: [String], end: String) {
        try await send(command)
        var lines: [String] = []
        while true {
            let line = try await nextLine()
            if line.hasPrefix("HISTORY ") { lines.append(line) }
            if line.hasPrefix("OK history") || line.hasPrefix("ERR ") { return (lines, line) }
        }
    }

    /// The text of a HISTORY line, after `NAME: `.
    static func text(ofHistory line: String) -> String {
        line.split(separator: ": ", maxSplits: 1).last.map(String.init) ?? ""
    }
}

@Suite(.timeLimit(.minutes(2))) struct HistoryTests {
    @Test func joiningReplaysTheLastMessagesThenHistoryPagesBack() async throws {
        try await withServer { server in
            let alice = try await server.user("alice")
            _ = try await alice.command("/join #dev")
            for n in 1...25 { try await alice.send("message \(n)") }
            for n in 1...25 { #expect(try await alice.expect(prefix: "MSG #dev") == "MSG #dev alice: message \(n)") }

            let bob = try await server.user("bob")
            try await bob.send("/join #dev")
            #expect(try await bob.nextLine() == "JOIN #dev bob")
            var replay: [String] = []
            for _ in 0..<20 { replay.append(try await bob.nextLine()) }
            #expect(replay.map(LineClient.text(ofHistory:)) == (6...25).map { "message \($0)" })
            #expect(replay.allSatisfy { $0.hasPrefix("HISTORY #dev 20") && $0.contains("Z alice: ") })
            #expect(try await bob.nextLine() == "OK join You are now talking in #dev.")

            // Live messages after the replay are plain MSG lines, each once.
            try await alice.send("live one")
            #expect(try await bob.expect(prefix: "MSG ") == "MSG #dev alice: live one")

            // /history pages back from the oldest message shown so far.
            let page = try await bob.history("/history 3")
            #expect(page.lines.map(LineClient.text(ofHistory:)) == ["message 3", "message 4", "message 5"])
            #expect(page.end == "OK history 3 messages from #dev, oldest first; /history again for older ones.")
            let last = try await bob.history("/history #dev 10")
            #expect(last.lines.map(LineClient.text(ofHistory:)) == ["message 1", "message 2"])
            #expect(try await bob.history("/history").end == "OK history No older messages in #dev.")

            // Errors: a room one is not in, a bad count, DMs for guests.
            #expect(try await bob.history("/history #elsewhere").end.hasPrefix("ERR not-in-room "))
            #expect(try await bob.command("/history #dev 500") == "ERR usage Usage: /history [#room|NAME] [N]")
            let guest = try await server.client()
            #expect(try await guest.history("/history alice").end.hasPrefix("ERR login-required Only logged-in users"))
        }
    }

    @Test func directMessagesToAnOfflineAccountArriveOnceAtItsNextLogin() async throws {
        try await withServer { server in
            let bob = try await server.user("bob")
            try await bob.send("/quit")
            try await bob.waitForClose()

            let alice = try await server.user("alice")
            for n in 1...3 {
                try await alice.send("/msg bob note \(n)")
                #expect(try await alice.expect(prefix: "DM ") == "DM to bob (offline, kept until they log in): note \(n)")
            }
            #expect(try await alice.command("/msg nobody-here hi") == "ERR no-such-user Nobody called nobody-here is online. Type /list to see who is.")

            let back = try await server.client()
            try await back.send("/login bob password1")
            #expect(try await back.expect(prefix: "OK login") == "OK login You are now logged in as bob.")
            for n in 1...3 {
                let line = try await back.expect(prefix: "DM ")
                #expect(line.hasPrefix("DM from alice (offline, sent 20"))
                #expect(line.hasSuffix("Z): note \(n)"))
            }
            // Delivered once: at the next login only a new, live message arrives.
            try await back.send("/quit")
            try await back.waitForClose()
            let again = try await server.user("bob", register: false)
            try await alice.send("/msg bob are you there")
            #expect(try await again.expect(prefix: "DM ") == "DM from alice: are you there")
            // Both parties can read the conversation back.
            let history = try await again.history("/history alice 10")
            #expect(history.lines.map(LineClient.text(ofHistory:)) == ["note 1", "note 2", "note 3", "are you there"])
        }
    }

    @Test func historyAndWaitingMessagesSurviveARestart() async throws {
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("parley-restart-\(UUID())").path
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let configure: (inout ServerConfig) -> Void = { $0.dataDirectory = directory }
        try await withServer(configure) { server in
            let bob = try await server.user("bob")
            try await bob.send("/quit")
            try await bob.waitForClose()
            let alice = try await server.user("alice")
            _ = try await alice.command("/join #keep")
            for n in 1...3 { try await alice.send("kept \(n)") }
            _ = try await alice.expect { $0 == "MSG #keep alice: kept 3" }
            try await alice.send("/msg bob while you were away")
            _ = try await alice.expect(prefix: "DM to bob")
        }
        try await withServer(configure) { server in
            let bob = try await server.user("bob", register: false)
            #expect(try await bob.expect(prefix: "DM ").hasSuffix("): while you were away"))
            try await bob.send("/join #keep")
            _ = try await bob.expect(prefix: "JOIN #keep bob")
            var replay: [String] = []
            for _ in 0..<3 { replay.append(try await bob.nextLine()) }
            #expect(replay.map(LineClient.text(ofHistory:)) == ["kept 1", "kept 2", "kept 3"])
            // New messages carry on after the old ones, in the same history.
            try await bob.send("new")
            _ = try await bob.expect(prefix: "MSG #keep")
            #expect(try await bob.history("/history 10").end == "OK history No older messages in #keep.")
            let alice = try await server.user("alice", register: false)
            try await alice.send("/join #keep")
            var all: [String] = []
            for _ in 0..<4 { all.append(LineClient.text(ofHistory: try await alice.expect(prefix: "HISTORY #keep"))) }
            #expect(all == ["kept 1", "kept 2", "kept 3", "new"])
        }
    }

    @Test func concurrentSendersAreSeenAndStoredInOneOrder() async throws {
        try await withServer { server in
            var members: [LineClient] = []
            for n in 0..<4 {
                let member = try await server.user("member\(n)")
                _ = try await member.command("/join #busy")
                members.append(member)
            }
            try await withThrowingTaskGroup(of: Void.self) { group in
                for (n, client) in members.enumerated() {
                    group.addTask { for m in 0..<40 { try await client.send("o\(n)-\(m)") } }
                }
                try await group.waitForAll()
            }
            var orders: [[String]] = []
            for client in members {
                var order: [String] = []
                for _ in 0..<160 { order.append(String(try await client.expect(prefix: "MSG #busy").split(separator: ": ").last ?? "")) }
                orders.append(order)
            }
            for order in orders.dropFirst() { #expect(order == orders[0]) }
            // Each sender's messages in the order it sent them.
            for n in 0..<4 { #expect(orders[0].filter { $0.hasPrefix("o\(n)-") } == (0..<40).map { "o\(n)-\($0)" }) }
            // History has the same order.
            let first = try await members[0].history("/history 100")
            let second = try await members[0].history("/history 100")
            #expect((second.lines + first.lines).map(LineClient.text(ofHistory:)) == orders[0])
        }
    }

    @Test func theWriterPrunesRoomsPastTheirLimitInTheBackground() async throws {
        try await withServer({ $0.history.maxPerRoom = 5; $0.pruneInterval = .zero }) { server in
            let alice = try await server.user("alice")
            _ = try await alice.command("/join #small")
            for n in 1...12 { try await alice.send("m\(n)") }
            _ = try await alice.expect { $0 == "MSG #small alice: m12" }
            // The writer prunes after each pass. A barrier runs in a pass at or after the one that stored
            // m12; a barrier queued from it runs in a later pass, so after that pass's pruning.
            let log = try #require(server.server.log)
            await withCheckedContinuation { done in log.barrier { log.barrier { done.resume() } } }
            let page = try await alice.history("/history 50")
            #expect(page.lines.map(LineClient.text(ofHistory:)) == (8...12).map { "m\($0)" })
            #expect(server.server.log?.messagesPruned.load(ordering: .relaxed) == 7)
        }
    }

    @Test func withHistoryOffNothingIsKeptOrReplayed() async throws {
        try await withServer({ $0.keepHistory = false; $0.history.replayOnJoin = 0 }) { server in
            let alice = try await server.user("alice")
            try await alice.send("gone with the wind")
            _ = try await alice.expect(prefix: "MSG ")
            #expect(try await alice.history().end == "ERR no-history This server keeps no history (it runs with --history off).")
            #expect(try await alice.command("/msg bob hi") == "ERR no-such-user Nobody called bob is online. Type /list to see who is.")
            let bob = try await server.user("bob")
            try await alice.send("after bob")
            // Bob's first chat line is the live one: nothing was replayed.
            #expect(try await bob.expect(prefix: "MSG ") == "MSG #lobby alice: after bob")
        }
    }
}
