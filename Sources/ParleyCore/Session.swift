import Foundation
import NIOCore
import Synchronization

/// Turns hub events into bytes for one door. The hub renders each event once per format and hands
/// the same buffer to every recipient that uses that format ("encode once, write many").
public protocol WireFormat: AnyObject, Sendable {
    func render(_ event: HubEvent) -> ByteBuffer?
}

/// A door's connection as the hub sees it. Every method is called on `eventLoop` only.
public protocol SessionSink: AnyObject, Sendable {
    var eventLoop: any EventLoop { get }
    var format: any WireFormat { get }
    /// Queues bytes without flushing; a sink whose client stopped reading disconnects it here.
    func enqueue(_ bytes: ByteBuffer)
    /// Flushes what `enqueue` queued in this loop pass.
    func flushQueued()
    /// Sends `finalBytes` (when given), then closes the connection.
    func disconnect(finalBytes: ByteBuffer?)
}

public struct SessionInfo: Sendable, Equatable {
    public let id: Int
    public let name: String
    public let account: String?
    public let door: String
    public let address: String
    public let rooms: [String]
    public let connectedAt: Date
}

/// One connected client on any door. Identity fields change rarely (login, logout, join, part)
/// and are read by other threads (listings, routing), so they sit behind a short lock.
public final class Session: Sendable {
    public let id: Int
    public let door: String
    public let address: String
    public let connectedAt: Date
    let sink: any SessionSink

    struct State {
        var name: String
        var account: String?
        /// Room keys in join order.
        var rooms: [String] = []
        var connected = true
    }
    let state: Mutex<State>

    init(id: Int, name: String, door: String, address: String, sink: any SessionSink) {
        self.id = id
        self.door = door
        self.address = address
        self.connectedAt = Date()
        self.sink = sink
        self.state = Mutex(State(name: name))
    }

    public var name: String { state.withLock { $0.name } }
    public var account: String? { state.withLock { $0.account } }
    public var isLoggedIn: Bool { account != nil }
    public var roomKeys: [String] { state.withLock { $0.rooms } }

    func info(roomNames: [String]) -> SessionInfo {
        state.withLock {
            SessionInfo(id: id, name: $0.name, account: $0.account, door: door, address: address,
                        rooms: roomNames, connectedAt: connectedAt)
        }
    }
}
