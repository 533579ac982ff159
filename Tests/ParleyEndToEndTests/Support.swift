import Foundation
import Synchronization
import ParleyClient
import ParleyServer
import Testing

/// A real server on an ephemeral loopback port with a database of its own.
struct RunningServer {
    let server: ParleyServer
    let port: Int
    /// The IRC listener's port, when the configuration has one.
    let ircPort: Int?
    /// The UDP listener's port, when the configuration has one.
    let udpPort: Int?
    let directory: String

    static func start(_ configure: (inout ServerConfig) -> Void = { _ in }) async throws -> RunningServer {
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("parley-e2e-\(UUID())").path
        var config = ServerConfig()
        config.listeners = [ListenAddress(scheme: .line, host: "127.0.0.1", port: 0), ListenAddress(scheme: .irc, host: "127.0.0.1", port: 0)]
        config.irc.serverName = "parley.test"
        config.dataDirectory = directory
        // The lowest bcrypt cost keeps the suite fast; the process tests run the real default (10).
        config.bcryptCost = 4
        config.threads = 2
        configure(&config)
        let server = try ParleyServer(config: config)
        let bound = try await server.start()
        return RunningServer(server: server, port: bound[0].address.port,
                             ircPort: bound.first { $0.address.scheme == .irc }?.address.port,
                             udpPort: bound.first { $0.address.scheme == .udp }?.address.port, directory: directory)
    }

    func client() async throws -> LineClient {
        let client = try await LineClient.connect(host: "127.0.0.1", port: port)
        _ = try await client.expect(prefix: "WELCOME ")
        return client
    }

    /// A connected client that registered (or logged in to) `name`.
    func user(_ name: String, password: String = "password1", register: Bool = true) async throws -> LineClient {
        let client = try await self.client()
        if register {
            try await client.register(name, password)
        } else {
            try await client.login(name, password)
        }
        return client
    }

    func stop() async {
        await server.shutdown()
        try? FileManager.default.removeItem(atPath: directory)
    }
}

/// Runs the body against a fresh server and always shuts it down.
func withServer(_ configure: (inout ServerConfig) -> Void = { _ in },
                _ body: (RunningServer) async throws -> Void) async throws {
    let running = try await RunningServer.start(configure)
    do {
        try await body(running)
    } catch {
        await running.stop()
        throw error
    }
    await running.stop()
}

extension LineClient {
    /// Sends a command and returns the reply line with one of the given tags (skipping events).
    func command(_ line: String, expecting tags: [String] = ["OK ", "ERR "]) async throws -> String {
        try await send(line)
        return try await expect("a reply to \(line)") { reply in tags.contains { reply.hasPrefix($0) } }
    }

    /// Reads lines up to and including the `OK` that ends a listing.
    func listing(_ command: String) async throws -> [String] {
        try await send(command)
        var lines: [String] = []
        while true {
            let line = try await nextLine()
            if line.hasPrefix("OK ") || line.hasPrefix("ERR ") { lines.append(line); return lines }
            if line.hasPrefix("USER ") || line.hasPrefix("ROOM ") || line.hasPrefix("HELP ") { lines.append(line) }
        }
    }
}

/// Runs `body`, or throws `LineClientError.timeout` if it has not finished within `timeout`.
func withTimeout<T: Sendable>(_ timeout: Duration, _ what: String,
                              _ body: @escaping @Sendable () async throws -> T) async throws -> T {
    try await withThrowingTaskGroup(of: T?.self) { group in
        group.addTask { try await body() }
        group.addTask {
            try await Task.sleep(for: timeout)
            return nil
        }
        defer { group.cancelAll() }
        guard let result = try await group.next(), let value = result else {
            throw LineClientError.timeout(waitingFor: what)
        }
        return value
    }
}

/// The real `parley` binary run as a child process, its output read line by line as a user would see it.
final class ParleyProcess: Sendable {
    let process = Process()
    let stdin = Pipe()
    private let output = Pipe()
    private let lines: AsyncStream<String>
    private let exits: AsyncStream<Int32>

    static var binary: URL {
        URL(fileURLWithPath: CommandLine.arguments[0]).deletingLastPathComponent().appendingPathComponent("parley")
    }

    /// `mergeErrors`: standard error goes to the same stream as standard output.
    init(_ arguments: [String], mergeErrors: Bool = false) throws {
        process.executableURL = Self.binary
        process.arguments = arguments
        process.standardInput = stdin
        process.standardOutput = output
        if mergeErrors { process.standardError = output }
        let (lines, lineSink) = AsyncStream<String>.makeStream()
        self.lines = lines
        let pending = Mutex(Data())
        output.fileHandleForReading.readabilityHandler = { handle in
            let chunk = handle.availableData
            guard !chunk.isEmpty else {
                handle.readabilityHandler = nil
                lineSink.finish()
                return
            }
            pending.withLock { pending in
                pending.append(chunk)
                while let end = pending.firstIndex(of: UInt8(ascii: "\n")) {
                    lineSink.yield(String(decoding: pending[pending.startIndex..<end], as: UTF8.self))
                    pending.removeSubrange(pending.startIndex...end)
                }
            }
        }
        let (exits, exitSink) = AsyncStream<Int32>.makeStream()
        self.exits = exits
        process.terminationHandler = { exitSink.yield($0.terminationStatus); exitSink.finish() }
        try process.run()
    }

    /// The next output line that matches (earlier lines are skipped).
    func line(_ what: String, within timeout: Duration = .seconds(30),
              where matches: @escaping @Sendable (String) -> Bool) async throws -> String {
        let lines = self.lines
        return try await withTimeout(timeout, what) {
            for await line in lines where matches(line) { return line }
            throw LineClientError.closed
        }
    }

    func line(startingWith prefix: String) async throws -> String {
        try await line("output starting with \(prefix)") { $0.hasPrefix(prefix) }
    }

    func line(containing text: String) async throws -> String {
        try await line("output containing \(text)") { $0.contains(text) }
    }

    func type(_ line: String) {
        stdin.fileHandleForWriting.write(Data((line + "\n").utf8))
    }

    /// Waits for the process to end by itself, bounded; returns its status.
    func exitStatus(within timeout: Duration = .seconds(30)) async throws -> Int32 {
        let exits = self.exits
        do {
            return try await withTimeout(timeout, "parley to exit") {
                for await status in exits { return status }
                throw LineClientError.closed
            }
        } catch {
            process.terminate()
            throw error
        }
    }
}
