import Foundation
import NIOCore
import ParleyCore

/// Renders hub events and replies as line-protocol lines: a type tag, fields, then text for humans.
public final class LineFormat: WireFormat {
    public static let shared = LineFormat()

    public func render(_ event: HubEvent) -> ByteBuffer? {
        if case .message(let message) = event, message.kind != .tagOnly { return Self.chatLine(message) }
        return Self.text(of: event).map { ByteBuffer(string: $0 + "\n") }
    }

    /// A room message's line, as `text(of:)` words it, written straight into one buffer in one pass
    /// (`LineWriter`): this runs for every message, and building the string, then a buffer from it,
    /// was five allocations.
    static func chatLine(_ message: RoomMessage) -> ByteBuffer {
        let action = message.kind == .action
        var (room, name, text) = (message.room, message.sender.name, message.text)
        return room.withUTF8 { room in name.withUTF8 { name in text.withUTF8 { text in
            LineWriter.buffer(length: (action ? 7 : 4) + room.count + 1 + name.count + (action ? 1 : 2) + text.count + 1) { line in
                line.bytes(action ? "ACTION " : "MSG ")
                line.bytes(room)
                line.byte(UInt8(ascii: " "))
                line.bytes(name)
                line.bytes(action ? " " : ": ")
                line.bytes(text)
                line.byte(UInt8(ascii: "\n"))
            }
        } } }
    }

    /// nil for events the line protocol does not show (away and account changes of others).
    public static func text(of event: HubEvent) -> String? {
        switch event {
        case .awayChanged, .accountChanged:
            return nil
        case .message(let message) where message.kind == .tagOnly:
            return nil
        case .direct(let message) where message.kind == .tagOnly:
            return nil
        case .message(let message):
            switch message.kind {
            case .say, .notice, .tagOnly: return "MSG \(message.room) \(message.sender.name): \(message.text)"
            case .action: return "ACTION \(message.room) \(message.sender.name) \(message.text)"
            }
        case .history(let room, let messages):
            let lines = messages.compactMap { historyLine(.room($0), target: room) }
            return lines.isEmpty ? nil : lines.joined(separator: "\n")
        case .direct(let message):
            let text = message.kind == .action ? "* \(message.from.name) \(message.text)" : message.text
            switch (message.echo, message.delivery) {
            case (true, .queued): return "DM to \(message.to) (offline, kept until they log in): \(text)"
            case (true, _): return "DM to \(message.to): \(text)"
            case (false, .late): return "DM from \(message.from.name) (offline, sent \(Milliseconds.iso8601(message.time))): \(text)"
            case (false, _): return "DM from \(message.from.name): \(text)"
            }
        case .joined(let room, let who):
            return "JOIN \(room) \(who.name)"
        case .parted(let room, let who, let reason):
            return "PART \(room) \(who.name)" + (reason.map { " \($0)" } ?? "")
        case .renamed(let old, let new):
            return "NICK \(old.name) \(new)"
        case .quit(let who, let reason):
            return "QUIT \(who.name)" + (reason.map { " \($0)" } ?? "")
        case .topicChanged(let room, let by, let text):
            return "TOPIC \(room) \(by.name): \(text)"
        case .modesChanged(let room, let by, let changes):
            let (modes, arguments) = ModeChange.describe(changes)
            return (["MODE", room, by.name, modes] + arguments).joined(separator: " ")
        case .kicked(let room, let by, let target, let reason):
            return "KICK \(room) \(by.name) \(target)" + (reason.map { " \($0)" } ?? "")
        case .invited(let room, let by, _):
            return "INVITE \(room) \(by.name)"
        case .notice(let text):
            return "NOTICE server: \(text)"
        case .refused(let error):
            return LineReply.error(error)
        case .goodbye(let reason):
            switch reason {
            case .quit: return "BYE Goodbye."
            case .kicked(let why): return "BYE You were disconnected by the server operator" + (why.map { ": \($0)" } ?? ".")
            case .shutdown: return "BYE The server is shutting down. Goodbye!"
            case .sendqExceeded: return "BYE Disconnected: you stopped reading and your queue overflowed."
            }
        }
    }
}

extension LineFormat {
    /// A stored message as `/history` and the replay on join show it:
    /// `HISTORY TARGET TIME NAME: TEXT`, or `HISTORY TARGET TIME * NAME ACTION`.
    public static func historyLine(_ logged: LoggedMessage, target: String) -> String? {
        let (sender, text, kind, time): (Speaker, String, MessageKind, Date)
        switch logged {
        case .room(let message): (sender, text, kind, time) = (message.sender, message.text, message.kind, message.time)
        case .direct(let message, _, _): (sender, text, kind, time) = (message.from, message.text, message.kind, message.time)
        }
        let stamp = Milliseconds.iso8601(time)
        switch kind {
        case .tagOnly: return nil
        case .action: return "HISTORY \(target) \(stamp) * \(sender.name) \(text)"
        case .say, .notice: return "HISTORY \(target) \(stamp) \(sender.name): \(text)"
        }
    }
}

/// The line-protocol replies to one client's commands.
public enum LineReply {
    public static func welcome(name: String, room: String) -> String {
        "WELCOME \(name) Welcome to Parley, \(name)! You are in \(room). Type /help for commands, /quit to leave."
    }
    public static func ok(_ command: String, _ text: String) -> String { "OK \(command) \(text)" }
    public static func err(_ code: String, _ text: String) -> String { "ERR \(code) \(text)" }
    public static func info(_ text: String) -> String { "INFO \(text)" }
    public static func bye(_ text: String) -> String { "BYE \(text)" }
    public static func room(_ info: RoomInfo) -> String { "ROOM \(info.name) \(info.memberCount)" }
    public static func user(_ name: String, rooms: [String]) -> String {
        "USER \(name) \(rooms.isEmpty ? "-" : rooms.joined(separator: ","))"
    }
    public static func help() -> [String] {
        LineParser.commands.map { "HELP \($0.form)  \($0.summary)" }
            + [ok("help", "Any line that does not start with / is sent to your current room.")]
    }

    public static func error(_ error: HubError) -> String {
        err(code(of: error), error.message)
    }

    public static func error(_ error: LineParseError) -> String {
        switch error {
        case .unknownCommand(let name):
            return err("unknown-command", "Unknown command /\(name). Type /help for the list of commands.")
        case .usage(_, let form):
            return err("usage", "Usage: \(form)")
        }
    }

    public static func code(of error: HubError) -> String {
        switch error {
        case .badName: return "bad-name"
        case .badRoom: return "bad-room"
        case .badPassword: return "bad-password"
        case .nameTaken: return "name-taken"
        case .loginFailed: return "login-failed"
        case .alreadyLoggedIn: return "already-logged-in"
        case .notLoggedIn: return "not-logged-in"
        case .loginRequired: return "login-required"
        case .notInRoom, .noCurrentRoom: return "not-in-room"
        case .noSuchRoom: return "no-such-room"
        case .noSuchUser: return "no-such-user"
        case .emptyMessage: return "empty-message"
        case .shuttingDown: return "shutting-down"
        case .storeFailed: return "server-error"
        case .needsOperator: return "not-operator"
        case .banned: return "banned"
        case .inviteOnly: return "invite-only"
        case .badKey: return "bad-key"
        case .roomFull: return "room-full"
        case .moderated: return "moderated"
        case .userNotInRoom: return "user-not-in-room"
        case .alreadyInRoom: return "already-in-room"
        case .tooManyAttempts: return "too-many-attempts"
        case .historyUnavailable: return "no-history"
        case .historyNeedsLogin: return "login-required"
        }
    }
}
