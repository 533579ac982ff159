import Foundation
import ParleyCore
import ParleyStore
import ParleyUDP

/// The operator console: one command line in, lines of answer out. Reading stdin is the caller's job,
/// so the same console can be driven by a test.
public struct Console: Sendable {
    public let hub: Hub
    public let log: SQLiteMessageLog?
    public let udp: UDPCounters?

    public init(hub: Hub, log: SQLiteMessageLog? = nil, udp: UDPCounters? = nil) {
        self.hub = hub
        self.log = log
        self.udp = udp
    }

    public enum Outcome: Equatable, Sendable {
        case output([String])
        case exit
    }

    public static let help = [
        "list              every connected client: id, name, door, address, rooms, connected since",
        "count             active clients, rooms, messages relayed, connections since start, history writes;",
        "                  then the UDP doors: sessions, datagrams, retransmissions, drops by reason",
        "kick NAME [why]   disconnect every connection of NAME",
        "say TEXT          send a notice to everyone",
        "help              this list",
        "exit              shut the server down cleanly",
    ]

    public func execute(_ line: String) -> Outcome {
        let trimmed = line.trimmingCharacters(in: .whitespaces)
        guard !trimmed.isEmpty else { return .output([]) }
        let command = trimmed.prefix { $0 != " " }.lowercased()
        let rest = trimmed.dropFirst(command.count).trimmingCharacters(in: .whitespaces)
        switch command {
        case "list":
            let sessions = hub.online()
            let formatter = ISO8601DateFormatter()
            var lines = sessions.map { session in
                let rooms = session.rooms.isEmpty ? "-" : session.rooms.joined(separator: ",")
                let who = session.account == nil ? "\(session.name) (guest)" : session.name
                return "\(session.id)\t\(who)\t\(session.door)\t\(session.address)\t\(rooms)\tsince \(formatter.string(from: session.connectedAt))"
            }
            lines.append("\(sessions.count) client\(sessions.count == 1 ? "" : "s") connected")
            return .output(lines)
        case "count":
            let counters = hub.counters
            var line = "clients \(counters.activeSessions.load(ordering: .relaxed))"
            line += " rooms \(hub.roomList().count)"
            line += " messages \(counters.messagesRelayed.load(ordering: .relaxed))"
            line += " deliveries \(counters.deliveries.load(ordering: .relaxed))"
            line += " connections-total \(counters.connectionsTotal.load(ordering: .relaxed))"
            if let log {
                line += " stored \(log.messagesStored.load(ordering: .relaxed))"
                line += " transactions \(log.transactions.load(ordering: .relaxed))"
                line += " pruned \(log.messagesPruned.load(ordering: .relaxed))"
            } else {
                line += " history off"
            }
            var lines = [line]
            if let udp { lines.append(udp.summary) }
            return .output(lines)
        case "kick":
            guard !rest.isEmpty else { return .output(["usage: kick NAME [reason]"]) }
            let name = String(rest.prefix { $0 != " " })
            let reason = rest.dropFirst(name.count).trimmingCharacters(in: .whitespaces)
            let kicked = hub.kick(name: name, reason: reason.isEmpty ? nil : reason)
            return .output([kicked == 0 ? "nobody called \(name) is connected" : "kicked \(name) (\(kicked) connection\(kicked == 1 ? "" : "s"))"])
        case "say":
            guard !rest.isEmpty else { return .output(["usage: say TEXT"]) }
            hub.notice(rest)
            return .output(["notice sent to \(hub.counters.activeSessions.load(ordering: .relaxed)) clients"])
        case "help", "?":
            return .output(Self.help)
        case "exit", "quit", "shutdown":
            return .exit
        default:
            return .output(["unknown command \"\(command)\"; type help for the list"])
        }
    }
}
