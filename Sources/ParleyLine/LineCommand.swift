/// A client line of the line protocol, parsed. Parsing knows nothing of the hub.
public enum LineCommand: Equatable, Sendable {
    case say(String)
    case me(String)
    case register(name: String, password: String)
    case login(name: String, password: String)
    case logout
    case nick(String)
    case join(String)
    case leave(String?)
    case rooms
    case who(String?)
    case list
    case msg(to: String, text: String)
    /// `/history [#room|NAME] [N]`: older messages, a page at a time.
    case history(target: String?, count: Int?)
    case help
    /// `/ping [TOKEN]`: answered at once with `PONG TOKEN`, to check that the server is responsive.
    case ping(String?)
    case quit(String?)
}

public enum LineParseError: Error, Equatable, Sendable {
    case unknownCommand(String)
    /// The command and the form it takes.
    case usage(command: String, form: String)
}

public enum LineParser {
    /// The most messages one `/history` shows.
    public static let maxHistoryPage = 200

    /// Every command with its form and what it does, in the order `/help` lists them.
    public static let commands: [(name: String, form: String, summary: String)] = [
        ("help", "/help", "show this list"),
        ("register", "/register NAME PASSWORD", "create an account and log in"),
        ("login", "/login NAME PASSWORD", "log in to your account"),
        ("logout", "/logout", "log out and become a guest again"),
        ("nick", "/nick NAME", "guests: choose a name"),
        ("join", "/join #room", "join a room and talk there"),
        ("leave", "/leave [#room]", "leave a room (default: the current one)"),
        ("rooms", "/rooms", "list the rooms"),
        ("who", "/who [#room]", "list the members of a room"),
        ("list", "/list", "list everyone online"),
        ("msg", "/msg NAME TEXT", "send a direct message"),
        ("history", "/history [#room|NAME] [N]", "show N earlier messages (default 20, at most 200); again for older ones"),
        ("me", "/me ACTION", "act in the current room"),
        ("say", "/say TEXT", "say TEXT in the current room, even if it starts with /"),
        ("ping", "/ping [TOKEN]", "the server answers PONG TOKEN at once"),
        ("quit", "/quit [reason]", "leave the server (also: bye, exit)"),
    ]

    /// Parses one line; nil for a blank line.
    public static func parse(_ line: String) -> Result<LineCommand?, LineParseError> {
        let trimmed = line.trimmingSpaces()
        if trimmed.isEmpty { return .success(nil) }
        // Only a line of three or four bytes can be `bye` or `exit`: no lowercased copy of every chat line.
        if trimmed.utf8.count <= 4 {
            let lowered = trimmed.lowercased()
            if lowered == "bye" || lowered == "exit" { return .success(.quit(nil)) }
        }
        guard trimmed.hasPrefix("/") else { return .success(.say(line)) }

        let body = trimmed.dropFirst()
        let name = body.prefix { $0 != " " }.lowercased()
        let rest = String(body.dropFirst(name.count)).trimmingSpaces()
        let words = rest.split(separator: " ", omittingEmptySubsequences: true).map(String.init)

        func usage() -> Result<LineCommand?, LineParseError> {
            let form = commands.first { $0.name == name }?.form ?? "/\(name)"
            return .failure(.usage(command: name, form: form))
        }

        switch name {
        case "help", "?": return words.isEmpty ? .success(.help) : usage()
        case "register", "login":
            guard words.count == 2 else { return usage() }
            return .success(name == "register" ? .register(name: words[0], password: words[1])
                                               : .login(name: words[0], password: words[1]))
        case "logout": return words.isEmpty ? .success(.logout) : usage()
        case "nick": return words.count == 1 ? .success(.nick(words[0])) : usage()
        case "join": return words.count == 1 ? .success(.join(words[0])) : usage()
        case "leave", "part": return words.count <= 1 ? .success(.leave(words.first)) : usage()
        case "rooms": return words.isEmpty ? .success(.rooms) : usage()
        case "who": return words.count <= 1 ? .success(.who(words.first)) : usage()
        case "list": return words.isEmpty ? .success(.list) : usage()
        case "msg":
            guard words.count >= 2 else { return usage() }
            let text = String(rest.dropFirst(words[0].count)).trimmingSpaces()
            return .success(.msg(to: words[0], text: text))
        case "history":
            guard words.count <= 2 else { return usage() }
            var target: String?
            var count: Int?
            for word in words {
                if word.allSatisfy(\.isNumber) {
                    guard count == nil, let number = Int(word), (1...LineParser.maxHistoryPage).contains(number) else { return usage() }
                    count = number
                } else {
                    guard target == nil else { return usage() }
                    target = word
                }
            }
            return .success(.history(target: target, count: count))
        case "me": return rest.isEmpty ? usage() : .success(.me(rest))
        case "say": return rest.isEmpty ? usage() : .success(.say(rest))
        case "quit": return .success(.quit(rest.isEmpty ? nil : rest))
        case "ping": return words.count <= 1 ? .success(.ping(words.first)) : usage()
        default: return .failure(.unknownCommand(String(body.prefix { $0 != " " })))
        }
    }
}

extension String {
    func trimmingSpaces() -> String {
        // By bytes (spaces and tabs are ASCII), and the string itself when there is nothing to trim:
        // every chat line comes through here.
        let isSpace: (UInt8) -> Bool = { $0 == UInt8(ascii: " ") || $0 == UInt8(ascii: "\t") }
        guard let first = utf8.firstIndex(where: { !isSpace($0) }),
              let last = utf8.lastIndex(where: { !isSpace($0) }) else { return "" }
        // Both bounds are next to an ASCII byte or an end, so they fall between scalars.
        let end = utf8.index(after: last)
        if first == utf8.startIndex && end == utf8.endIndex { return self }
        return String(self[first..<end])
    }
}
