import Foundation
import NIOCore
import Synchronization

public struct HubConfig: Sendable {
    /// Refuse chat (room messages, direct messages, /me) from guests.
    public var requireLogin: Bool
    /// The room every new session starts in; it is never removed.
    public var lobby: String
    public var minimumPasswordLength: Int
    /// A room with more members than this is quiet: joins, parts and quits are not announced to its
    /// members (each still sees its own, and NAMES lists everyone), as large Twitch channels do. A
    /// thousand line clients connecting at once would otherwise make half a million JOIN lines in
    /// the lobby. nil: every room announces them.
    public var quietRoomSize: Int?
    public static let defaultQuietRoomSize = 500

    public init(requireLogin: Bool = false, lobby: String = "#lobby", minimumPasswordLength: Int = NameRules.passwordBytes.lowerBound,
                quietRoomSize: Int? = defaultQuietRoomSize) {
        self.requireLogin = requireLogin
        self.lobby = lobby
        self.minimumPasswordLength = minimumPasswordLength
        self.quietRoomSize = quietRoomSize
    }

    /// Whether a room of `members` (counting the one who joins or leaves) announces comings and goings.
    func announces(members: Int) -> Bool {
        quietRoomSize.map { members <= $0 } ?? true
    }
}

/// Server-wide counters. Atomics: exact under any interleaving, no lock on the message path.
public final class HubCounters: Sendable {
    public let connectionsTotal = Atomic<Int>(0)
    public let activeSessions = Atomic<Int>(0)
    /// Chat messages accepted from clients (room messages and direct messages).
    public let messagesRelayed = Atomic<Int>(0)
    /// Copies of events handed to recipients.
    public let deliveries = Atomic<Int>(0)
    /// The most sessions connected at once since the start.
    public let peakSessions = Atomic<Int>(0)
    /// Connections that are not sessions yet (IRC clients still registering).
    public let unregisteredConnections = Atomic<Int>(0)
    /// Connected server operators (IRC OPER). Counted, because LUSERS shows it to every client that
    /// registers: walking every session for it made registering N clients cost N².
    public let serverOperators = Atomic<Int>(0)
    public init() {}

    func sessionAdded() {
        let active = activeSessions.add(1, ordering: .relaxed).newValue
        var peak = peakSessions.load(ordering: .relaxed)
        while active > peak {
            let (exchanged, original) = peakSessions.compareExchange(expected: peak, desired: active, ordering: .relaxed)
            if exchanged { break }
            peak = original
        }
    }
}

public struct RoomInfo: Sendable, Equatable {
    public let name: String
    public let memberCount: Int

    public init(name: String, memberCount: Int) {
        self.name = name
        self.memberCount = memberCount
    }
}

/// A room: its members and its message sequence. The lock is held while a message is numbered
/// and its fan-out is submitted, which is what gives every member the same order.
final class Room: Sendable {
    let name: String
    /// The newest published messages, replayed to joiners; shared with the next room of that name.
    let recent: RecentMessages
    struct State {
        var members: [Session] = [] {
            didSet { plan = nil }
        }
        /// The members grouped for a message's fan-out; made again after the membership changed.
        var plan: FanOutPlan?
        /// Modes, topic, operators (whoever joins an empty room becomes one), voices, bans.
        var settings = RoomSettings()
        var sequence: UInt64 = 0
        /// Set when the room is removed from the hub; a late joiner then recreates it.
        var closed = false
        /// Its messages being stored, for a PING's wait (`Hub.afterPublished(to:)`).
        var stored = SettleCount()
    }
    let state = Mutex(State())

    /// Runs `body` once the messages logged in this room up to `mark` are settled (at once if they
    /// are, or if the room is closed: then it has no members left to reach).
    func whenSettled(upTo mark: UInt32, _ body: @escaping @Sendable () -> Void) {
        let now = state.withLock { state in state.closed || state.stored.wait(upTo: mark, body) }
        if now { body() }
    }

    /// Settles one logged message (outside `state`'s lock).
    func settleOne() {
        for body in state.withLock({ $0.stored.settle() }) { body() }
    }

    init(name: String, recent: RecentMessages) {
        self.name = name
        self.recent = recent
    }
}

/// Runs on the sender's event loop once its message is published (after its own copy is queued), or
/// with the reason it was not.
public typealias PublishedHandler<Message> = @Sendable (Result<Message, HubError>) -> Void

/// The hub: accounts, rooms and sessions, shared by every door. It knows no wire format: it hands
/// `HubEvent`s to `SessionSink`s, rendered once per `WireFormat`.
///
/// Lock order: `registry` and `rooms` are never held together; a room's own lock may be taken
/// inside `rooms`; a session's lock is a leaf.
public final class Hub: Sendable {
    public let config: HubConfig
    public let counters = HubCounters()
    let accounts: any AccountStore
    let hasher: any PasswordHasher
    public let throttle: LoginThrottle

    struct Registry {
        var sessions: [Int: Session] = [:]
        /// Name key -> ids of the sessions using that name (several for one account).
        var byName: [String: [Int]] = [:]
        /// Names being registered right now: nobody else may take them meanwhile.
        var pendingNames: Set<String> = []
        var accepting = true
    }
    let registry = Mutex(Registry())
    let rooms = Mutex<[String: Room]>([:])
    /// Per room key: recent messages for replay. Taken inside `rooms`, never the other way round.
    private let recentByRoom = Mutex<[String: RecentMessages]>([:])
    private let nextSessionID = Atomic<Int>(1)
    private let nextGuestNumber = Atomic<Int>(1)
    private let stamper: MessageStamper
    /// Durable history; nil: messages are published as soon as they are accepted and nothing is kept.
    let log: (any MessageLog)?
    /// One per event loop: committed room messages are fanned out there, each room on one of them.
    private let publishers: [PublishQueue]
    private let nextPublisher = Atomic<Int>(0)
    public let history: HistoryConfig
    /// A valid bcrypt hash of a random string: an unknown account costs as much to check as a known one.
    private let dummyHash = Mutex<String?>(nil)

    /// `firstSerial` and `lastTimeMs`: where the log's ids and times stand, so they keep increasing;
    /// `recent`: the newest messages of each room, for replay on join.
    public init(config: HubConfig = HubConfig(), accounts: any AccountStore, hasher: any PasswordHasher,
                throttle: LoginThrottle = LoginThrottle(), log: (any MessageLog)? = nil,
                history: HistoryConfig = HistoryConfig(), firstSerial: UInt64 = 1, lastTimeMs: Int64 = 0,
                recent: [RoomMessage] = [], publishTurns: [NextTurn] = []) {
        self.config = config
        self.accounts = accounts
        self.hasher = hasher
        self.throttle = throttle
        self.log = log
        self.history = history
        self.stamper = MessageStamper(firstSerial: firstSerial, lastTimeMs: lastTimeMs)
        let counters = self.counters
        self.publishers = publishTurns.map { turn in
            PublishQueue(turn: turn) { counters.deliveries.load(ordering: .relaxed) }
        }
        let byRoom = Dictionary(grouping: recent) { NameRules.key($0.room) }
        for (key, messages) in byRoom { _ = recentMessages(forKey: key, initial: messages) }
    }

    private func recentMessages(forKey key: String, initial: [RoomMessage] = []) -> RecentMessages {
        recentByRoom.withLock { map in
            if let recent = map[key] { return recent }
            // Rooms take the publishing loops in turn.
            let publisher = publishers.isEmpty ? nil : publishers[nextPublisher.wrappingAdd(1, ordering: .relaxed).oldValue % publishers.count]
            let recent = RecentMessages(capacity: history.replayOnJoin, initial: initial, publisher: publisher)
            map[key] = recent
            return recent
        }
    }

    /// Messages older than this are past the retention period (nil: kept for ever).
    var retentionCutoff: Date? {
        history.maxAge.map { Date().addingTimeInterval(-Double($0.components.seconds)) }
    }

    // MARK: Sessions

    /// Registers a new connection as a guest in the lobby; nil once the hub is shutting down.
    public func connect(door: String, address: String, sink: any SessionSink) -> Session? {
        try? connect(door: door, address: address, sink: sink, name: nil, user: nil, joinLobby: true)
    }

    /// Registers a new connection under `name` (a guest name when nil). A name must be free online;
    /// whether an account holds it is the door's question (it may already be logged in as that account).
    public func connect(door: String, address: String, sink: any SessionSink, name: String?, user: String?,
                        realName: String? = nil, account: String? = nil, joinLobby: Bool) throws(HubError) -> Session {
        let id = nextSessionID.wrappingAdd(1, ordering: .relaxed).oldValue
        let loopID = ObjectIdentifier(sink.eventLoop)
        let turn = publishers.first { ObjectIdentifier($0.turn.loop) == loopID }?.turn
        let session = Session(id: id, name: name ?? newGuestName(), user: user, door: door, address: address, sink: sink, turn: turn)
        session.state.withLock {
            $0.account = account
            $0.realName = realName
        }
        let key = NameRules.key(session.name)
        try registry.withLock { (registry) throws(HubError) in
            guard registry.accepting else { throw .shuttingDown }
            let holders = registry.byName[key] ?? []
            if name != nil, registry.pendingNames.contains(key)
                || holders.contains(where: { registry.sessions[$0]?.account == nil || registry.sessions[$0]?.account != account }) {
                throw .nameTaken(session.name)
            }
            registry.sessions[id] = session
            registry.byName[key, default: []].append(id)
        }
        counters.connectionsTotal.add(1, ordering: .relaxed)
        counters.sessionAdded()
        if joinLobby { _ = try? join(session, room: config.lobby, key: nil, bypassModes: true) }
        return session
    }

    /// Removes a session that closed; it leaves every room. Safe to call more than once.
    /// Makes the session a server operator (IRC OPER), counted in `counters.serverOperators`.
    public func makeServerOperator(_ session: Session) {
        // Under the session's lock, as `disconnect` reads both: counted once, uncounted once.
        let counted = session.state.withLock { state in
            defer { state.serverOperator = true }
            return state.connected && !state.serverOperator
        }
        if counted { counters.serverOperators.add(1, ordering: .relaxed) }
    }

    public func disconnect(_ session: Session, reason: String? = nil) {
        let reason = reason.flatMap(NameRules.cleanText)
        let (wasConnected, wasOperator) = session.state.withLock { state in
            defer { state.connected = false }
            return (state.connected, state.serverOperator)
        }
        guard wasConnected else { return }
        if wasOperator { counters.serverOperators.subtract(1, ordering: .relaxed) }
        // The name is read under the registry lock, as `rename` changes it under that lock.
        let (speaker, roomKeys, accepting) = registry.withLock { registry in
            registry.sessions[session.id] = nil
            let (speaker, roomKeys) = (session.speaker, session.roomKeys)
            removeName(NameRules.key(speaker.name), id: session.id, in: &registry)
            return (speaker, roomKeys, registry.accepting)
        }
        counters.activeSessions.subtract(1, ordering: .relaxed)
        for body in session.state.withLock({ $0.directs.releaseAll() }) { body() }
        // One QUIT to each peer, not one PART per shared room.
        if accepting { deliver(.quit(who: speaker, reason: reason), to: roomPeers(of: session, roomKeys: roomKeys, announcingOnly: true)) }
        for key in roomKeys {
            leaveRoom(session, key: key, who: speaker, reason: reason, notify: false)
        }
    }

    /// Closes a session from the server side after telling it why.
    public func drop(_ session: Session, _ reason: GoodbyeReason) {
        let sink = session.sink
        let bytes = sink.format.render(.goodbye(reason))
        hubTask(on: session) { sink.disconnect(finalBytes: bytes) }
    }

    public func session(id: Int) -> Session? {
        registry.withLock { $0.sessions[id] }
    }

    public func sessions(named name: String) -> [Session] {
        registry.withLock { registry in
            (registry.byName[NameRules.key(name)] ?? []).compactMap { registry.sessions[$0] }
        }
    }

    public func allSessions() -> [Session] {
        registry.withLock { Array($0.sessions.values) }.sorted { $0.id < $1.id }
    }

    public func online() -> [SessionInfo] {
        allSessions().map { $0.info(roomNames: roomNames(for: $0.roomKeys)) }
    }

    // MARK: Rooms

    /// Joins a room, creating it when needed. Returns the room's display name, whether the
    /// session was already a member (then nothing is announced), and the recent messages replayed to it
    /// right after its JOIN (in the same task, so no newer message can come before them).
    /// `echo: false`: the joiner is not sent its own JOIN (the door shows it itself, labeled), nor a replay.
    @discardableResult
    public func join(_ session: Session, room roomName: String, key joinKey: String? = nil, echo: Bool = true) throws(HubError) -> (name: String, alreadyMember: Bool, replayed: [RoomMessage]) {
        try join(session, room: roomName, key: joinKey, bypassModes: false, echo: echo)
    }

    /// `bypassModes`: the automatic join of the lobby, which no mode may refuse (a new session that
    /// could not be in the lobby would be told it is there and could not speak).
    private func join(_ session: Session, room roomName: String, key joinKey: String?, bypassModes: Bool, echo: Bool = true) throws(HubError) -> (name: String, alreadyMember: Bool, replayed: [RoomMessage]) {
        if let error = NameRules.validateRoom(roomName) { throw error }
        let key = NameRules.key(roomName)
        while true {
            let room = rooms.withLock { rooms in
                if let room = rooms[key] { return room }
                let room = Room(name: roomName, recent: recentMessages(forKey: key))
                rooms[key] = room
                return room
            }
            let outcome: (joined: Bool, retry: Bool, replayed: [RoomMessage]) = try room.state.withLock { (state) throws(HubError) in
                if state.closed { return (false, true, []) }
                if state.members.contains(where: { $0 === session }) { return (false, false, []) }
                let speaker = session.speaker
                let nameKey = NameRules.key(speaker.name)
                let invited = bypassModes || state.settings.invited.contains(nameKey)
                // The order of the usual servers: ban, invite-only, key, limit. An invitation passes all four.
                if state.settings.isBanned(speaker) && !invited { throw .banned(room.name) }
                if state.settings.inviteOnly && !invited && !state.settings.isInviteExcepted(speaker) { throw .inviteOnly(room.name) }
                if let required = state.settings.key, required != joinKey, !invited { throw .badKey(room.name) }
                if let limit = state.settings.limit, state.members.count >= limit, !invited { throw .roomFull(room.name) }
                // A session that disconnected meanwhile must not be added: nothing would remove it.
                let connected = session.state.withLock { session in
                    if session.connected { session.rooms.append(key) }
                    return session.connected
                }
                guard connected else { return (false, false, []) }
                state.settings.invited.remove(nameKey)
                if state.members.isEmpty { state.settings.operators.insert(session.id) }
                state.members.append(session)
                // Not `last:`: that copy follows echo-message, but everyone, IRC or not, sees its own JOIN.
                if config.announces(members: state.members.count) {
                    deliver(.joined(room: room.name, who: speaker), to: echo ? state.members : state.members.filter { $0 !== session })
                } else if echo {
                    deliver(.joined(room: room.name, who: speaker), to: [session])
                }
                // Under the room lock, like publishing: each message is either replayed here or
                // delivered live afterwards, never both, never neither.
                let replayed = echo ? room.recent.snapshot(notBefore: retentionCutoff) : []
                if !replayed.isEmpty { deliver(.history(room: room.name, messages: replayed), to: [session]) }
                return (true, false, replayed)
            }
            if outcome.retry { continue }
            if !outcome.joined { removeIfEmpty(room, key: key) }
            return (room.name, !outcome.joined, outcome.replayed)
        }
    }

    /// Leaves a room; returns its display name.
    @discardableResult
    public func part(_ session: Session, room roomName: String, reason: String? = nil) throws(HubError) -> String {
        let reason = reason.flatMap(NameRules.cleanText)
        let key = NameRules.key(roomName)
        guard let room = rooms.withLock({ $0[key] }) else {
            if let error = NameRules.validateRoom(roomName) { throw error }
            throw .notInRoom(roomName)
        }
        guard session.roomKeys.contains(key) else { throw .notInRoom(room.name) }
        leaveRoom(session, key: key, who: session.speaker, reason: reason, notify: true)
        return room.name
    }

    private func leaveRoom(_ session: Session, key: String, who: Speaker, reason: String?, notify: Bool) {
        guard let room = rooms.withLock({ $0[key] }) else { return }
        let nowEmpty = room.state.withLock { state in
            guard let index = state.members.firstIndex(where: { $0 === session }) else { return false }
            if notify {
                deliver(.parted(room: room.name, who: who, reason: reason),
                        to: config.announces(members: state.members.count) ? state.members : [session])
            }
            state.members.remove(at: index)
            state.settings.operators.remove(session.id)
            state.settings.voiced.remove(session.id)
            session.state.withLock { $0.rooms.removeAll { $0 == key } }
            return state.members.isEmpty
        }
        if nowEmpty { removeIfEmpty(room, key: key) }
    }

    /// Forgets a room nobody is in (the lobby stays); a late joiner recreates it.
    private func removeIfEmpty(_ room: Room, key: String) {
        guard key != NameRules.key(config.lobby) else { return }
        var released: [@Sendable () -> Void] = []
        rooms.withLock { rooms in
            room.state.withLock { state in
                guard state.members.isEmpty, rooms[key] === room else { return }
                state.closed = true
                rooms[key] = nil
                released = state.stored.releaseAll()
            }
        }
        // Nobody is left in the room for them to wait for.
        for body in released { body() }
    }

    public func roomList() -> [RoomInfo] {
        let all = rooms.withLock { Array($0.values) }
        return all.map { room in RoomInfo(name: room.name, memberCount: room.state.withLock { $0.members.count }) }
            .sorted { NameRules.key($0.name) < NameRules.key($1.name) }
    }

    public func roomName(_ name: String) -> String? {
        rooms.withLock { $0[NameRules.key(name)]?.name }
    }

    /// Members of a room, in join order; nil when there is no such room.
    public func members(of roomName: String) -> [Session]? {
        guard let room = rooms.withLock({ $0[NameRules.key(roomName)] }) else { return nil }
        return room.state.withLock { $0.members }
    }

    /// Members with their operator and voice flags, plus the room's settings; nil when there is no such room.
    public func details(of roomName: String) -> (name: String, members: [(session: Session, isOperator: Bool, isVoiced: Bool)], settings: RoomSettings)? {
        guard let room = rooms.withLock({ $0[NameRules.key(roomName)] }) else { return nil }
        return room.state.withLock { state in
            (room.name, state.members.map { ($0, state.settings.operators.contains($0.id), state.settings.voiced.contains($0.id)) }, state.settings)
        }
    }

    // MARK: Channel administration

    private func room(_ name: String) throws(HubError) -> Room {
        guard let room = rooms.withLock({ $0[NameRules.key(name)] }) else {
            if let error = NameRules.validateRoom(name) { throw error }
            throw .noSuchRoom(name)
        }
        return room
    }

    /// Sets the topic: members may when the topic is not locked (+t), operators always.
    public func setTopic(_ session: Session, room roomName: String, text: String) throws(HubError) {
        let room = try room(roomName)
        let speaker = session.speaker
        try room.state.withLock { (state) throws(HubError) in
            guard state.members.contains(where: { $0 === session }) else { throw .notInRoom(room.name) }
            if state.settings.topicLocked && !state.settings.operators.contains(session.id) { throw .needsOperator(room.name) }
            let text = String(text.unicodeScalars.filter { $0.value >= 0x20 && $0.value != 0x7F }.prefix(300).map(Character.init))
            state.settings.topic = text.isEmpty ? nil : RoomTopic(text: text, setBy: speaker.name, setAt: Date())
            deliver(.topicChanged(room: room.name, by: speaker, text: text), to: state.members)
        }
    }

    /// Applies mode changes as an operator. Returns the changes that took effect and the errors of
    /// those that did not (an op or voice for someone not in the room).
    @discardableResult
    public func changeModes(_ session: Session, room roomName: String, _ changes: [ModeChange]) throws(HubError) -> (applied: [ModeChange], errors: [HubError]) {
        let room = try room(roomName)
        let speaker = session.speaker
        return try room.state.withLock { (state) throws(HubError) in
            guard state.settings.operators.contains(session.id) else { throw .needsOperator(room.name) }
            var applied: [ModeChange] = []
            var errors: [HubError] = []
            for change in changes {
                var effective = change
                switch change.mode {
                case .topicLock: state.settings.topicLocked = change.adding
                case .noExternal: state.settings.noExternal = change.adding
                case .moderated: state.settings.moderated = change.adding
                case .secret: state.settings.secret = change.adding
                case .inviteOnly:
                    state.settings.inviteOnly = change.adding
                    if !change.adding { state.settings.invited = [] }
                case .key:
                    if change.adding {
                        guard let key = change.argument, !key.isEmpty, !key.contains(" ") else { continue }
                        state.settings.key = key
                    } else {
                        guard state.settings.key != nil else { continue }
                        effective.argument = "*"
                        state.settings.key = nil
                    }
                case .limit:
                    if change.adding {
                        guard let limit = change.argument.flatMap({ Int($0) }), limit > 0 else { continue }
                        state.settings.limit = limit
                        effective.argument = String(limit)
                    } else {
                        guard state.settings.limit != nil else { continue }
                        state.settings.limit = nil
                        effective.argument = nil
                    }
                case .ban, .banException, .inviteException:
                    guard let mask = change.argument, !mask.isEmpty else { continue }
                    let list = state.settings[list: change.mode]
                    let present = list.contains { NameRules.key($0) == NameRules.key(mask) }
                    guard present != change.adding else { continue }
                    state.settings[list: change.mode] = change.adding
                        ? list + [mask] : list.filter { NameRules.key($0) != NameRules.key(mask) }
                case .op, .voice:
                    guard let name = change.argument else { continue }
                    guard let member = state.members.first(where: { NameRules.key($0.name) == NameRules.key(name) }) else {
                        errors.append(.userNotInRoom(name: name, room: room.name))
                        continue
                    }
                    effective.argument = member.name
                    if change.mode == .op {
                        if change.adding { state.settings.operators.insert(member.id) } else { state.settings.operators.remove(member.id) }
                    } else {
                        if change.adding { state.settings.voiced.insert(member.id) } else { state.settings.voiced.remove(member.id) }
                    }
                }
                applied.append(effective)
            }
            if !applied.isEmpty {
                deliver(.modesChanged(room: room.name, by: speaker, changes: applied), to: state.members)
            }
            return (applied, errors)
        }
    }

    /// An operator removes someone from a room (every connection of that name in it).
    public func kick(_ session: Session, room roomName: String, target: String, reason: String?) throws(HubError) {
        let room = try room(roomName)
        let speaker = session.speaker
        let reason = reason.flatMap(NameRules.cleanText)
        let key = NameRules.key(room.name)
        let nowEmpty: Bool = try room.state.withLock { (state) throws(HubError) in
            let serverOperator = session.isServerOperator
            guard serverOperator || state.members.contains(where: { $0 === session }) else { throw .notInRoom(room.name) }
            guard serverOperator || state.settings.operators.contains(session.id) else { throw .needsOperator(room.name) }
            let targets = state.members.filter { NameRules.key($0.name) == NameRules.key(target) }
            guard let first = targets.first else { throw .userNotInRoom(name: target, room: room.name) }
            deliver(.kicked(room: room.name, by: speaker, target: first.name, reason: reason), to: state.members)
            state.members.removeAll { member in targets.contains { $0 === member } }
            for member in targets {
                state.settings.operators.remove(member.id)
                state.settings.voiced.remove(member.id)
                // Inside the room lock, so a rejoin cannot interleave with this bookkeeping.
                member.state.withLock { $0.rooms.removeAll { $0 == key } }
            }
            return state.members.isEmpty
        }
        if nowEmpty { removeIfEmpty(room, key: key) }
    }

    /// Rooms the session's name has a pending invitation to.
    public func invitations(for session: Session) -> [String] {
        let key = NameRules.key(session.name)
        let all = rooms.withLock { Array($0.values) }
        return all.filter { room in room.state.withLock { $0.settings.invited.contains(key) } }.map(\.name).sorted()
    }

    /// Invites a user to a room; the invitation lets them past +i, +k, +l and bans once.
    @discardableResult
    public func invite(_ session: Session, target: String, room roomName: String) throws(HubError) -> (target: String, room: String) {
        let targets = sessions(named: target)
        guard let first = targets.first else { throw .noSuchUser(target) }
        let room = try room(roomName)
        let speaker = session.speaker
        try room.state.withLock { (state) throws(HubError) in
            guard state.members.contains(where: { $0 === session }) else { throw .notInRoom(room.name) }
            if state.members.contains(where: { NameRules.key($0.name) == NameRules.key(target) }) {
                throw .alreadyInRoom(name: first.name, room: room.name)
            }
            if state.settings.inviteOnly && !state.settings.operators.contains(session.id) { throw .needsOperator(room.name) }
            state.settings.invited.insert(NameRules.key(first.name))
        }
        deliver(.invited(room: room.name, by: speaker, target: first.name), to: targets)
        return (first.name, room.name)
    }

    public func roomNames(for keys: [String]) -> [String] {
        rooms.withLock { rooms in keys.compactMap { rooms[$0]?.name } }
    }

    // MARK: Chat

    /// Sends a message to a room the session is in. With a history, it is stored first and published
    /// once committed (persist, then publish). Every other member is handed it before the sender gets
    /// its echo, which is the sender's acknowledgement.
    /// `echo: false`: the door acknowledges the message itself (IRC labeled-response), so the hub
    /// sends no copy back to the sender. `then` runs on the sender's loop once it is published.
    /// Returns the message as numbered.
    @discardableResult
    public func say(_ session: Session, room roomName: String, text: String, kind: MessageKind = .say,
                    tags: [MessageTag] = [], echo: Bool = true, then: PublishedHandler<RoomMessage>? = nil) throws(HubError) -> RoomMessage {
        if config.requireLogin && !session.isLoggedIn { throw .loginRequired }
        guard let text = kind == .tagOnly ? "" : NameRules.cleanText(text) else { throw .emptyMessage }
        let key = NameRules.key(roomName)
        guard let room = rooms.withLock({ $0[key] }) else { throw .noSuchRoom(roomName) }
        let isMember = session.roomKeys.contains(key)
        let sender = session.speaker
        let published: RoomMessage = try room.state.withLock { (state) throws(HubError) in
            if !isMember && state.settings.noExternal { throw .notInRoom(room.name) }
            if state.settings.moderated && !state.settings.operators.contains(session.id) && !state.settings.voiced.contains(session.id) {
                throw .moderated(room.name)
            }
            if state.settings.isBanned(sender) && !state.settings.operators.contains(session.id) && !state.settings.voiced.contains(session.id) {
                throw .banned(room.name)
            }
            state.sequence += 1
            let stamp = stamper.next()
            let message = RoomMessage(room: room.name, sender: sender, text: text, kind: kind,
                                      sequence: state.sequence, time: stamp.time, serial: stamp.serial, tags: tags)
            if kind != .tagOnly && (log != nil || room.recent.publisher != nil) {
                // Queued under the room lock, so the log's order (and the publishing order) is the room's.
                // Without a history a message still goes through the room's publishing queue: fanned
                // out in bounded passes between the loop's reads, as committed messages are. Fanned out
                // in the turn that read it, a turn held every message read in it, and a PING waited for
                // all of their copies (86-117 ms p99 in the rooms benchmark with --history off).
                state.stored.logged &+= 1
                let publication = Publication(hub: self, message: message, key: key, loggedIn: room, sender: session,
                                              echo: echo, then: then)
                if let log {
                    log.append(publication)
                } else {
                    room.recent.publisher?.submit(publication)
                }
            } else {
                // Tag-only messages (typing notices, reactions) are not history: published at once.
                if kind != .tagOnly { room.recent.append(message) }
                deliverToRoom(message, &state, sender: session, echo: echo, then: then)
            }
            return message
        }
        counters.messagesRelayed.add(1, ordering: .relaxed)
        return published
    }

    /// A room message on its way to the members: the log's entry for it (with a history) and the work
    /// its room's queue runs. It holds what `publish` needs itself, rather than a closure that does.
    private final class Publication: RoomLogEntry {
        let hub: Hub
        let message: RoomMessage
        let key: String
        let loggedIn: Room
        let sender: Session
        let echo: Bool
        let then: PublishedHandler<RoomMessage>?
        let firstReads: ColdReads
        var room: String { loggedIn.name }
        var publisher: PublishQueue? { loggedIn.recent.publisher }

        init(hub: Hub, message: RoomMessage, key: String, loggedIn: Room, sender: Session, echo: Bool,
             then: PublishedHandler<RoomMessage>?) {
            self.hub = hub
            self.message = message
            self.key = key
            self.loggedIn = loggedIn
            self.sender = sender
            self.echo = echo
            self.then = then
            // Publishing reads the message, its text (rendering), the sender and its sink (the echo),
            // and what the sender's callback captured.
            var reads = ColdReads()
            reads.add(message)
            reads.add(storageOf: message.text)
            reads.add(sender)
            reads.add(sender.sink)
            if let then { reads.add(contextOf: then) }
            firstReads = reads
        }

        func run(committed: Bool) {
            guard committed else {
                // Reported before it is settled: what waited for it (a PONG, a held command) comes
                // after the sender's error.
                hub.report(.failure(.storeFailed("store your message")), to: sender, then)
                loggedIn.settleOne()
                return
            }
            hub.publish(message, key: key, loggedIn: loggedIn, sender: sender, echo: echo, then: then)
        }
    }

    /// Publishes a committed room message to the room's members as they are now (the log's thread).
    /// `loggedIn`: the room whose count the message was logged in; it is settled there.
    private func publish(_ message: RoomMessage, key: String, loggedIn: Room, sender: Session, echo: Bool,
                         then: PublishedHandler<RoomMessage>?) {
        // Settled in the room it was logged in (a room recreated meanwhile has counts of its own), once
        // the members' copies are handed to their loops, so that a PONG that waited follows them.
        defer { loggedIn.settleOne() }
        /// Publishes in `room` unless it has closed.
        func publishIfOpen(_ room: Room) -> Bool {
            let (open, local) = room.state.withLock { state -> (Bool, LocalDelivery?) in
                if state.closed { return (false, nil) }
                room.recent.append(message)
                return (true, deliverToRoom(message, &state, sender: sender, echo: echo, then: then, allowLocal: true))
            }
            // Outside the room's lock: `then` may run a command the door held, which may lock it.
            local?.run()
            return open
        }
        // Usually the room is still open, and then it is the registry's (a room is closed and removed
        // together): published without the registry's lock and lookup.
        if publishIfOpen(loggedIn) { return }
        while true {
            // With no room (everyone left), the message only joins the replay, under the `rooms` lock so
            // that a joiner recreating the room meanwhile sees it there.
            let room = rooms.withLock { rooms -> Room? in
                if let room = rooms[key] { return room }
                recentMessages(forKey: key).append(message)
                return nil
            }
            guard let room else {
                if let after = completion(then, message) { hubTask(on: sender, after) }
                return
            }
            if publishIfOpen(room) { return }
        }
    }

    private func completion<Message: Sendable>(_ then: PublishedHandler<Message>?, _ message: Message) -> (@Sendable () -> Void)? {
        guard let then else { return nil }
        return { then(.success(message)) }
    }

    /// Tells a sender's door what became of its message, on the sender's loop; without a handler, a
    /// failure reaches the sender as a `refused` event.
    private func report<Message: Sendable>(_ result: Result<Message, HubError>, to session: Session, _ then: PublishedHandler<Message>?) {
        if let then {
            hubTask(on: session) { then(result) }
        } else if case .failure(let error) = result {
            deliver(.refused(error), to: [session])
        }
    }

    /// A direct message to every session of a name; the sender gets an echo after the recipients.
    /// With a history, it is stored first, and a message to an account that is offline is kept and
    /// handed over at its next login (`deliverPending`). Finding out whether an offline name is an
    /// account takes a store lookup, so `noSuchUser` may come through `then` rather than be thrown.
    public func direct(_ session: Session, to name: String, text: String, kind: MessageKind = .say,
                       tags: [MessageTag] = [], echo: Bool = true, then: PublishedHandler<DirectMessage>? = nil) throws(HubError) {
        if config.requireLogin && !session.isLoggedIn { throw .loginRequired }
        guard let text = kind == .tagOnly ? "" : NameRules.cleanText(text) else { throw .emptyMessage }
        let sender = session.speaker
        let outgoing: @Sendable (String, (serial: UInt64, time: Date), DirectMessage.Delivery) -> DirectMessage = { to, stamp, delivery in
            DirectMessage(from: sender, to: to, text: text, kind: kind, echo: false, time: stamp.time,
                          serial: stamp.serial, tags: tags, delivery: delivery)
        }
        let echoCopy = echo && session.receivesOwnMessages
        // Resolved and queued under the registry lock: a login (a rename under the same lock) either
        // comes first and gets it live, or comes after and claims it from the log.
        let sent: (publishNow: (@Sendable () -> Void)?, found: Bool) = registry.withLock { registry in
            let recipients = (registry.byName[NameRules.key(name)] ?? []).compactMap { registry.sessions[$0] }
            guard let first = recipients.first else { return (nil, false) }
            let message = outgoing(first.name, stamper.next(), .live)
            return (sendLive(message, from: session, to: recipients, echo: echoCopy, then: then), true)
        }
        if sent.found {
            sent.publishNow?()
            counters.messagesRelayed.add(1, ordering: .relaxed)
            return
        }
        guard log != nil, kind != .tagOnly else { throw .noSuchUser(name) }
        Task {
            let exists: Bool
            do throws(HubError) {
                exists = try await accountExists(name)
            } catch {
                report(.failure(error), to: session, then)
                return
            }
            guard exists else {
                report(.failure(.noSuchUser(name)), to: session, then)
                return
            }
            registry.withLock { registry in
                let recipients = (registry.byName[NameRules.key(name)] ?? []).compactMap { registry.sessions[$0] }
                if let first = recipients.first {
                    // With a log (the only way here), sending is queuing: nothing to run after the lock.
                    _ = sendLive(outgoing(first.name, stamper.next(), .live), from: session, to: recipients, echo: echoCopy, then: then)
                } else {
                    keepForLater(outgoing(name, stamper.next(), .queued), from: session, account: NameRules.key(name), echo: echoCopy, then: then)
                }
            }
            counters.messagesRelayed.add(1, ordering: .relaxed)
        }
    }

    /// Who a session is in a direct conversation: its account, or, for a guest, its name (marked, so no
    /// account can read a guest's conversations by taking its name).
    private static func participant(account: String?, name: String) -> String {
        account.map(NameRules.key) ?? "~" + NameRules.key(name)
    }

    /// The key both parties' direct messages are stored under.
    static func conversation(_ a: String, _ b: String) -> String {
        a < b ? "@\(a) \(b)" : "@\(b) \(a)"
    }

    /// Queues a direct message on the log, to be published once stored; without a log (or for a
    /// tag-only message) returns the publishing for the caller to run once it has let go of its lock.
    private func sendLive(_ message: DirectMessage, from session: Session, to recipients: [Session], echo: Bool,
                          then: PublishedHandler<DirectMessage>?) -> (@Sendable () -> Void)? {
        let echoed = message.with(echo: true, delivery: .live)
        let publish: @Sendable () -> Void = { [self] in
            let present = recipients.filter { $0.state.withLock { $0.connected } }
            deliver(.direct(message), to: present)
            let after = completion(then, echoed)
            if echo {
                deliver(.direct(echoed), to: [session], then: after)
            } else if let after {
                hubTask(on: session, after)
            }
            // Everyone it was for left before it could be handed over: keep it for the account.
            if present.isEmpty, let account = recipients.first?.account { log?.markPending(serial: message.serial, account: NameRules.key(account)) }
        }
        guard let log, message.kind != .tagOnly else { return publish }
        let recipient = recipients[0]
        let conversation = Self.conversation(Self.participant(account: session.account, name: session.name),
                                             Self.participant(account: recipient.account, name: recipient.name))
        for recipient in recipients { recipient.state.withLock { $0.directs.logged &+= 1 } }
        log.append(.direct(message, conversation: conversation, pendingFor: nil), publisher: nil) { [self] committed in
            // Handed to the recipients' loops (or refused) before their PINGs may be answered.
            defer { for recipient in recipients { recipient.settleDirect() } }
            guard committed else { return report(.failure(.storeFailed("store your message")), to: session, then) }
            publish()
        }
        return nil
    }

    private func keepForLater(_ message: DirectMessage, from session: Session, account: String, echo: Bool,
                              then: PublishedHandler<DirectMessage>?) {
        guard let log else { return }
        let conversation = Self.conversation(Self.participant(account: session.account, name: session.name), account)
        let echoed = message.with(echo: true, delivery: .queued)
        log.append(.direct(message, conversation: conversation, pendingFor: account), publisher: nil) { [self] committed in
            guard committed else { return report(.failure(.storeFailed("store your message")), to: session, then) }
            let after = completion(then, echoed)
            if echo {
                deliver(.direct(echoed), to: [session], then: after)
            } else if let after {
                hubTask(on: session, after)
            }
        }
    }

    /// Runs `body` once every message accepted before this call that could reach `session` has been
    /// handed to its loop: those of its rooms, and direct messages to it. A client that pings to learn
    /// that everything before has arrived relies on this. (Waiting for everything accepted, as before,
    /// made a PING wait for the whole server's backlog: half a second in the rooms benchmark, for a
    /// client in none of those rooms.)
    public func afterPublished(to session: Session, _ body: @escaping @Sendable () -> Void) {
        // Without a history or publishing queues, every message is handed out as it is accepted.
        guard log != nil || !publishers.isEmpty else { return body() }
        // What had been logged for it when the PING came.
        let marks = session.roomKeys.compactMap { key -> (Room, UInt32)? in
            guard let room = rooms.withLock({ $0[key] }) else { return nil }
            return (room, room.state.withLock { $0.stored.logged })
        }
        let directMark = session.state.withLock { $0.directs.logged }
        let remaining = ManagedCounter(marks.count + 2)
        let arrived: @Sendable () -> Void = { if remaining.decrement() == 0 { body() } }
        for (room, mark) in marks { room.whenSettled(upTo: mark, arrived) }
        session.whenDirectsSettled(upTo: directMark, arrived)
        arrived()
    }

    /// Hands a session that just logged in the direct messages its account received while offline,
    /// oldest first, marked as late. Each is handed over once.
    public func deliverPending(to session: Session) async {
        guard let log, let account = session.account else { return }
        guard let kept = try? await log.claimPending(account: NameRules.key(account)), !kept.isEmpty else { return }
        for item in kept {
            guard case .direct(let message, _, _) = item else { continue }
            deliver(.direct(message.with(echo: false, delivery: .late)), to: [session])
        }
    }

    /// A server notice to everyone connected.
    public func notice(_ text: String) {
        deliver(.notice(text), to: allSessions())
    }

    /// Disconnects every session of that name; returns how many.
    public func kick(name: String, reason: String?) -> Int {
        let targets = sessions(named: name)
        for session in targets { drop(session, .kicked(reason: reason)) }
        return targets.count
    }

    /// Stops accepting sessions and tells every session goodbye; returns how many were told.
    public func shutdown() -> Int {
        let all = registry.withLock { registry in
            registry.accepting = false
            return Array(registry.sessions.values)
        }
        for session in all { drop(session, .shutdown) }
        return all.count
    }

    // MARK: Accounts

    public func register(_ session: Session, name: String, password: String) async throws(HubError) {
        if let account = session.account { throw .alreadyLoggedIn(account) }
        try await createAccount(name: name, password: password, by: session.id)
        try rename(session, to: name, account: name)
    }

    /// Creates an account. `by`: the session registering it, which may already use the name; any
    /// other session using it (or registering it right now) makes the name taken.
    public func createAccount(name: String, password: String, by sessionID: Int? = nil) async throws(HubError) {
        if let error = NameRules.validateName(name) { throw error }
        if let error = NameRules.validatePassword(password, minimumLength: config.minimumPasswordLength) { throw error }
        let key = NameRules.key(name)
        try registry.withLock { (registry) throws(HubError) in
            let holders = registry.byName[key] ?? []
            if registry.pendingNames.contains(key) || holders.contains(where: { $0 != sessionID }) {
                throw .nameTaken(name)
            }
            registry.pendingNames.insert(key)
        }
        defer { _ = registry.withLock { $0.pendingNames.remove(key) } }
        let created: Bool
        do {
            let hash = try await hasher.hash(password)
            created = try await accounts.createAccount(AccountRecord(name: name, passwordHash: hash, createdAt: Date()))
        } catch {
            throw .storeFailed("create the account")
        }
        guard created else { throw .nameTaken(name) }
    }

    public func login(_ session: Session, name: String, password: String) async throws(HubError) {
        if let account = session.account { throw .alreadyLoggedIn(account) }
        let account = try await authenticate(name: name, password: password, address: session.address)
        try adopt(session, account: account)
    }

    /// Logs a session in to an account already authenticated (`authenticate`). It takes the account's
    /// name, unless `keepName` (IRC, where a nick may differ from the account).
    public func adopt(_ session: Session, account: String, keepName: Bool = false) throws(HubError) {
        if let current = session.account { throw .alreadyLoggedIn(current) }
        try rename(session, to: keepName ? session.name : account, account: account)
    }

    /// Changes the name of a session, guest or logged in (IRC NICK): the name must be free online and
    /// not another account's.
    public func changeNick(_ session: Session, to name: String) async throws(HubError) {
        if let error = NameRules.validateName(name) { throw error }
        let ownAccount = session.account.map(NameRules.key)
        if NameRules.key(name) != ownAccount, try await accountExists(name) { throw .nameTaken(name) }
        try rename(session, to: name, account: session.account, onlyIfFree: true)
    }

    /// Checks an account's password (throttled per account and per address) without a session, for
    /// doors that log in before the session exists (IRC SASL and PASS). Returns the account's name.
    public func authenticate(name: String, password: String, address: String) async throws(HubError) -> String {
        let keys = ["account:" + NameRules.key(name), "address:" + Self.host(of: address)]
        guard let wait = throttle.admit(keys: keys) else { throw .tooManyAttempts }
        if wait > .zero { try? await Task.sleep(for: wait) }
        let record: AccountRecord?
        let matches: Bool
        do {
            record = try await accounts.account(named: name)
            let hash: String
            if let record { hash = record.passwordHash } else { hash = try await dummyPasswordHash() }
            let verified = try await hasher.verify(password, against: hash)
            matches = verified && record != nil
        } catch {
            throw .storeFailed("check the login")
        }
        guard matches, let record else {
            throttle.recordFailure(keys: keys)
            throw .loginFailed
        }
        throttle.recordSuccess(keys: keys)
        return record.name
    }

    public func accountExists(_ name: String) async throws(HubError) -> Bool {
        do {
            return try await accounts.accountExists(named: name)
        } catch {
            throw .storeFailed("check the name")
        }
    }

    /// `accountExists` when the account store can answer without waiting; nil when it cannot.
    public func accountExistsAtOnce(_ name: String) -> Bool? {
        accounts.accountExistsAtOnce(named: name)
    }

    /// Gives a guest a fresh guest name (an IRC guest that kept a registered nick past its grace period).
    public func renameToGuest(_ session: Session) {
        guard session.account == nil else { return }
        try? rename(session, to: newGuestName(), account: nil)
    }

    public func logout(_ session: Session) throws(HubError) {
        guard session.isLoggedIn else { throw .notLoggedIn }
        try rename(session, to: newGuestName(), account: nil)
    }

    /// A guest picks a name: one no account has and no one online uses.
    public func changeGuestName(_ session: Session, to name: String) async throws(HubError) {
        if let account = session.account { throw .alreadyLoggedIn(account) }
        if let error = NameRules.validateName(name) { throw error }
        if try await accountExists(name) { throw .nameTaken(name) }
        try rename(session, to: name, account: nil, onlyIfFree: true)
    }

    /// Changes a session's name and tells it and everyone sharing a room with it.
    /// `onlyIfFree`: fail with `nameTaken` if another session uses the name or it is being registered;
    /// checked under the same lock as the change, so two guests cannot both take one name.
    private func rename(_ session: Session, to newName: String, account: String?, onlyIfFree: Bool = false) throws(HubError) {
        // Under the registry lock, so the name index and the session never disagree, and a session
        // that disconnected meanwhile does not leave its new name behind.
        let newKey = NameRules.key(newName)
        var displaced: [Session] = []
        let renamed: (old: Speaker, rooms: [String])? = try registry.withLock { (registry) throws(HubError) in
            guard registry.sessions[session.id] != nil else { return nil }
            if onlyIfFree && (registry.pendingNames.contains(newKey)
                              || (registry.byName[newKey] ?? []).contains(where: { $0 != session.id })) {
                throw .nameTaken(newName)
            }
            let (old, roomKeys) = (session.speaker, session.roomKeys)
            session.state.withLock { state in
                state.name = newName
                state.account = account
            }
            removeName(NameRules.key(old.name), id: session.id, in: &registry)
            // Logging in to an account takes its name back from guests using it (an IRC guest may
            // hold a registered nick for a grace period).
            if account != nil {
                displaced = (registry.byName[newKey] ?? []).compactMap { registry.sessions[$0] }.filter { $0 !== session && $0.account == nil }
            }
            registry.byName[newKey, default: []].append(session.id)
            return (old, roomKeys)
        }
        for guest in displaced { try? rename(guest, to: newGuestName(), account: nil) }
        guard let (old, roomKeys) = renamed else { return }
        guard old.name != newName || old.account != account else { return }
        let recipients = [session] + roomPeers(of: session, roomKeys: roomKeys)
        if old.name != newName { deliver(.renamed(old: old, new: newName), to: recipients) }
        if old.account != account { deliver(.accountChanged(who: session.speaker, account: account), to: recipients) }
    }

    /// Everyone sharing at least one room with the session, once each, without the session itself.
    /// `announcingOnly`: leave out quiet rooms (`HubConfig.quietRoomSize`).
    func roomPeers(of session: Session, roomKeys: [String], announcingOnly: Bool = false) -> [Session] {
        var seen: Set<Int> = [session.id]
        var peers: [Session] = []
        for key in roomKeys {
            guard let members = members(of: key), !announcingOnly || config.announces(members: members.count) else { continue }
            for member in members where seen.insert(member.id).inserted {
                peers.append(member)
            }
        }
        return peers
    }

    /// Marks a session away (with a message) or back (nil), and tells those sharing a room with it.
    public func setAway(_ session: Session, message: String?) {
        let message = message.flatMap(NameRules.cleanText)
        session.away = message
        deliver(.awayChanged(who: session.speaker, message: message), to: roomPeers(of: session, roomKeys: session.roomKeys))
    }

    private func removeName(_ key: String, id: Int, in registry: inout Registry) {
        guard var ids = registry.byName[key] else { return }
        ids.removeAll { $0 == id }
        registry.byName[key] = ids.isEmpty ? nil : ids
    }

    private func newGuestName() -> String {
        "guest-\(nextGuestNumber.wrappingAdd(1, ordering: .relaxed).oldValue)"
    }

    private func dummyPasswordHash() async throws -> String {
        if let hash = dummyHash.withLock({ $0 }) { return hash }
        let hash = try await hasher.hash(UUID().uuidString)
        dummyHash.withLock { $0 = hash }
        return hash
    }

    public static func host(of address: String) -> String {
        // "[::1]:5000" or "127.0.0.1:5000" -> the part before the port.
        guard let colon = address.lastIndex(of: ":") else { return address }
        return String(address[..<colon])
    }

    // MARK: History

    /// The history key of a target as `session` may read it: a room it is in, or its direct
    /// conversation with a name (logged-in users only). Returns the key and the target's display name.
    public func historyTarget(for session: Session, _ target: String) throws(HubError) -> (key: String, name: String) {
        guard log != nil else { throw .historyUnavailable }
        if target.hasPrefix("#") {
            if let error = NameRules.validateRoom(target) { throw error }
            let key = NameRules.key(target)
            guard session.roomKeys.contains(key) else { throw .notInRoom(roomName(target) ?? target) }
            return (key, roomName(target) ?? target)
        }
        guard let account = session.account else { throw .historyNeedsLogin }
        if let error = NameRules.validateName(target) { throw error }
        let other = sessions(named: target).first
        let peer = other.map { Self.participant(account: $0.account, name: $0.name) } ?? NameRules.key(target)
        return (Self.conversation(NameRules.key(account), peer), other?.name ?? target)
    }

    /// Messages of a target (see `historyTarget`), oldest first, never older than the retention period.
    public func history(_ key: String, _ range: HistoryRange) async throws(HubError) -> [LoggedMessage] {
        guard let log else { throw .historyUnavailable }
        var range = range
        if let cutoff = retentionCutoff {
            range.after = max(range.after ?? .before(cutoff), .before(cutoff))
        }
        do {
            return try await log.messages(target: key, in: range)
        } catch {
            throw .storeFailed("read the history")
        }
    }

    /// Where a message (by IRC msgid) stands in a target's history; nil if the target has no such message.
    public func historyCursor(msgid: String, in key: String) async throws(HubError) -> HistoryCursor? {
        guard let log else { throw .historyUnavailable }
        guard let serial = MessageID.serial(msgid) else { return nil }
        do {
            return try await log.message(serial: serial, in: key)?.cursor
        } catch {
            throw .storeFailed("read the history")
        }
    }

    /// The session's rooms and direct conversations with messages between two times, with the time of
    /// the latest; a conversation is named by the other party.
    public func historyTargets(for session: Session, from: Date, to: Date, limit: Int) async throws(HubError) -> [(name: String, latest: Date)] {
        guard let log else { throw .historyUnavailable }
        let me = session.account.map(NameRules.key)
        let rooms = session.roomKeys
        let found: [(target: String, latest: Date)]
        do {
            found = try await log.activeTargets(rooms: rooms, conversationsOf: me, from: from, to: to, limit: limit)
        } catch {
            throw .storeFailed("read the history")
        }
        return found.map { item in
            guard item.target.hasPrefix("@"), let me else { return (roomName(item.target) ?? item.target, item.latest) }
            let parties = item.target.dropFirst().split(separator: " ").map(String.init)
            let other = parties.first { $0 != me } ?? me
            return (other.hasPrefix("~") ? String(other.dropFirst()) : other, item.latest)
        }
    }

    // MARK: Fan-out

    /// A room message to every member, through the room's fan-out plan: the sender's copy (its
    /// acknowledgement) comes after every other member's, and `then` after that, on the sender's loop.
    /// A sender outside the room (a room without +n) takes the general path.
    /// `then` is called by the task itself, not wrapped in a closure that calls it with the message:
    /// one allocation less per message.
    ///
    /// `allowLocal` (the publishing pass, on its loop): the copies for this loop's members are not
    /// queued as a task when no task of the hub's waits on this loop (`NextTurn.hubIsCaughtUpHere`),
    /// since nothing the hub sent them earlier can still be in the queue; they are returned, for the
    /// caller to hand over once it has let go of the room's lock. A task a message cost about 200 ns
    /// (its closure, the queue, its destruction), a twentieth of the loop's time in rooms.
    @discardableResult
    func deliverToRoom(_ message: RoomMessage, _ state: inout Room.State, sender: Session, echo: Bool,
                       then: PublishedHandler<RoomMessage>?, allowLocal: Bool = false) -> LocalDelivery? {
        let event = HubEvent.message(message)
        let plan = FanOutPlan.current(for: &state)
        guard plan.includes(sender) else {
            deliver(event, to: state.members, last: sender, deliverLast: echo, then: completion(then, message))
            return nil
        }
        let copies = Renderings(plan.formats, rendering: event)
        let echoCopy = echo && sender.receivesOwnMessages
        let senderSink = sender.sink
        var count = 0
        for which in 0..<copies.count where copies[which] != nil { count += plan.membersPerFormat[which] }
        if !echoCopy, let which = plan.formatIndex(of: senderSink), copies[which] != nil { count -= 1 }
        // The sender's loop goes last, so its echo is submitted after every other copy.
        // The tasks hold the plan (a class) and find their batch by index: capturing a batch (a
        // struct of four arrays and a loop) cost a retain and a release of each, every message.
        var local: LocalDelivery?
        func handOver(_ index: Int, echo: Bool, then: PublishedHandler<RoomMessage>?) {
            let turn = plan.batches[index].turn
            if allowLocal, let turn, turn.hubIsCaughtUpHere {
                local = LocalDelivery(plan: plan, index: index, copies: copies, except: senderSink, echo: echo, then: then, message: message)
                return
            }
            turn?.hubTaskQueued()
            plan.batches[index].loop.execute {
                plan.batches[index].deliver(copies, except: senderSink, echo: echo)
                then?(.success(message))
                turn?.hubTaskRan()
            }
        }
        for index in plan.batches.indices where plan.batches[index].loopID != sender.loopID {
            handOver(index, echo: false, then: nil)
        }
        for index in plan.batches.indices where plan.batches[index].loopID == sender.loopID {
            handOver(index, echo: echoCopy, then: then)
        }
        counters.deliveries.add(count, ordering: .relaxed)
        return local
    }

    /// Queues `body` on `session`'s loop as a task of the hub's (counted by the loop's turn).
    private func hubTask(on session: Session, _ body: @escaping @Sendable () -> Void) {
        guard let turn = session.turn else { return session.loop.execute(body) }
        turn.hubTaskQueued()
        session.loop.execute {
            body()
            turn.hubTaskRan()
        }
    }

    /// Hands an event to recipients: rendered once per wire format, one task per event loop,
    /// each recipient flushed once. `last`, when given, is handed its copy after everyone else.
    /// `then` runs after all of it, on the loop of `last` (or of the only recipient).
    func deliver(_ event: HubEvent, to recipients: [Session], last: Session? = nil, deliverLast: Bool = true,
                 then: (@Sendable () -> Void)? = nil) {
        // The event is rendered once per wire format; each loop gets one task with its recipients'
        // sinks and, for each, which rendering it takes. This runs once per copy, so it stays lean.
        var formats: [ObjectIdentifier] = []
        var rendered: [ByteBuffer] = []
        var renders: [Bool] = []
        var batches: [DeliveryBatch] = []
        var count = 0

        func add(_ session: Session) {
            let format = session.sink.format
            let formatID = ObjectIdentifier(format)
            var which = formats.firstIndex(of: formatID) ?? -1
            if which < 0 {
                which = formats.count
                formats.append(formatID)
                let bytes = format.render(event)
                rendered.append(bytes ?? ByteBuffer())
                renders.append(bytes != nil)
            }
            guard renders[which] else { return }
            DeliveryBatch.add(session, format: which, to: &batches, capacity: recipients.count)
            count += 1
        }

        for recipient in recipients where recipient !== last { add(recipient) }
        if let last, deliverLast, last.receivesOwnMessages {
            add(last)
            // The sender's loop goes last, so its echo is submitted after every other copy.
            if let index = batches.firstIndex(where: { $0.loopID == last.loopID }), index != batches.count - 1 {
                batches.append(batches.remove(at: index))
            }
        }
        // `then` rides on the last batch when that is its loop's; otherwise (an IRC sender without
        // echo-message gets no copy) it is a task of its own on that loop, after the batches.
        let thenSession = last ?? recipients.first
        let thenLoop = thenSession?.loop
        var rideAlong = false
        if then != nil, let thenLoop, let lastBatch = batches.last {
            rideAlong = lastBatch.loopID == ObjectIdentifier(thenLoop)
        }
        // Formats render to at most a handful of variants (IRC capabilities); 256 is far beyond.
        let copies = rendered
        for (index, batch) in batches.enumerated() {
            let after = rideAlong && index == batches.count - 1 ? then : nil
            batch.turn?.hubTaskQueued()
            batch.loop.execute {
                batch.deliver(copies)
                after?()
                batch.turn?.hubTaskRan()
            }
        }
        if let then, !rideAlong {
            if let thenSession { hubTask(on: thenSession, then) } else { then() }
        }
        counters.deliveries.add(count, ordering: .relaxed)
    }
}

/// The copies of one event bound for one event loop: the sinks, and which rendering each takes.
struct DeliveryBatch: Sendable {
    let loop: any EventLoop
    let loopID: ObjectIdentifier
    /// The loop's turn, which counts the hub's tasks there (nil outside the hub's loops: tests).
    let turn: NextTurn?
    private(set) var sinks: [any SessionSink] = []
    /// The same sinks where they are `ChannelSink`s (the TCP doors'), unretained: a copy to one is a
    /// direct call, without the retain and release that calling through the existential costs (a
    /// pair per copy, about 7% of fan-out's samples). Safe because `sinks` holds each of them, and
    /// the task that delivers holds the batch (its own copy, or the room's plan that holds it) until
    /// it ends, even if a sink's disconnect drops the room's plan meanwhile.
    private var channelSinks: [Unmanaged<ChannelSink>?] = []
    private(set) var formats: [UInt8] = []

    init(loop: any EventLoop, loopID: ObjectIdentifier, turn: NextTurn?, capacity: Int) {
        self.loop = loop
        self.loopID = loopID
        self.turn = turn
        sinks.reserveCapacity(capacity)
        channelSinks.reserveCapacity(capacity)
        formats.reserveCapacity(capacity)
    }

    mutating func append(_ sink: any SessionSink, _ format: UInt8) {
        sinks.append(sink)
        channelSinks.append((sink as? ChannelSink).map { Unmanaged.passUnretained($0) })
        formats.append(format)
    }

    /// Where `sink` is in the batch, comparing addresses (a `ChannelSink` is not loaded to compare).
    private func index(of sink: any SessionSink) -> Int? {
        let address = UnsafeMutableRawPointer(Unmanaged.passUnretained(sink as AnyObject).toOpaque())
        return sinks.indices.first { index in
            if let channelSink = channelSinks[index] { return channelSink.toOpaque() == address }
            return sinks[index] === sink
        }
    }

    /// Hands the sink at `index` its copy.
    @inline(__always)
    private func deliver(_ bytes: UnsafeRawBufferPointer, toSinkAt index: Int) {
        if let sink = channelSinks[index] {
            sink._withUnsafeGuaranteedRef { $0.deliver(bytes) }
        } else {
            sinks[index].deliver(bytes)
        }
    }

    /// Puts a session's sink, with the index of its rendering, into the batch of its loop (made when
    /// it is the first of that loop; `capacity` is how many sinks a batch may come to hold).
    static func add(_ session: Session, format: Int, to batches: inout [DeliveryBatch], capacity: Int) {
        let format = UInt8(truncatingIfNeeded: format)
        if let index = batches.firstIndex(where: { $0.loopID == session.loopID }) {
            batches[index].append(session.sink, format)
        } else {
            batches.append(DeliveryBatch(loop: session.loop, loopID: session.loopID, turn: session.turn, capacity: capacity))
            batches[batches.count - 1].append(session.sink, format)
        }
    }

    /// Hands each sink its rendering, lending its bytes, so that a recipient costs no copy of the
    /// buffer (a retain and a release). In order: a recipient put last (a sender's echo) gets its
    /// copy last.
    func deliver(_ copies: [ByteBuffer]) {
        if copies.count == 1 {
            copies[0].withUnsafeReadableBytes { bytes in
                for index in sinks.indices { deliver(bytes, toSinkAt: index) }
            }
            return
        }
        for index in sinks.indices {
            copies[Int(formats[index])].withUnsafeReadableBytes { deliver($0, toSinkAt: index) }
        }
    }

    /// A planned room message: every sink but the sender's gets its rendering (none when its format
    /// renders nothing), one pass over the sinks per rendering (there are a handful); the sender's
    /// comes last, when `echo`.
    func deliver(_ copies: Renderings, except sender: any SessionSink, echo: Bool) {
        // Found once, so the loop below compares indexes rather than loading each sink.
        let senderIndex = index(of: sender) ?? -1
        for which in 0..<copies.count {
            guard let copy = copies[which] else { continue }
            let which = UInt8(truncatingIfNeeded: which)
            copy.withUnsafeReadableBytes { bytes in
                for index in sinks.indices where formats[index] == which && index != senderIndex {
                    deliver(bytes, toSinkAt: index)
                }
            }
        }
        if echo, senderIndex >= 0, let senderCopy = copies[Int(formats[senderIndex])] {
            senderCopy.withUnsafeReadableBytes { sender.deliverAcknowledgement($0) }
        }
    }
}

/// A room message's copies for the members on the publishing loop, handed over by the publisher
/// itself once it has let go of the room's lock (`Hub.deliverToRoom`), then the sender's callback.
struct LocalDelivery {
    let plan: FanOutPlan
    let index: Int
    let copies: Renderings
    let except: any SessionSink
    let echo: Bool
    let then: PublishedHandler<RoomMessage>?
    let message: RoomMessage

    /// Consuming: the caller's value is moved in, not copied (a retain and release of each field).
    consuming func run() {
        plan.batches[index].deliver(copies, except: except, echo: echo)
        then?(.success(message))
    }
}

/// A room message rendered once per wire format of its room's plan, by format index (nil: that format
/// shows nothing). One format, the usual case, needs no array: one made per message was an
/// allocation per message.
enum Renderings: Sendable {
    case one(ByteBuffer?)
    case many([ByteBuffer?])

    init(_ formats: [any WireFormat], rendering event: HubEvent) {
        self = formats.count == 1 ? .one(formats[0].render(event)) : .many(formats.map { $0.render(event) })
    }

    var count: Int {
        switch self {
        case .one: return 1
        case .many(let copies): return copies.count
        }
    }

    subscript(format: Int) -> ByteBuffer? {
        switch self {
        case .one(let copy): return copy
        case .many(let copies): return copies[format]
        }
    }
}

/// A room's members grouped for a message's fan-out: one batch per event loop, each member with the
/// index of its wire format. Made on the first message after the membership changed (or after any
/// connection's format did), so that each copy of a message costs a step through an array rather
/// than a format lookup, a batch search and an append.
final class FanOutPlan: Sendable {
    let epoch: UInt64
    let formats: [any WireFormat]
    let membersPerFormat: [Int]
    let batches: [DeliveryBatch]
    private let members: Set<ObjectIdentifier>

    /// The room's plan, made again when missing or when a format changed since it was made.
    static func current(for state: inout Room.State) -> FanOutPlan {
        // Read before the formats: a format changed meanwhile moves the epoch past this one.
        let epoch = FormatEpoch.current
        if let plan = state.plan, plan.epoch == epoch { return plan }
        let plan = FanOutPlan(members: state.members, epoch: epoch)
        state.plan = plan
        return plan
    }

    private init(members sessions: [Session], epoch: UInt64) {
        var formats: [any WireFormat] = []
        var formatIDs: [ObjectIdentifier] = []
        var membersPerFormat: [Int] = []
        var batches: [DeliveryBatch] = []
        for session in sessions {
            let format = session.sink.format
            var which = formatIDs.firstIndex(of: ObjectIdentifier(format)) ?? -1
            if which < 0 {
                which = formats.count
                formats.append(format)
                formatIDs.append(ObjectIdentifier(format))
                membersPerFormat.append(0)
            }
            membersPerFormat[which] += 1
            DeliveryBatch.add(session, format: which, to: &batches, capacity: sessions.count)
        }
        self.epoch = epoch
        self.formats = formats
        self.membersPerFormat = membersPerFormat
        self.batches = batches
        self.members = Set(sessions.map(ObjectIdentifier.init))
    }

    func includes(_ session: Session) -> Bool { members.contains(ObjectIdentifier(session)) }

    func formatIndex(of sink: any SessionSink) -> Int? {
        let id = ObjectIdentifier(sink.format)
        return formats.firstIndex { ObjectIdentifier($0) == id }
    }
}

/// Moves whenever a connection's wire format changes (an IRC client's capabilities), so that fan-out
/// plans made with the old format are made again.
public enum FormatEpoch {
    private static let counter = Atomic<UInt64>(0)
    static var current: UInt64 { counter.load(ordering: .acquiring) }
    public static func changed() { counter.add(1, ordering: .releasing) }
}
