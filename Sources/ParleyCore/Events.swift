import Foundation

public enum MessageKind: Sendable, Equatable {
    case say
    case action
    /// IRC's NOTICE: a message that must never be answered automatically.
    case notice
    /// IRC's TAGMSG: tags only (a reaction, a typing notice); doors without tags do not show it.
    case tagOnly
}

/// A client-only tag (IRCv3 `+name=value`) carried with a message to recipients that understand tags.
public struct MessageTag: Sendable, Equatable {
    public let key: String
    public let value: String?
    public init(_ key: String, _ value: String?) {
        self.key = key
        self.value = value
    }
}

/// Who did something, as every door may want to show it: IRC shows `name!user@host`.
public struct Speaker: Sendable, Equatable {
    public let name: String
    public let user: String
    public let host: String
    public let account: String?
    public let realName: String

    public init(name: String, user: String, host: String, account: String?, realName: String? = nil) {
        self.name = name
        self.user = user
        self.host = host
        self.account = account
        self.realName = realName ?? name
    }
}

/// A class, not a struct: one message is held by the log's queue, the commit callback, the room's
/// replay, the event each format renders and the sender's acknowledgement, and passing a struct of
/// this many fields along that path copied it (a retain and a release per reference-counted field)
/// at every step: 7% of the loop's time in the rooms benchmark. Every field is a constant.
public final class RoomMessage: Sendable, Equatable {
    public let room: String
    public let sender: Speaker
    public let text: String
    public let kind: MessageKind
    /// Position in the room's total order: every member sees the room's messages in this order.
    public let sequence: UInt64
    public let time: Date
    /// Server-assigned, unique and increasing: the message's place in history.
    public let serial: UInt64
    public let tags: [MessageTag]

    public init(room: String, sender: Speaker, text: String, kind: MessageKind, sequence: UInt64, time: Date,
                serial: UInt64 = 0, tags: [MessageTag] = []) {
        self.room = room
        self.sender = sender
        self.text = text
        self.kind = kind
        self.sequence = sequence
        self.time = time
        self.serial = serial
        self.tags = tags
    }

    /// The IRC msgid.
    public var id: String { MessageID.string(serial) }

    public static func == (lhs: RoomMessage, rhs: RoomMessage) -> Bool {
        lhs === rhs || (lhs.room == rhs.room && lhs.sender == rhs.sender && lhs.text == rhs.text && lhs.kind == rhs.kind
            && lhs.sequence == rhs.sequence && lhs.time == rhs.time && lhs.serial == rhs.serial && lhs.tags == rhs.tags)
    }
}

extension RoomMessage: CustomStringConvertible {
    /// Every field, as a struct would print (a class prints only its name).
    public var description: String {
        "RoomMessage(room: \(String(reflecting: room)), sender: \(sender), text: \(String(reflecting: text)), kind: \(kind), "
            + "sequence: \(sequence), time: \(time), serial: \(serial), tags: \(tags))"
    }
}

public struct DirectMessage: Sendable, Equatable {
    /// How a direct message reaches its recipient.
    public enum Delivery: Sendable, Equatable {
        /// Handed to the recipient's connections as it is sent.
        case live
        /// The recipient's account is offline: it is kept and handed over at its next login.
        case queued
        /// Handed over at login, after being kept while the recipient was offline.
        case late
    }

    public let from: Speaker
    /// The recipient's name.
    public let to: String
    public let text: String
    public let kind: MessageKind
    /// True on the copy sent back to the sender as its acknowledgement.
    public let echo: Bool
    public let time: Date
    public let serial: UInt64
    public let tags: [MessageTag]
    public let delivery: Delivery

    public init(from: Speaker, to: String, text: String, kind: MessageKind, echo: Bool, time: Date = Date(),
                serial: UInt64 = 0, tags: [MessageTag] = [], delivery: Delivery = .live) {
        self.from = from
        self.to = to
        self.text = text
        self.kind = kind
        self.echo = echo
        self.time = time
        self.serial = serial
        self.tags = tags
        self.delivery = delivery
    }

    /// The IRC msgid.
    public var id: String { MessageID.string(serial) }

    /// The same message as one party or the other sees it.
    public func with(echo: Bool, delivery: Delivery) -> DirectMessage {
        DirectMessage(from: from, to: to, text: text, kind: kind, echo: echo, time: time, serial: serial, tags: tags, delivery: delivery)
    }
}

public enum GoodbyeReason: Sendable, Equatable {
    case quit
    case kicked(reason: String?)
    case shutdown
    case sendqExceeded
}

/// What the hub tells a session. Doors render these into their wire format; the hub never sees bytes.
public enum HubEvent: Sendable, Equatable {
    case message(RoomMessage)
    /// A room's recent messages, replayed to a session that just joined it (oldest first).
    case history(room: String, messages: [RoomMessage])
    case direct(DirectMessage)
    case joined(room: String, who: Speaker)
    case parted(room: String, who: Speaker, reason: String?)
    /// `who` disconnected; sent once to everyone who shared a room with it.
    case quit(who: Speaker, reason: String?)
    case renamed(old: Speaker, new: String)
    case topicChanged(room: String, by: Speaker, text: String)
    case modesChanged(room: String, by: Speaker, changes: [ModeChange])
    /// `target` was removed from the room by `by`.
    case kicked(room: String, by: Speaker, target: String, reason: String?)
    /// Sent to the invited user only.
    case invited(room: String, by: Speaker, target: String)
    /// Sent to those sharing a room with `who` (IRC away-notify); nil: back.
    case awayChanged(who: Speaker, message: String?)
    /// `who` logged in (account set) or out (nil); sent to those sharing a room (IRC account-notify).
    case accountChanged(who: Speaker, account: String?)
    case notice(String)
    /// Sent to a sender whose message was accepted but then could not be delivered (it could not be
    /// stored, or its recipient turned out not to exist), when its door did not ask to handle that.
    case refused(HubError)
    case goodbye(GoodbyeReason)
}

/// Sent through every connection's pipeline when the server shuts down, so a connection that is not
/// (yet) a hub session, such as an IRC client still registering, can say goodbye too.
public struct ServerShuttingDown: Sendable {
    public init() {}
}
