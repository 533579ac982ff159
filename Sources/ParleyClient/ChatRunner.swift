import NIOCore
import NIOPosix
import Synchronization

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif

// MARK: - Formatting server lines

/// Turns one line from the server into the text `parley chat` shows for it.
///
/// - `MSG #lobby alice: hi` → `[#lobby] <alice> hi`
/// - `ACTION #lobby alice waves` → `* alice waves`
/// - `DM from bob: x` → `*bob* x`; `DM to bob: x` → `-> *bob* x`
/// - `HISTORY #lobby 2026-12-01T15:19:19.123Z alice: hi` → `[#lobby 2026-12-01 15:19] <alice> hi` (and `* alice waves`)
/// - `ERR code text` → `! text` (`! code` when there is no text)
/// - `JOIN #room NAME` → `-- NAME joined #room`; `PART #room NAME [reason]` → `-- NAME left #room [(reason)]`
/// - `NICK OLD NEW` → `-- OLD is now known as NEW`
/// - `NOTICE server: text` → `-- server: text`
/// - `ROOM #room N` → `  #room (N)`; `USER NAME rooms` → `  NAME  rooms`; `HELP /cmd text` → `  /cmd  text`
/// - `WELCOME NAME text`, `OK COMMAND text`, `INFO text`, `BYE text` → `text`
/// - anything else is shown unchanged.
public func formatServerLine(_ line: String) -> String {
    let (tag, rest) = splitWord(Substring(line))
    switch tag {
    case "MSG":
        // MSG #room NAME: text
        let (room, afterRoom) = splitWord(rest)
        guard !room.isEmpty, let (name, text) = splitNameColonText(afterRoom) else { return line }
        return "[\(room)] <\(name)> \(text)"
    case "ACTION":
        // ACTION #room NAME text
        let (room, afterRoom) = splitWord(rest)
        let (name, text) = splitWord(afterRoom)
        guard !room.isEmpty, !name.isEmpty else { return line }
        return text.isEmpty ? "[\(room)] * \(name)" : "[\(room)] * \(name) \(text)"
    case "DM":
        // DM from NAME: text | DM to NAME: text
        let (direction, afterDirection) = splitWord(rest)
        guard let (name, text) = splitNameColonText(afterDirection) else { return line }
        switch direction {
        case "from": return "*\(name)* \(text)"
        case "to": return "-> *\(name)* \(text)"
        default: return line
        }
    case "HISTORY":
        // HISTORY TARGET TIME NAME: text | HISTORY TARGET TIME * NAME action
        let (target, afterTarget) = splitWord(rest)
        let (time, message) = splitWord(afterTarget)
        guard !target.isEmpty, time.count >= 16 else { return line }
        let when = String(time.prefix(16).map { $0 == "T" ? " " : $0 })
        if message.hasPrefix("* ") { return "[\(target) \(when)] \(message)" }
        guard let (name, text) = splitNameColonText(message) else { return line }
        return "[\(target) \(when)] <\(name)> \(text)"
    case "ERR":
        let (code, text) = splitWord(rest)
        if !text.isEmpty { return "! \(text)" }
        return code.isEmpty ? "! error" : "! \(code)"
    case "JOIN":
        let (room, name) = splitWord(rest)
        guard !room.isEmpty, !name.isEmpty else { return line }
        return "-- \(name) joined \(room)"
    case "PART":
        let (room, afterRoom) = splitWord(rest)
        let (name, reason) = splitWord(afterRoom)
        guard !room.isEmpty, !name.isEmpty else { return line }
        return reason.isEmpty ? "-- \(name) left \(room)" : "-- \(name) left \(room) (\(reason))"
    case "NICK":
        let (old, new) = splitWord(rest)
        guard !old.isEmpty, !new.isEmpty else { return line }
        return "-- \(old) is now known as \(new)"
    case "NOTICE":
        return rest.isEmpty ? line : "-- \(rest)"
    case "ROOM":
        let (room, count) = splitWord(rest)
        guard !room.isEmpty else { return line }
        return count.isEmpty ? "  \(room)" : "  \(room) (\(count))"
    case "USER":
        let (name, rooms) = splitWord(rest)
        guard !name.isEmpty else { return line }
        return rooms.isEmpty ? "  \(name)" : "  \(name)  \(rooms)"
    case "HELP":
        let (command, text) = splitWord(rest)
        guard !command.isEmpty else { return line }
        return text.isEmpty ? "  \(command)" : "  \(command)  \(text)"
    case "WELCOME":
        let (name, text) = splitWord(rest)
        if !text.isEmpty { return String(text) }
        return name.isEmpty ? line : "Welcome, \(name)."
    case "OK":
        let (command, text) = splitWord(rest)
        if !text.isEmpty { return String(text) }
        return command.isEmpty ? "ok" : "ok (\(command))"
    case "INFO", "BYE":
        return rest.isEmpty ? line : String(rest)
    default:
        return line
    }
}

/// Splits at the first space: the word before it and the text after it (leading spaces dropped).
private func splitWord(_ text: Substring) -> (Substring, Substring) {
    guard let space = text.firstIndex(of: " ") else { return (text, "") }
    let rest = text[text.index(after: space)...].drop(while: { $0 == " " })
    return (text[..<space], rest)
}

/// Splits `NAME: text` into the name and the text; `nil` when there is no colon after a non-empty name.
private func splitNameColonText(_ text: Substring) -> (Substring, Substring)? {
    guard let colon = text.firstIndex(of: ":"), colon > text.startIndex else { return nil }
    let name = text[..<colon]
    guard !name.contains(" ") else { return nil }
    var body = text[text.index(after: colon)...]
    if body.first == " " { body = body.dropFirst() }
    return (name, body)
}

// MARK: - Options

/// What `parley chat` was asked to do.
public struct ChatOptions: Sendable {
    public var host: String
    public var port: Int
    /// Log in (or register) as this name; `nil` stays a guest.
    public var user: String?
    /// The password; when `nil` and `user` is set it is read from `passwordFile` or asked for.
    public var password: String?
    /// A file whose first line is the password.
    public var passwordFile: String?
    /// Create the account (`/register`) instead of logging in.
    public var register: Bool
    /// Bound on waiting for the server's answers while connecting and logging in.
    public var timeout: Duration
    /// TCP to the line door, or UDP to the UDP door.
    public var transport: LineTransport = .tcp

    public init(
        host: String = "127.0.0.1",
        port: Int = 5555,
        user: String? = nil,
        password: String? = nil,
        passwordFile: String? = nil,
        register: Bool = false,
        timeout: Duration = .seconds(60)
    ) {
        self.host = host
        self.port = port
        self.user = user
        self.password = password
        self.passwordFile = passwordFile
        self.register = register
        self.timeout = timeout
    }
}

// MARK: - Passwords

/// A password could not be obtained.
public struct PasswordError: Error, CustomStringConvertible, Sendable {
    public let description: String
    public init(_ description: String) { self.description = description }
}

/// Reads the first line of the file at `path` (without its line ending).
public func readPasswordFile(_ path: String) throws -> String {
    let fd = open(path, O_RDONLY)
    guard fd >= 0 else {
        throw PasswordError("cannot open password file \(path): \(String(cString: strerror(errno)))")
    }
    defer { close(fd) }
    var bytes: [UInt8] = []
    var chunk = [UInt8](repeating: 0, count: 4096)
    while bytes.count < 64 * 1024 {
        let count = chunk.withUnsafeMutableBytes { raw -> Int in
            guard let base = raw.baseAddress else { return 0 }
            return read(fd, base, raw.count)
        }
        if count < 0 {
            if errno == EINTR { continue }
            throw PasswordError("cannot read password file \(path): \(String(cString: strerror(errno)))")
        }
        if count == 0 { break }
        bytes.append(contentsOf: chunk[0..<count])
        if chunk[0..<count].contains(UInt8(ascii: "\n")) { break }
    }
    let firstLine = bytes.prefix(while: { $0 != UInt8(ascii: "\n") })
    var line = String(decoding: firstLine, as: UTF8.self)
    if line.hasSuffix("\r") { line.removeLast() }
    return line
}

/// Asks for a password: on a terminal the prompt goes to standard error and typing is not echoed;
/// when standard input is not a terminal, one line is read from it. `nil` at end of input.
public func promptPassword(_ prompt: String) -> String? {
    guard isatty(STDIN_FILENO) != 0 else {
        return readLine(strippingNewline: true)
    }
    Console.rawErr(prompt)
    var saved = termios()
    let haveTerminal = tcgetattr(STDIN_FILENO, &saved) == 0
    if haveTerminal {
        var silent = saved
        silent.c_lflag &= ~tcflag_t(ECHO)
        _ = tcsetattr(STDIN_FILENO, TCSAFLUSH, &silent)
    }
    let line = readLine(strippingNewline: true)
    if haveTerminal {
        _ = tcsetattr(STDIN_FILENO, TCSAFLUSH, &saved)
    }
    Console.rawErr("\n")
    return line
}

// MARK: - The chat loop

/// Set once the user asked to leave, so that the server closing the connection is the expected end.
private final class QuitState: Sendable {
    private let quitting = Atomic<Bool>(false)

    var isQuitting: Bool { quitting.load(ordering: .acquiring) }

    func markQuitting() { quitting.store(true, ordering: .releasing) }
}

/// Whether a line typed by the user makes the server end the session (`/quit [reason]`, `bye`, `exit`).
func isQuitLine(_ line: String) -> Bool {
    let trimmed = line.drop(while: { $0 == " " || $0 == "\t" })
    let lower = trimmed.lowercased()
    let word = lower.prefix(while: { $0 != " " && $0 != "\t" })
    if word == "/quit" { return true }
    let whole = lower.trimmingSuffix(while: { $0 == " " || $0 == "\t" })
    return whole == "bye" || whole == "exit"
}

extension StringProtocol {
    fileprivate func trimmingSuffix(while predicate: (Character) -> Bool) -> Substring {
        var end = self.endIndex
        while end > self.startIndex {
            let before = self.index(before: end)
            guard predicate(self[before]) else { break }
            end = before
        }
        return Substring(self[self.startIndex..<end])
    }
}

/// Runs `parley chat`: connects, logs in or registers if asked, then sends the lines typed on standard
/// input while printing what the server sends. Returns the exit status: 0 after `/quit` (or end of
/// input), 1 when the connection failed, logging in failed or the server went away, 2 for a missing password.
public func runChat(_ options: ChatOptions) async -> Int32 {
    // The password first, before anything is printed, so that the prompt is not interleaved.
    var password: String? = nil
    if let user = options.user {
        if let given = options.password {
            password = given
        } else if let file = options.passwordFile {
            do {
                password = try readPasswordFile(file)
            } catch {
                Console.err("parley chat: \(error)")
                return 2
            }
        } else {
            password = promptPassword("Password for \(user): ")
        }
        guard let password, !password.isEmpty else {
            Console.err("parley chat: no password given for \(user)")
            return 2
        }
    }

    let client: LineClient
    do {
        client = try await LineClient.connect(host: options.host, port: options.port, transport: options.transport, connectTimeout: .seconds(10))
    } catch {
        Console.err("parley chat: \(error)")
        return 1
    }

    // The greeting.
    do {
        let welcome = try await client.nextLine(timeout: options.timeout)
        Console.out(formatServerLine(welcome))
    } catch {
        Console.err("parley chat: \(describeChatFailure(error, waitingFor: "the server's greeting"))")
        await client.close()
        return 1
    }

    if let user = options.user, let password {
        if let status = await authenticate(client, user: user, password: password, register: options.register, timeout: options.timeout) {
            return status
        }
    }

    let quit = QuitState()
    // Standard input is read on a thread of its own (a blocking read), and never awaited: when the
    // server goes away the process ends while that read may still be blocked.
    Task.detached {
        await pumpStandardInput(to: client, quit: quit)
    }

    while true {
        do {
            // A chat may be idle for hours: the wait is bounded, then simply renewed.
            let line = try await client.nextLine(timeout: .seconds(3600))
            Console.out(formatServerLine(line))
        } catch LineClientError.timeout {
            continue
        } catch {
            if quit.isQuitting { return 0 }
            Console.err("parley chat: connection closed by the server")
            return 1
        }
    }
}

/// Logs in or registers; `nil` on success, else the exit status (after printing why).
private func authenticate(_ client: LineClient, user: String, password: String, register: Bool, timeout: Duration) async -> Int32? {
    let command = register ? "register" : "login"
    let deadline = ContinuousClock.now + timeout
    do {
        try await client.send("/\(command) \(user) \(password)")
        while true {
            let remaining = deadline - .now
            guard remaining > .zero else { throw LineClientError.timeout(waitingFor: "the answer to /\(command)") }
            let line: String
            do {
                line = try await client.nextLine(timeout: remaining)
            } catch LineClientError.timeout {
                throw LineClientError.timeout(waitingFor: "the answer to /\(command)")
            }
            if isOK(line, command) {
                Console.out(formatServerLine(line))
                return nil
            }
            if let error = LineCommandError(errLine: line) {
                let what = register ? "could not register \(user)" : "could not log in as \(user)"
                let why = error.message.isEmpty ? error.code : "\(error.message) (\(error.code))"
                Console.err("parley chat: \(what): \(why)")
                do {
                    try await client.send("/quit")
                    try await client.waitForClose(timeout: .seconds(5))
                } catch {
                    // Leaving anyway.
                }
                await client.close()
                return 1
            }
            Console.out(formatServerLine(line))
        }
    } catch {
        Console.err("parley chat: \(describeChatFailure(error, waitingFor: "the answer to /\(command)"))")
        await client.close()
        return 1
    }
}

private func describeChatFailure(_ error: any Error, waitingFor what: String) -> String {
    switch error {
    case LineClientError.closed: return "connection closed by the server"
    case LineClientError.timeout: return "no answer from the server (waited for \(what))"
    default: return "\(error)"
    }
}

/// Sends each line typed on standard input; at its end sends `/quit`. After a quit the connection is
/// closed from this side if the server has not closed it within 10 seconds.
private func pumpStandardInput(to client: LineClient, quit: QuitState) async {
    while true {
        let line: String?
        do {
            line = try await NIOThreadPool.singleton.runIfActive { readLine(strippingNewline: true) }
        } catch {
            line = nil
        }
        guard let line else {
            quit.markQuitting()
            do {
                try await client.send("/quit")
            } catch {
                // Already closed.
            }
            client.close(after: .seconds(10))
            return
        }
        if line.allSatisfy({ $0 == " " || $0 == "\t" }) { continue }
        let quitting = isQuitLine(line)
        if quitting { quit.markQuitting() }
        do {
            try await client.send(line)
        } catch {
            return  // the connection is gone; the receiving side reports it
        }
        if quitting {
            client.close(after: .seconds(10))
            return
        }
    }
}
