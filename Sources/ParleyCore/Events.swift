import Foundation

public enum MessageKind: Sendable, Equatable {
    case say
    case action
}

public struct RoomMessage: Sendable, Equatable {
    public let room: String
    public let sender: String
    public let text: String
    public let kind: MessageKind
    /// Position in the room's total order: every member sees the room's messages in this order.
    public let sequence: UInt64
    public let time: Date

    public init(room: String, sender: String, text: String, kind: MessageKind, sequence: UInt64, time: Date) {
        self.room = room
        self.sender = sender
        self.text = text
        self.kind = kind
        self.sequence = sequence
        self.time = time
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
    /// `echo` is true on the copy sent back to the sender as its acknowledgement.
    case direct(from: String, to: String, text: String, echo: Bool)
    case joined(room: String, name: String)
    case parted(room: String, name: String, reason: String?)
    case renamed(old: String, new: String)
    case notice(String)
    case goodbye(GoodbyeReason)
}
