import Foundation
import ParleyClient
import Synchronization
import Testing

/// The real `parley` binary: killed with SIGKILL mid-stream, backed up while it runs.
@Suite(.serialized, .timeLimit(.minutes(3))) struct DurabilityTests {
    func temporaryDirectory() -> String {
        FileManager.default.temporaryDirectory.appendingPathComponent("parley-durability-\(UUID())").path
    }

    /// Every page of `/history` for the client's current room, oldest first.
    func wholeHistory(_ client: LineClient) async throws -> [String] {
        var pages: [[String]] = []
        while true {
            let page = try await client.history("/history 200")
            if page.lines.isEmpty { break }
            pages.insert(page.lines.map(LineClient.text(ofHistory:)), at: 0)
        }
        return pages.flatMap { $0 }
    }

    @Test func everyEchoedMessageSurvivesSIGKILLOnceAndInOrder() async throws {
        let directory = temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let senders = 4, perSender = 5000, killAfter = 1000
        let server = try ParleyProcess.server(directory: directory, extra: ["--no-console", "--flood-rate", "0"])
        let port = try await server.port()

        var clients: [LineClient] = []
        for _ in 0..<senders {
            let client = try await LineClient.connect(host: "127.0.0.1", port: port)
            _ = try await client.expect(prefix: "WELCOME ")
            _ = try await client.command("/join #crash")
            clients.append(client)
        }
        // What each client saw: its own echoes (acknowledgements), and every message in the room's order.
        let record = Recorder(clients: senders)
        let (enough, reachedEnough) = AsyncStream<Void>.makeStream()
        try await withThrowingTaskGroup(of: Void.self) { group in
            for (n, client) in clients.enumerated() {
                group.addTask {
                    // Sends until the connection dies; the server is killed long before the end.
                    for m in 0..<perSender {
                        do { try await client.send("c\(n)-\(m)") } catch { return }
                    }
                }
                group.addTask {
                    while let line = try? await client.nextLine(timeout: .seconds(20)) {
                        guard line.hasPrefix("MSG #crash ") else { continue }
                        let text = String(line.split(separator: ": ", maxSplits: 1).last ?? "")
                        if record.saw(text, by: n, isOwn: text.hasPrefix("c\(n)-")) == killAfter { reachedEnough.yield() }
                    }
                }
            }
            group.addTask {
                for await _ in enough { break }
                kill(server.process.processIdentifier, SIGKILL)
            }
            try await group.waitForAll()
        }
        #expect(try await server.exitStatus() == SIGKILL)
        let acknowledged = record.echoed.withLock { $0 }
        #expect(acknowledged.joined().count >= killAfter)

        let restarted = try ParleyProcess.server(directory: directory, extra: ["--no-console", "--history-replay", "0"])
        let reader = try await LineClient.connect(host: "127.0.0.1", port: try await restarted.port())
        _ = try await reader.expect(prefix: "WELCOME ")
        _ = try await reader.command("/join #crash")
        let history = try await wholeHistory(reader)
        kill(restarted.process.processIdentifier, SIGTERM)
        #expect(try await restarted.exitStatus() == 0)

        // Nothing stored twice; every acknowledged message stored, each sender's in the order sent.
        #expect(Set(history).count == history.count)
        for n in 0..<senders {
            let stored = history.filter { $0.hasPrefix("c\(n)-") }
            #expect(stored == (0..<stored.count).map { "c\(n)-\($0)" })
            #expect(Array(stored.prefix(acknowledged[n].count)) == acknowledged[n])
        }
        // And in the order every member saw live.
        for live in record.seen.withLock({ $0 }) {
            #expect(Array(history.prefix(live.count)) == live)
        }
    }

    @Test func aBackupTakenWhileServingRestoresAccountsAndHistory() async throws {
        let directory = temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let server = try ParleyProcess.server(directory: directory + "/live", extra: ["--no-console"])
        let alice = try await LineClient.connect(host: "127.0.0.1", port: try await server.port())
        try await alice.register("alice", "password1")
        _ = try await alice.command("/join #saved")
        for n in 1...5 { try await alice.send("saved \(n)") }
        _ = try await alice.expect { $0 == "MSG #saved alice: saved 5" }

        let backup = directory + "/parley-backup.sqlite"
        func runBackup() throws -> (status: Int32, output: String) {
            let process = Process()
            process.executableURL = ParleyProcess.binary
            process.arguments = ["backup", "--data-dir", directory + "/live", "--to", backup]
            let output = Pipe()
            process.standardOutput = output
            process.standardError = output
            try process.run()
            process.waitUntilExit()
            return (process.terminationStatus, String(decoding: output.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self))
        }
        let first = try runBackup()
        #expect(first.status == 0 && first.output.contains("backup written to \(backup)"))
        let again = try runBackup()
        #expect(again.status != 0 && again.output.contains("already exists"))
        // The server kept serving meanwhile.
        try await alice.send("after the backup")
        _ = try await alice.expect { $0 == "MSG #saved alice: after the backup" }
        kill(server.process.processIdentifier, SIGTERM)
        #expect(try await server.exitStatus() == 0)

        // Restore: the backup becomes the database of a new data directory.
        try FileManager.default.createDirectory(atPath: directory + "/restored", withIntermediateDirectories: true)
        try FileManager.default.copyItem(atPath: backup, toPath: directory + "/restored/parley.sqlite")
        let restored = try ParleyProcess.server(directory: directory + "/restored", extra: ["--no-console"])
        let back = try await LineClient.connect(host: "127.0.0.1", port: try await restored.port())
        try await back.login("alice", "password1")
        try await back.send("/join #saved")
        var replay: [String] = []
        for _ in 0..<5 { replay.append(LineClient.text(ofHistory: try await back.expect(prefix: "HISTORY #saved"))) }
        #expect(replay == (1...5).map { "saved \($0)" })
        _ = try await back.expect(prefix: "OK join")
        #expect(try await back.history("/history 20").end == "OK history No older messages in #saved.")
        kill(restored.process.processIdentifier, SIGTERM)
        #expect(try await restored.exitStatus() == 0)
    }

    @Test func aDamagedDatabaseStopsTheServerWithItsName() async throws {
        let directory = temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: directory) }
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        try Data(repeating: 0x42, count: 8192).write(to: URL(fileURLWithPath: directory + "/parley.sqlite"))
        let server = try ParleyProcess(["serve", "--listen", "line://127.0.0.1:0", "--data-dir", directory, "--no-console"], mergeErrors: true)
        let error = try await server.line(containing: "parley.sqlite")
        #expect(error.contains("Cannot open the database") && error.contains("not a database"))
        #expect(try await server.exitStatus() != 0)
    }
}

/// What the clients of the crash test saw, shared by their reading tasks.
final class Recorder: Sendable {
    /// Per client: the echoes of its own messages (its acknowledgements), in order.
    let echoed: Mutex<[[String]]>
    /// Per client: every room message, in the order it arrived.
    let seen: Mutex<[[String]]>
    private let echoes = Atomic<Int>(0)

    init(clients: Int) {
        echoed = Mutex(Array(repeating: [], count: clients))
        seen = Mutex(Array(repeating: [], count: clients))
    }

    /// Records a message; returns how many echoes all clients have had so far.
    func saw(_ text: String, by client: Int, isOwn: Bool) -> Int {
        seen.withLock { $0[client].append(text) }
        guard isOwn else { return -1 }
        echoed.withLock { $0[client].append(text) }
        return echoes.add(1, ordering: .relaxed).newValue
    }
}
