import Foundation

/// One channel-mode change, as IRC's MODE names them; the line door shows the same letters.
public struct ModeChange: Equatable, Sendable {
    public enum Mode: Character, Sendable, CaseIterable {
        case topicLock = "t", noExternal = "n", moderated = "m", inviteOnly = "i", secret = "s"
        case key = "k", limit = "l", ban = "b", op = "o", voice = "v"
        /// Masks excepted from bans (+e) and from invite-only (+I).
        case banException = "e", inviteException = "I"
    }
    public var adding: Bool
    public var mode: Mode
    public var argument: String?

    public init(_ adding: Bool, _ mode: Mode, _ argument: String? = nil) {
        self.adding = adding
        self.mode = mode
        self.argument = argument
    }

    /// `+o-v+k` with its arguments, as one IRC MODE line shows a list of changes.
    public static func describe(_ changes: [ModeChange]) -> (modes: String, arguments: [String]) {
        var modes = ""
        var sign: Bool?
        var arguments: [String] = []
        for change in changes {
            if sign != change.adding {
                modes.append(change.adding ? "+" : "-")
                sign = change.adding
            }
            modes.append(change.mode.rawValue)
            if let argument = change.argument { arguments.append(argument) }
        }
        return (modes, arguments)
    }
}

public struct RoomTopic: Equatable, Sendable {
    public let text: String
    public let setBy: String
    public let setAt: Date
}

/// A room's modes, topic and privileges. A plain value inside the room's lock; the rules of who may
/// do what live in the hub.
public struct RoomSettings: Equatable, Sendable {
    public var createdAt = Date()
    public var topic: RoomTopic?
    public var topicLocked = true
    public var noExternal = true
    public var moderated = false
    public var inviteOnly = false
    /// Not listed (LIST, NAMES of the room) to those who are not in it.
    public var secret = false
    public var key: String?
    public var limit: Int?
    public var bans: [String] = []
    public var banExceptions: [String] = []
    public var inviteExceptions: [String] = []
    /// Session ids.
    public var operators: Set<Int> = []
    public var voiced: Set<Int> = []
    /// Name keys of users invited since the room became invite-only.
    public var invited: Set<String> = []

    /// `+ntk` style summary with the arguments a member may see (IRC 324).
    public var modeSummary: (modes: String, arguments: [String]) {
        var modes = "+"
        var arguments: [String] = []
        if inviteOnly { modes.append("i") }
        if moderated { modes.append("m") }
        if noExternal { modes.append("n") }
        if secret { modes.append("s") }
        if topicLocked { modes.append("t") }
        if let key {
            modes.append("k")
            arguments.append(key)
        }
        if let limit {
            modes.append("l")
            arguments.append(String(limit))
        }
        return (modes, arguments)
    }

    /// Whether `mask` (IRC `nick!user@host` with `*` and `?`) matches a user, case-insensitively.
    public static func matches(mask: String, _ who: Speaker) -> Bool {
        glob(Array(NameRules.key(mask).unicodeScalars), Array(NameRules.key("\(who.name)!\(who.user)@\(who.host)").unicodeScalars))
    }

    public func isBanned(_ who: Speaker) -> Bool {
        bans.contains { Self.matches(mask: $0, who) } && !banExceptions.contains { Self.matches(mask: $0, who) }
    }

    /// An invite exception (+I) lets a user into an invite-only room without an invitation.
    public func isInviteExcepted(_ who: Speaker) -> Bool {
        inviteExceptions.contains { Self.matches(mask: $0, who) }
    }

    /// The list a list mode (+b, +e, +I) edits.
    public subscript(list mode: ModeChange.Mode) -> [String] {
        get {
            switch mode {
            case .banException: return banExceptions
            case .inviteException: return inviteExceptions
            default: return bans
            }
        }
        set {
            switch mode {
            case .banException: banExceptions = newValue
            case .inviteException: inviteExceptions = newValue
            default: bans = newValue
            }
        }
    }

    public static func glob(_ pattern: [Unicode.Scalar], _ text: [Unicode.Scalar]) -> Bool {
        // Iterative matcher with backtracking to the last '*': linear in practice, never recursive.
        var p = 0, t = 0, star = -1, mark = 0
        while t < text.count {
            if p < pattern.count && (pattern[p] == "?" || pattern[p] == text[t]) {
                p += 1
                t += 1
            } else if p < pattern.count && pattern[p] == "*" {
                star = p
                mark = t
                p += 1
            } else if star >= 0 {
                p = star + 1
                mark += 1
                t = mark
            } else {
                return false
            }
        }
        while p < pattern.count && pattern[p] == "*" { p += 1 }
        return p == pattern.count
    }
}
