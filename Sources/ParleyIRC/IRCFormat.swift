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
        switch event {
        case .message(let room):
            return chatLine(from: room.sender, to: room.room, text: room.text, kind: room.kind,
                            tags: tags(time: room.time, speaker: room.sender, serial: room.serial, clientTags: room.tags))
        case .direct(let direct) where direct.delivery != .late:
            return chatLine(from: direct.from, to: direct.to, text: direct.text, kind: direct.kind,
                            tags: tags(time: direct.time, speaker: direct.from, serial: direct.serial, clientTags: direct.tags))
        default:
            return message(for: event)?.wireLine
        }
    }

    /// What `message(for:)` and `wireLine` make of a live chat message, written straight into one
    /// buffer: this runs once per format for every message, and building the `IRCMessage` on the way
    /// (a mask string, a parameter array) was a tenth of the loop's time in the rooms benchmark. The
    /// line's length is known before it is written, so it is written in one pass (`LineWriter`): a
    /// dozen `ByteBuffer` writes were half of rendering.
    func chatLine(from speaker: Speaker, to target: String, text: String, kind: MessageKind, tags: [IRCMessage.Tag]) -> ByteBuffer? {
        if kind == .tagOnly && !options.messageTags { return nil }
        // Tags (rare: only for clients that ask) are written the general way, then copied in.
        var tagged = ByteBuffer()
        IRCMessage.write(tags: tags, to: &tagged)
        let command: StaticString = kind == .notice ? "NOTICE" : kind == .tagOnly ? "TAGMSG" : "PRIVMSG"
        let hasText = kind != .tagOnly
        var (name, user, host, target, text) = (speaker.name, speaker.user, speaker.host, target,
                                                kind == .action ? Self.action(text) : text)
        return tagged.withUnsafeReadableBytes { tags in name.withUTF8 { name in user.withUTF8 { user in host.withUTF8 { host in
            target.withUTF8 { target in text.withUTF8 { text in
                // The last parameter (the text, or the target of a TAGMSG) gets its ':' when it needs one.
                let targetColon = !hasText && IRCMessage.lastParamNeedsColon(target)
                let textColon = hasText && IRCMessage.lastParamNeedsColon(text)
                let length = tags.count + 1 + name.count + 1 + user.count + 1 + host.count + 1 + command.utf8CodeUnitCount
                    + 1 + (targetColon ? 1 : 0) + target.count + (hasText ? 1 + (textColon ? 1 : 0) + text.count : 0) + 2
                return LineWriter.buffer(length: length) { line in
                    line.bytes(tags)
                    line.byte(UInt8(ascii: ":"))
                    line.bytes(name)
                    line.byte(UInt8(ascii: "!"))
                    line.bytes(user)
                    line.byte(UInt8(ascii: "@"))
                    line.bytes(host)
                    line.byte(UInt8(ascii: " "))
                    line.bytes(command)
                    line.byte(UInt8(ascii: " "))
                    if targetColon { line.byte(UInt8(ascii: ":")) }
                    line.bytes(target, replacing: IRCMessage.breaksLine, with: UInt8(ascii: " "))
                    if hasText {
                        line.byte(UInt8(ascii: " "))
                        if textColon { line.byte(UInt8(ascii: ":")) }
                        line.bytes(text, replacing: IRCMessage.breaksLine, with: UInt8(ascii: " "))
                    }
                    line.bytes("\r\n")
                }
            } }
        } } } }
    }

    /// A line's tags for this client's capabilities, in the order IRCv3 clients see them: time,
    /// account, msgid, then the sender's own (none, and no allocation, when it asked for none).
    func tags(time: Date?, speaker: Speaker?, serial: UInt64?, clientTags: [MessageTag]) -> [IRCMessage.Tag] {
        var tags: [IRCMessage.Tag] = []
        if options.serverTime, let time { tags.append(.init("time", Self.timestamp(time))) }
        if options.accountTag, let account = speaker?.account { tags.append(.init("account", account)) }
        if options.messageTags {
            if let serial { tags.append(.init("msgid", MessageID.string(serial))) }
            tags += clientTags.map { IRCMessage.Tag($0.key, $0.value) }
        }
        return tags
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
        var time = Date()
        var speaker: Speaker?
        var serial: UInt64?
        var clientTags: [MessageTag] = []
        let message: IRCMessage
        switch event {
        case .message(let room):
            if room.kind == .tagOnly && !options.messageTags { return nil }
            time = room.time
            speaker = room.sender
            serial = room.serial
            clientTags = room.tags
            message = Self.chat(from: room.sender, to: room.room, text: stored ? dated(room.text, room.time) : room.text, kind: room.kind)
        case .history:
            return nil
        case .direct(let direct):
            if direct.kind == .tagOnly && !options.messageTags { return nil }
            time = direct.time
            speaker = direct.from
            serial = direct.serial
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
        var tagged = message
        tagged.tags = tags(time: message.command == "ERROR" ? nil : time, speaker: speaker, serial: serial, clientTags: clientTags)
        return tagged
    }

    private func dated(_ text: String, _ time: Date) -> String {
        options.serverTime ? text : "[\(Milliseconds.iso8601(time))] " + text
    }

    static func chat(from: Speaker, to target: String, text: String, kind: MessageKind) -> IRCMessage {
        switch kind {
        case .say: return IRCMessage(source: mask(from), "PRIVMSG", [target, text])
        case .action: return IRCMessage(source: mask(from), "PRIVMSG", [target, action(text)])
        case .notice: return IRCMessage(source: mask(from), "NOTICE", [target, text])
        case .tagOnly: return IRCMessage(source: mask(from), "TAGMSG", [target])
        }
    }

    /// A CTCP ACTION (`/me`) as the text of a PRIVMSG.
    static func action(_ text: String) -> String { "\u{1}ACTION \(text)\u{1}" }

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
