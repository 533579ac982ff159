import Foundation
import ParleyClient
import ParleyServer
import ParleyStore
import Testing

@Suite(.timeLimit(.minutes(2))) struct ConsoleTests {
    @Test func listCountKickSayAndExit() async throws {
        try await withServer { server in
            let console = Console(hub: server.server.hub, log: server.server.log)
            let alice = try await server.user("alice")
            let guest = try await server.client()
            _ = try await alice.command("/join #dev")

            guard case .output(let list) = console.execute("list") else { Issue.record("list gave no output"); return }
            #expect(list.count == 3)
            #expect(list.contains { $0.contains("\talice\tline\t127.0.0.1:") && $0.contains("#lobby,#dev") && $0.contains("since 20") })
            #expect(list.contains { $0.contains("(guest)") })
            #expect(list.last == "2 clients connected")

            #expect(console.execute("count") == .output(["clients 2 rooms 2 messages 0 deliveries \(server.server.hub.counters.deliveries.load(ordering: .relaxed)) connections-total 2 stored 0 transactions 0 pruned 0"]))

            #expect(console.execute("say maintenance at noon") == .output(["notice sent to 2 clients"]))
            #expect(try await guest.expect(prefix: "NOTICE ") == "NOTICE server: maintenance at noon")

            #expect(console.execute("kick alice spamming") == .output(["kicked alice (1 connection)"]))
            #expect(try await alice.expect(prefix: "BYE ") == "BYE You were disconnected by the server operator: spamming")
            try await alice.waitForClose()
            #expect(try await guest.expect(prefix: "QUIT ") == "QUIT alice")
            #expect(console.execute("kick alice") == .output(["nobody called alice is connected"]))

            #expect(console.execute("dance") == .output(["unknown command \"dance\"; type help for the list"]))
            #expect(console.execute("help") == .output(Console.help))
            #expect(console.execute("exit") == .exit)
        }
    }
}

@Suite(.timeLimit(.minutes(2))) struct ShutdownTests {
    @Test func shutdownSaysGoodbyeToEveryClientAndClosesThem() async throws {
        let running = try await RunningServer.start()
        var clients: [LineClient] = []
        for _ in 0..<5 { clients.append(try await running.client()) }
        await running.stop()
        for client in clients {
            #expect(try await client.expect(prefix: "BYE ") == "BYE The server is shutting down. Goodbye!")
            try await client.waitForClose()
        }
        await #expect(throws: (any Error).self) {
            _ = try await LineClient.connect(host: "127.0.0.1", port: running.port)
        }
    }

    @Test func shutdownIsBoundedWhenAClientDoesNotRead() async throws {
        let running = try await RunningServer.start {
            $0.shutdownTimeout = .seconds(1)
            $0.line.closeGrace = .seconds(60)
            $0.outboundLimit = 64 << 20
            $0.line.floodRate = 0
        }
        let stuck = try await LineClient.connect(host: "127.0.0.1", port: running.port, receiveBufferSize: 4096)
        _ = try await stuck.expect(prefix: "JOIN ")
        await stuck.pauseReading()
        // Fill the kernel's buffers towards the stuck client so its goodbye cannot be delivered.
        let sender = try await running.client()
        let text = String(repeating: "s", count: 4000)
        for i in 0..<1500 { try await sender.send("\(i) \(text)") }
        for _ in 0..<1500 { _ = try await sender.expect(prefix: "MSG ") }
        let clock = ContinuousClock()
        let start = clock.now
        await running.stop()
        let took = clock.now - start
        #expect(took >= .milliseconds(900))
        #expect(took < .seconds(10))
        await stuck.resumeReading()
        try await stuck.waitForClose(timeout: .seconds(30))
    }
}

extension ParleyProcess {
    /// `parley serve` on a free loopback port with its own data directory.
    static func server(directory: String, extra: [String] = []) throws -> ParleyProcess {
        try ParleyProcess(["serve", "--listen", "line://127.0.0.1:0", "--data-dir", directory] + extra)
    }

    func port() async throws -> Int {
        let line = try await line(startingWith: "listening line://")
        guard let port = line.split(separator: ":").last.flatMap({ Int($0) }) else {
            throw LineClientError.timeout(waitingFor: "a port in \(line)")
        }
        return port
    }
}

@Suite(.serialized, .timeLimit(.minutes(3))) struct ProcessTests {
    func temporaryDirectory() -> String {
        FileManager.default.temporaryDirectory.appendingPathComponent("parley-process-\(UUID())").path
    }

    @Test(arguments: [SIGTERM, SIGINT])
    func aSignalShutsDownCleanly(_ signalNumber: Int32) async throws {
        let directory = temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let server = try ParleyProcess.server(directory: directory)
        let client = try await LineClient.connect(host: "127.0.0.1", port: try await server.port())
        _ = try await client.expect(prefix: "WELCOME ")
        kill(server.process.processIdentifier, signalNumber)
        #expect(try await client.expect(prefix: "BYE ") == "BYE The server is shutting down. Goodbye!")
        try await client.waitForClose()
        #expect(try await server.exitStatus() == 0)
    }

    @Test func consoleExitShutsDownAndAccountsSurviveARestart() async throws {
        let directory = temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: directory) }
        do {
            let server = try ParleyProcess.server(directory: directory)
            let port = try await server.port()
            let client = try await LineClient.connect(host: "127.0.0.1", port: port)
            try await client.register("alice", "password1")
            server.type("count")
            #expect(try await server.line(startingWith: "clients ").hasPrefix("clients 1 rooms 1 messages 0"))
            server.type("exit")
            #expect(try await client.expect(prefix: "BYE ").hasPrefix("BYE The server is shutting down"))
            #expect(try await server.exitStatus() == 0)
        }
        // The password is stored only as a bcrypt hash of cost 10.
        let store = try SQLiteStore(directory: directory)
        let record = try await store.account(named: "alice")
        #expect(record?.passwordHash.hasPrefix("$2b$10$") == true)
        #expect(record?.passwordHash.contains("password1") == false)
        try store.close()
        do {
            let server = try ParleyProcess.server(directory: directory, extra: ["--no-console"])
            let client = try await LineClient.connect(host: "127.0.0.1", port: try await server.port())
            try await client.login("alice", "password1")
            kill(server.process.processIdentifier, SIGTERM)
            #expect(try await server.exitStatus() == 0)
        }
    }

    #if os(Linux)
    /// The server runs itself again with glibc's larger cache of freed blocks (the same process), and
    /// serves as before.
    @Test func theServerRunsWithALargerMallocCache() async throws {
        let directory = temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let server = try ParleyProcess.server(directory: directory)
        let port = try await server.port()
        let environment = try String(decoding: Data(contentsOf: URL(fileURLWithPath: "/proc/\(server.process.processIdentifier)/environ")), as: UTF8.self)
        let tunables = environment.split(separator: "\0").first { $0.hasPrefix("GLIBC_TUNABLES=") }
        #expect(tunables?.contains("glibc.malloc.tcache_count=") == true)
        let client = try await LineClient.connect(host: "127.0.0.1", port: port)
        _ = try await client.expect(prefix: "WELCOME ")
        kill(server.process.processIdentifier, SIGTERM)
        #expect(try await server.exitStatus() == 0)
    }
    #endif

    @Test func endOfStdinStopsOnlyTheConsole() async throws {
        let directory = temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let server = try ParleyProcess.server(directory: directory)
        let port = try await server.port()
        try server.stdin.fileHandleForWriting.close()
        let client = try await LineClient.connect(host: "127.0.0.1", port: port)
        _ = try await client.expect(prefix: "WELCOME ")
        #expect(server.process.isRunning)
        kill(server.process.processIdentifier, SIGTERM)
        #expect(try await server.exitStatus() == 0)
    }

    @Test func badListenerGivesAClearError() async throws {
        let process = Process()
        process.executableURL = ParleyProcess.binary
        process.arguments = ["serve", "--listen", "ftp://127.0.0.1:21", "--no-console", "--data-dir", temporaryDirectory()]
        let errors = Pipe()
        process.standardError = errors
        try process.run()
        process.waitUntilExit()
        let text = String(decoding: errors.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        #expect(process.terminationStatus != 0)
        #expect(text.contains("unknown scheme \"ftp\""))
    }
}
