import ParleyClient
import ParleyIRC
import Testing

/// An IRC client over a real socket for tests: send a line, expect a message matching a predicate,
/// every wait bounded.
struct IRCTestClient {
    let connection: LineClient

    static func connect(_ server: RunningServer) async throws -> IRCTestClient {
        guard let port = server.ircPort else { throw LineClientError.connectFailed("the server has no IRC listener") }
        return IRCTestClient(connection: try await LineClient.connect(host: "127.0.0.1", port: port))
    }

    func send(_ line: String) async throws { try await connection.send(line + "\r") }

    /// The next message that matches, skipping others.
    func expect(_ what: String, timeout: Duration = .seconds(10), where matches: @escaping @Sendable (IRCMessage) -> Bool) async throws -> IRCMessage {
        let line = try await connection.expect(timeout: timeout, what) { line in
            (try? IRCMessage(parsing: line)).map(matches) ?? false
        }
        return try IRCMessage(parsing: line)
    }

    /// The next message with this command (or numeric).
    func expect(_ command: String, timeout: Duration = .seconds(10)) async throws -> IRCMessage {
        try await expect(command) { $0.command == command }
    }

    /// The very next message, whatever it is.
    func next(timeout: Duration = .seconds(10)) async throws -> IRCMessage {
        try IRCMessage(parsing: try await connection.nextLine(timeout: timeout))
    }

    /// Registers without CAP and reads through the end of the MOTD; returns the whole burst.
    @discardableResult
    func register(_ nick: String, pass: String? = nil) async throws -> [IRCMessage] {
        if let pass { try await send("PASS \(pass)") }
        try await send("NICK \(nick)")
        try await send("USER \(nick) 0 * :The real \(nick)")
        return try await readWelcome()
    }

    func readWelcome() async throws -> [IRCMessage] {
        var burst: [IRCMessage] = []
        while true {
            let message = try await next()
            burst.append(message)
            if message.command == "376" || message.command == "422" { return burst }
            if ["433", "432", "464", "ERROR"].contains(message.command) {
                throw LineClientError.connectFailed("registration refused: \(message)")
            }
        }
    }

    func close() async { await connection.close() }
}
