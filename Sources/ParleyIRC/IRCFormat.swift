import Foundation
import NIOCore
import ParleyCore
import Synchronization

/// What changes how hub events look to one IRC client: its negotiated capabilities that affect
/// rendering. Clients with the same options share one format, so an event is rendered once per option
/// set, not once per client.
public struct IRCRenderOptions: Hashable, Sendable {
    public var serverTime = false
    public var accountTag = false
    public var extendedJoin = false
    public var awayNotify = false
    public var accountNotify = false
    public var messageTags = false
    public var batch = false
    /// The client asks for history itself (draft/chathistory): no replay on join.
    public var chathistory = false
    public init() {}

    public init(capabilities: Set<String>) {
        serverTime = capabilities.contains("server-time")
        accountTag = capabilities.contains("account-tag")
        extendedJoin = capabilities.contains("extended-join")
        awayNotify = capabilities.contains("away-notify")
        accountNotify = capabilities.contains("account-notify")
        messageTags = capabilities.contains("message-tags")
        batch = capabilities.contains("batch")
        chathistory = capabilities.contains("draft/chathistory")
    }
}

/// Renders hub events as IRC lines (CRLF-terminated).
public final class IRCFormat: WireFormat {
    public let serverName: String
    public let options: IRCRenderOptions

    init(serverName: String, options: IRCRenderOptions) {
        self.serverName = serverName
        self.options = options
    }

    public func render(_ event: HubEvent) -> ByteBuffer? {
        if case .history(let room, let messages) = event {
            let lines = replay(room: room, messages)
            guard !lines.isEmpty else { return nil }
            var buffer = ByteBuffer()
            for line in lines { line.writeLine(to: &buffer) }
            return buffer
        }
        return message(for: event)?.wireLine
    }

    /// A room's recent messages for a client that just joined and does not fetch history itself: in a
    /// `chathistory` batch when it has `batch`; with their time as a tag (server-time) or, failing
    /// that, in front of the text.
    func replay(room: String, _ messages: [RoomMessage]) -> [IRCMessage] {
        guard !options.chathistory else { return [] }
        let lines = messages.compactMap { message(for: .message($0), stored: true) }
        guard options.batch, !lines.isEmpty else { return lines }
        let id = "h" + (messages.first.map { MessageID.string($0.serial) } ?? "0")
        return [IRCMessage(source: serverName, "BATCH", ["+" + id, "chathistory", room])]
            + lines.map { line in
                var line = line
                line.tags.insert(.init("batch", id), at: 0)
                return line
            }
            + [IRCMessage(source: serverName, "BATCH", ["-" + id])]
    }

    /// `stored`: the message is shown after the fact (replay, history, a direct message kept while the
    /// client was offline): a client without server-time gets the time in front of the text.
    func message(for event: HubEvent, stored: Bool = false) -> IRCMessage? {
        var tags: [IRCMessage.Tag] = []
        var time = Date()
        var speaker: Speaker?
        var messageID: String?
        var clientTags: [MessageTag] = []
        let message: IRCMessage
        switch event {
        case .message(let room):
            if room.kind == .tagOnly && !options.messageTags { return nil }
            time = room.time
            speaker = room.sender
            messageID = room.id
            clientTags = room.tags
            message = Self.chat(from: room.sender, to: room.room, text: stored ? dated(room.text, room.time) : room.text, kind: room.kind)
        case .history:
            return nil
        case .direct(let direct):
            if direct.kind == .tagOnly && !options.messageTags { return nil }
            time = direct.time
            speaker = direct.from
            messageID = direct.id
            clientTags = direct.tags
            let late = stored || direct.delivery == .late
            message = Self.chat(from: direct.from, to: direct.to, text: late ? dated(direct.text, direct.time) : direct.text, kind: direct.kind)
        case .joined(let room, let who):
            speaker = who
            message = IRCMessage(source: Self.mask(who), "JOIN", options.extendedJoin ? [room, who.account ?? "*", who.realName] : [room])
        case .parted(let room, let who, let reason):
            speaker = who
            message = IRCMessage(source: Self.mask(who), "PART", reason.map { [room, $0] } ?? [room])
        case .quit(let who, let reason):
            speaker = who
            message = IRCMessage(source: Self.mask(who), "QUIT", [reason ?? "Client Quit"])
        case .renamed(let old, let new):
            speaker = old
            message = IRCMessage(source: Self.mask(old), "NICK", [new])
        case .awayChanged(let who, let text):
            guard options.awayNotify else { return nil }
            speaker = who
            message = IRCMessage(source: Self.mask(who), "AWAY", text.map { [$0] } ?? [])
        case .accountChanged(let who, let account):
            guard options.accountNotify else { return nil }
            message = IRCMessage(source: Self.mask(who), "ACCOUNT", [account ?? "*"])
        case .topicChanged(let room, let by, let text):
            message = IRCMessage(source: Self.mask(by), "TOPIC", [room, text])
        case .modesChanged(let room, let by, let changes):
            let (modes, arguments) = ModeChange.describe(changes)
            message = IRCMessage(source: Self.mask(by), "MODE", [room, modes] + arguments)
        case .kicked(let room, let by, let target, let reason):
            message = IRCMessage(source: Self.mask(by), "KICK", [room, target, reason ?? by.name])
        case .invited(let room, let by, let target):
            message = IRCMessage(source: Self.mask(by), "INVITE", [target, room])
        case .notice(let text):
            message = IRCMessage(source: serverName, "NOTICE", ["*", "*** Notice from the operator: \(text)"])
        case .refused(let error):
            message = IRCMessage(source: serverName, "NOTICE", ["*", "*** Your message was not delivered: \(error.message)"])
        case .goodbye(let reason):
            message = IRCMessage("ERROR", ["Closing Link: " + Self.describe(reason)])
        }
        if options.serverTime, message.command != "ERROR" {
            tags.append(.init("time", Self.timestamp(time)))
        }
        if options.accountTag, let account = speaker?.account {
            tags.append(.init("account", account))
        }
        if options.messageTags {
            if let messageID, !messageID.isEmpty { tags.append(.init("msgid", messageID)) }
            tags += clientTags.map { IRCMessage.Tag($0.key, $0.value) }
        }
        var tagged = message
        tagged.tags = tags
        return tagged
    }

    private func dated(_ text: String, _ time: Date) -> String {
        options.serverTime ? text : "[\(Milliseconds.iso8601(time))] " + text
    }

    static func chat(from: Speaker, to target: String, text: String, kind: MessageKind) -> IRCMessage {
        switch kind {
        case .say: return IRCMessage(source: mask(from), "PRIVMSG", [target, text])
        case .action: return IRCMessage(source: mask(from), "PRIVMSG", [target, "\u{1}ACTION \(text)\u{1}"])
        case .notice: return IRCMessage(source: mask(from), "NOTICE", [target, text])
        case .tagOnly: return IRCMessage(source: mask(from), "TAGMSG", [target])
        }
    }

    public static func mask(_ who: Speaker) -> String { "\(who.name)!\(who.user)@\(who.host)" }

    static func describe(_ reason: GoodbyeReason) -> String {
        switch reason {
        case .quit: return "Quit"
        case .kicked(let why): return "Killed by the server operator" + (why.map { ": \($0)" } ?? "")
        case .shutdown: return "The server is shutting down"
        case .sendqExceeded: return "SendQ exceeded"
        }
    }

    /// IRCv3 server-time: ISO 8601 in UTC with milliseconds, exactly as history stores it.
    static func timestamp(_ date: Date) -> String {
        Milliseconds.iso8601(date)
    }
}

/// One format per option set, shared by every client with those options.
public final class IRCFormats: Sendable {
    public let serverName: String
    private let cache = Mutex<[IRCRenderOptions: IRCFormat]>([:])

    public init(serverName: String) {
        self.serverName = serverName
    }

    public func format(_ options: IRCRenderOptions) -> IRCFormat {
        cache.withLock { cache in
            if let format = cache[options] { return format }
            let format = IRCFormat(serverName: serverName, options: options)
            cache[options] = format
            return format
        }
    }
}
