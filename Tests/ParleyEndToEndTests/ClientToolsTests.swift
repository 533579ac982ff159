import Foundation
import ParleyClient
import ParleyServer
import ParleyUDP
import Testing

@Suite struct ChatFormattingTests {
    @Test(arguments: [
        ("MSG #lobby alice: hi: there", "[#lobby] <alice> hi: there"),
        ("ACTION #dev alice waves", "[#dev] * alice waves"),
        ("DM from bob: psst", "*bob* psst"),
        ("DM to bob: psst", "-> *bob* psst"),
        ("ERR no-such-user Nobody called bob is online.", "! Nobody called bob is online."),
        ("JOIN #dev bob", "-- bob joined #dev"),
        ("PART #dev bob lunch", "-- bob left #dev (lunch)"),
        ("NICK guest-1 alice", "-- guest-1 is now known as alice"),
        ("NOTICE server: maintenance", "-- server: maintenance"),
        ("OK join You are now talking in #dev.", "You are now talking in #dev."),
        ("BYE Goodbye, alice.", "Goodbye, alice."),
        ("HISTORY #dev 2026-12-01T15:19:19.123Z alice: hi: there", "[#dev 2026-12-01 15:19] <alice> hi: there"),
        ("HISTORY #dev 2026-12-01T15:19:19.123Z * alice waves", "[#dev 2026-12-01 15:19] * alice waves"),
        ("SOMETHING new", "SOMETHING new"),
    ])
    func serverLinesAreShownReadably(_ line: String, _ shown: String) {
        #expect(formatServerLine(line) == shown)
    }
}

@Suite(.timeLimit(.minutes(3))) struct LoadTests {
    /// The course scenario: 50 clients at once, half registering and half logging in, chatting in one
    /// room with every message checked, then logging out.
    @Test func courseScenarioWithFiftyClients() async throws {
        try await withServer { server in
            let report = await runLoad(LoadOptions(port: server.port, clients: 50, messages: 3, timeout: .seconds(120)))
            #expect(report.errors == [])
            #expect(report.ok == 50 && report.failed == 0)
            #expect(report.sent == 150)
            #expect(report.expected == 50 * 150 && report.delivered == report.expected && report.lost == 0)
            #expect(report.latencyMs.register.count == 25 && report.latencyMs.login.count == 25)
            #expect(report.latencyMs.message.count == 150)
            #expect(report.succeeded)
            // Everyone logged out and left.
            #expect(server.server.hub.counters.activeSessions.load(ordering: .relaxed) == 0)
            #expect(server.server.hub.counters.messagesRelayed.load(ordering: .relaxed) == 150)
        }
    }

    /// The throughput scenario, small and short: every message acknowledged and delivered to every
    /// member of its room, exactly as many as the room sizes call for.
    @Test(arguments: [false, true])
    func roomsScenarioDeliversEverythingItSends(overUDP: Bool) async throws {
        try await withServer({ config in
            config.line.floodRate = 0
            if overUDP { config.listeners.append(ListenAddress(scheme: .udp, host: "127.0.0.1", port: 0)) }
        }) { server in
            var options = ThroughputOptions()
            options.port = overUDP ? server.udpPort ?? 0 : server.port
            // The throughput clients write from inside their reads, which the UDP link must survive.
            if overUDP { options.transport = .udp(UDPClientOptions(loss: 0.1, seed: 5)) }
            options.clients = 12
            options.rooms = 3
            options.seconds = 1
            options.window = 4
            options.observers = 12
            let report = await runThroughput(options)
            #expect(report.errors == [])
            #expect(report.sent > 0 && report.acknowledged == report.sent)
            // Four members a room: each message reaches all four, its sender included.
            #expect(report.expected == report.sent * 4 && report.delivered == report.expected && report.lost == 0)
            // Every client observes: one latency for each delivery; the pinger got answers.
            #expect(report.latencyMs.count == report.delivered)
            #expect((report.pingMs?.count ?? 0) > 0)
            #expect(report.succeeded)
            #expect(server.server.log?.messagesStored.load(ordering: .relaxed) == report.sent)
        }
    }

    /// Fan-out: everyone in one room, a few sending; every message reaches every member, over the line
    /// door (the sender included) and over IRC (everyone but the sender, acknowledged by PING).
    @Test(arguments: [LoadProtocol.line, .irc])
    func fanoutScenarioDeliversEveryMessageToEveryMember(_ kind: LoadProtocol) async throws {
        try await withServer({ config in
            config.line.floodRate = 0
            config.irc.floodRate = 0
        }) { server in
            var options = ThroughputOptions()
            options.port = kind == .irc ? server.ircPort ?? 0 : server.port
            options.protocolKind = kind
            options.clients = 12
            options.rooms = 1
            options.senders = 3
            options.seconds = 1
            options.window = 4
            options.observers = 2
            options.serverPID = getpid()
            let report = await runThroughput(options)
            #expect(report.errors == [])
            #expect(report.scenario == "fanout")
            #expect(report.sent > 0 && report.acknowledged == report.sent)
            let receivers = kind == .irc ? 11 : 12
            #expect(report.expected == report.sent * receivers && report.delivered == report.expected && report.lost == 0)
            // Two observers of twelve: clients 5 and 11, both receivers of every message.
            #expect(report.latencyMs.count == report.sent * 2)
            #expect(report.serverCPUSeconds != nil && (report.pingMs?.count ?? 0) > 0)
            #if os(Linux)
            #expect(report.stealPercent != nil && report.jsonLine.contains("\"steal_percent\":"))
            #endif
            #expect(server.server.hub.counters.messagesRelayed.load(ordering: .relaxed) == report.sent)
            #expect(server.server.log?.messagesStored.load(ordering: .relaxed) == report.sent)
        }
    }

    /// The course scenario over the UDP door, with a third of the datagrams lost on both sides.
    @Test func courseScenarioOverUDPWithLoss() async throws {
        try await withServer({ config in
            config.listeners.append(ListenAddress(scheme: .udp, host: "127.0.0.1", port: 0))
            config.udp.loss = 0.3
            config.udp.seed = 3
        }) { server in
            let counters = UDPCounters()
            var options = LoadOptions(port: server.udpPort ?? 0, clients: 10, messages: 3, timeout: .seconds(120))
            options.transport = .udp(UDPClientOptions(loss: 0.3, seed: 4, counters: counters))
            let report = await runLoad(options)
            #expect(report.errors == [])
            #expect(report.ok == 10 && report.lost == 0 && report.duplicates == 0)
            #expect(report.succeeded)
            #expect(counters.retransmissions.load(ordering: .relaxed) > 0)
            #expect(server.server.udpCounters.retransmissions.load(ordering: .relaxed) > 0)
        }
    }

    /// Idle connections on both doors: all register, and the server's memory is read from /proc
    /// (here the server runs in the test process, so its pid is ours).
    @Test(arguments: [LoadProtocol.line, .irc])
    func connectionsScenarioHoldsEveryClient(_ kind: LoadProtocol) async throws {
        try await withServer { server in
            var options = ConnectionsOptions()
            options.port = kind == .irc ? server.ircPort ?? 0 : server.port
            options.protocolKind = kind
            options.clients = 40
            options.holdSeconds = 0
            options.serverPID = getpid()
            let report = await runConnections(options)
            #expect(report.errors == [])
            #expect(report.registered == 40 && report.failed == 0 && report.registerMs.count == 40)
            #expect(report.serverRSSBeforeKB != nil && report.serverRSSHeldKB != nil && report.serverBytesPerConnection != nil)
            #expect(report.serverCPUSeconds != nil)
            #expect(report.succeeded)
            #expect(report.jsonLine.contains("\"scenario\":\"connections\""))
        }
    }

    @Test func aConnectionsRunAgainstNoServerCountsEveryClientAsFailedAndSaysWhy() async throws {
        var options = ConnectionsOptions()
        options.port = 1  // tcpmux: no listener here
        options.protocolKind = .irc
        options.clients = 3
        options.holdSeconds = 0
        options.timeout = .seconds(20)
        let report = await runConnections(options)
        #expect(!report.succeeded)
        #expect(report.registered == 0 && report.failed == 3 && report.errorCount == 3)
        #expect(report.errors.first?.contains("refused") == true)
    }

    @Test func aLoadRunAgainstNoServerFailsAndSaysWhy() async throws {
        // Port 1 (tcpmux) has no listener here; a port freed by another test could be reused at once.
        let port = 1
        let report = await runLoad(LoadOptions(port: port, clients: 2, messages: 1, timeout: .seconds(20)))
        #expect(!report.succeeded)
        #expect(report.failed == 2)
        #expect(report.errors.first?.contains("refused") == true)
    }
}

/// Drives the real `parley chat` over pipes, as a user at a terminal would.
@Suite(.serialized, .timeLimit(.minutes(2))) struct ChatCommandTests {
    func chat(_ arguments: [String]) throws -> ParleyProcess {
        // What a user sees: standard output and standard error together.
        try ParleyProcess(["chat"] + arguments, mergeErrors: true)
    }

    @Test func chatRegistersSendsReceivesAndQuits() async throws {
        try await withServer { server in
            let bob = try await server.user("bob")
            let passwordFile = FileManager.default.temporaryDirectory.appendingPathComponent("pw-\(UUID())").path
            try "password1\n".write(toFile: passwordFile, atomically: true, encoding: .utf8)
            defer { try? FileManager.default.removeItem(atPath: passwordFile) }
            let chat = try chat(["--port", "\(server.port)", "--user", "alice", "--register", "--password-file", passwordFile])
            _ = try await chat.line(containing: "logged in as alice")
            chat.type("hello bob")
            #expect(try await bob.expect(prefix: "MSG ") == "MSG #lobby alice: hello bob")
            #expect(try await chat.line(containing: "<alice> hello bob") == "[#lobby] <alice> hello bob")
            try await bob.send("hi alice")
            #expect(try await chat.line(containing: "<bob>") == "[#lobby] <bob> hi alice")
            try await bob.send("/msg alice a secret")
            #expect(try await chat.line(containing: "*bob*") == "*bob* a secret")
            chat.type("/quit")
            #expect(try await chat.exitStatus() == 0)
        }
    }

    /// `parley chat --udp` with loss on its side and the server's: the same chat, nothing lost.
    @Test func chatOverUDPWithLoss() async throws {
        try await withServer({ config in
            config.listeners.append(ListenAddress(scheme: .udp, host: "127.0.0.1", port: 0))
            config.udp.loss = 0.3
            config.udp.seed = 8
        }) { server in
            let bob = try await server.user("bob")
            let chat = try chat(["--udp", "--loss", "0.3", "--seed", "9", "--port", "\(server.udpPort ?? 0)"])
            _ = try await chat.line(containing: "Welcome to Parley")
            chat.type("/nick carol")
            _ = try await chat.line(containing: "You are now called carol")
            for index in 1...20 { chat.type("datagram \(index)") }
            for index in 1...20 {
                #expect(try await bob.expect(prefix: "MSG #lobby carol:") == "MSG #lobby carol: datagram \(index)")
            }
            try await bob.send("got them")
            #expect(try await chat.line(containing: "<bob>") == "[#lobby] <bob> got them")
            chat.type("/quit")
            #expect(try await chat.exitStatus() == 0)
        }
    }

    @Test func chatSaysSoWhenTheServerGoesAway() async throws {
        let running = try await RunningServer.start()
        let chat = try chat(["--port", "\(running.port)"])
        _ = try await chat.line(containing: "Welcome to Parley")
        await running.stop()
        _ = try await chat.line(containing: "connection closed by the server")
        #expect(try await chat.exitStatus() != 0)
    }

    @Test func chatReportsAWrongPassword() async throws {
        try await withServer { server in
            _ = try await server.user("alice")
            let chat = try chat(["--port", "\(server.port)", "--user", "alice"])
            chat.type("not-the-password")
            _ = try await chat.line(containing: "Unknown account or wrong password")
            #expect(try await chat.exitStatus() == 1)
        }
    }
}
