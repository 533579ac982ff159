import NIOCore
import ParleyCore

/// The connection a line session writes to. Every method runs on `eventLoop`.
public protocol LineSessionSink: SessionSink {
    /// The connection is closing: the session stops handling input.
    var isClosing: Bool { get }
    /// Writes out everything enqueued so far, now (replies to a batch of lines).
    func flushNow()
    /// The connection is gone: later output is dropped and `isClosing` is true.
    func markClosed()
}

/// The line protocol for one client, whatever carries its bytes (a TCP connection, a UDP session):
/// framing, flood control, commands and replies. Its state lives on the sink's event loop (thread
/// confinement); only hub calls cross threads.
public final class LineSession {
    private let hub: Hub
    private let config: LineDoorConfig
    private let sink: any LineSessionSink
    private let eventLoop: any EventLoop
    /// `@exclusivity(unchecked)` on `framer` and `flood`: no run-time exclusivity check per line.
    /// Their only modifying accesses are their own mutating methods (`next`, `spend`), which call no
    /// code that could reach this session again.
    @exclusivity(unchecked) private var framer: LineFramer
    private var session: Session?
    /// The room plain lines go to (the line protocol's idea; the hub has none).
    private var currentRoom: String?
    /// Per history key: the oldest message this client has been shown (by the replay on join or by
    /// `/history`), so that the next `/history` shows the page before it.
    private var historyCursors: [String: HistoryCursor] = [:]

    /// A command that takes time (password hashing) is running: handle no further line until it ends.
    private var awaitingCommand = false
    /// Over the flood allowance: input is paused until the bucket refills.
    private var floodPaused = false
    /// It handled its share of lines this turn and waits for the next (`NextTurn`).
    private var turnPaused = false
    private let turn: NextTurn?
    /// The transport wanted to read while the session was paused.
    private var readPending = false
    @exclusivity(unchecked) private var flood: FloodBucket
    private var toldAboutFlood = false
    private var quietTimer: Scheduled<Void>?
    private var wroteSinceFlush = false

    /// Called when the session, paused while the transport wanted to read, can take input again.
    public var onInputWanted: (() -> Void)?

    /// `turn`: its loop's, where it waits when it has more lines than a turn's share; nil: it
    /// handles all it has read at once.
    public init(hub: Hub, config: LineDoorConfig, sink: any LineSessionSink, turn: NextTurn? = nil) {
        self.hub = hub
        self.config = config
        self.sink = sink
        self.turn = turn
        self.eventLoop = sink.eventLoop
        self.framer = LineFramer(maxLineLength: config.maxLineLength)
        self.flood = FloodBucket(burst: config.floodBurst, rate: config.floodRate)
    }

    private var paused: Bool { awaitingCommand || floodPaused || turnPaused }
    private var closing: Bool { sink.isClosing }
    /// Whether the session is waiting (for a slow command or for flood control) before taking more input.
    public var isPaused: Bool { paused }

    // MARK: Transport events

    /// The client connected: joins the hub and greets it. False when the hub refused (shutting down);
    /// the connection is then being closed.
    @discardableResult
    public func start(door: String, address: String) -> Bool {
        guard let session = hub.connect(door: door, address: address, sink: sink) else {
            sink.disconnect(finalBytes: LineFormat.shared.render(.goodbye(.shutdown)))
            return false
        }
        self.session = session
        currentRoom = hub.config.lobby
        reply(LineReply.welcome(name: session.name, room: hub.config.lobby))
        flushIfNeeded()
        return true
    }

    /// Bytes of the client's line stream, in order.
    public func received(_ bytes: ByteBuffer) {
        framer.append(bytes)
        quietTimer?.cancel()
        quietTimer = nil
        processLines()
    }

    /// Whether the transport may read more input now. While paused the answer is no, and
    /// `onInputWanted` is called once input is welcome again.
    public func shouldReadInput() -> Bool {
        // Waiting for its turn, it reads on (turning reads off and on costs two epoll_ctl calls)
        // until a few lines' worth of its input is waiting.
        guard awaitingCommand || floodPaused || (turnPaused && framer.bufferedBytes >= NextTurn.bytesHeldPerConnection) else { return true }
        readPending = true
        return false
    }

    /// The connection is gone (from either side): commands still running find the session closing
    /// and write nothing more.
    public func stopped() {
        sink.markClosed()
        quietTimer?.cancel()
        quietTimer = nil
        onInputWanted = nil
        if let session { hub.disconnect(session) }
        session = nil
    }

    // MARK: Lines

    private func processLines() {
        var handled = 0
        while !paused && !closing, let framed = framer.next() {
            handle(framed)
            spendToken()
            handled += 1
            if handled == NextTurn.linesPerConnection, framer.hasPartialLine, !paused, let turn {
                turnPaused = true
                turn.later {
                    self.turnPaused = false
                    self.resume()
                }
            }
        }
        flushIfNeeded()
        if let quietPeriod = config.quietPeriod, !paused && !closing && framer.hasPartialLine && quietTimer == nil {
            let handler = NIOLoopBound(self, eventLoop: eventLoop)
            quietTimer = eventLoop.scheduleTask(in: quietPeriod) {
                handler.value.quietPeriodExpired()
            }
        }
    }

    private func quietPeriodExpired() {
        quietTimer = nil
        guard !paused else { return }
        framer.terminatePartialLine()
        processLines()
    }

    private func pause() {
        quietTimer?.cancel()
        quietTimer = nil
    }

    private func resume() {
        guard !paused else { return }
        processLines()
        if !paused && readPending {
            readPending = false
            onInputWanted?()
        }
    }

    /// Token bucket: each line costs one token; a client in debt is not read until it is repaid.
    private func spendToken() {
        guard let wait = flood.spend() else { return }
        floodPaused = true
        pause()
        if !toldAboutFlood {
            toldAboutFlood = true
            reply(LineReply.info("You are sending faster than \(Int(config.floodRate)) lines a second; your lines are being delayed, none is lost."))
        }
        let handler = NIOLoopBound(self, eventLoop: eventLoop)
        eventLoop.scheduleTask(in: wait) {
            let handler = handler.value
            handler.floodPaused = false
            handler.resume()
        }
    }

    private func handle(_ framed: FramedLine) {
        guard case .line(let bytes) = framed else {
            reply(LineReply.err("line-too-long", "Lines may be at most \(config.maxLineLength) bytes; that one was discarded. Send long text in several lines."))
            return
        }
        guard let line = String(validating: bytes.readableBytesView, as: UTF8.self) else {
            reply(LineReply.err("invalid-utf8", "That line was not valid UTF-8 text and was ignored."))
            return
        }
        switch LineParser.parse(line) {
        case .success(nil): return
        case .success(let command?): execute(command)
        case .failure(let error): reply(LineReply.error(error))
        }
    }

    private func execute(_ command: LineCommand) {
        guard let session else { return }
        let hub = self.hub
        do throws(HubError) {
            switch command {
            case .say(let text), .me(let text):
                guard let room = currentRoom else { throw .noCurrentRoom }
                var kind = MessageKind.say
                if case .me = command { kind = .action }
                // The echo (MSG) is the acknowledgement; a message that could not be stored gets an ERR
                // instead (the hub's `refused` event).
                try hub.say(session, room: room, text: text, kind: kind)
            case .msg(let to, let text):
                try hub.direct(session, to: to, text: text)
            case .history(let target, let count):
                guard let target = target ?? currentRoom else { throw .noCurrentRoom }
                let (key, name) = try hub.historyTarget(for: session, target)
                showHistory(key: key, name: name, count: count ?? 20)
            case .register(let name, let password):
                runSlowCommand { () throws(HubError) in
                    try await hub.register(session, name: name, password: password)
                    return LineReply.ok("register", "Account \(session.name) created. You are now logged in as \(session.name).")
                }
            case .login(let name, let password):
                runSlowCommand { () throws(HubError) in
                    try await hub.login(session, name: name, password: password)
                    return LineReply.ok("login", "You are now logged in as \(session.name).")
                } then: { _ in
                    // Direct messages that came while the account was offline, after the OK.
                    Task { await hub.deliverPending(to: session) }
                }
            case .nick(let name):
                runSlowCommand { () throws(HubError) in
                    try await hub.changeGuestName(session, to: name)
                    return LineReply.ok("nick", "You are now called \(session.name).")
                }
            case .logout:
                try hub.logout(session)
                replyAfterQueuedEvents([LineReply.ok("logout", "You are logged out and now called \(session.name).")])
            case .join(let room):
                let joined = try hub.join(session, room: room)
                currentRoom = joined.name
                if let oldest = joined.replayed.first { historyCursors[NameRules.key(joined.name)] = LoggedMessage.room(oldest).cursor }
                let topic = joined.alreadyMember ? nil : hub.details(of: joined.name)?.settings.topic
                replyAfterQueuedEvents((topic.map { ["TOPIC \(joined.name) \($0.setBy): \($0.text)"] } ?? [])
                    + [LineReply.ok("join", "You are now talking in \(joined.name).")])
            case .leave(let room):
                guard let target = room ?? currentRoom else { throw .noCurrentRoom }
                let left = try hub.part(session, room: target)
                if let current = currentRoom, NameRules.key(current) == NameRules.key(left) {
                    currentRoom = hub.roomNames(for: session.roomKeys).last
                }
                let next = currentRoom.map { " You are now talking in \($0)." } ?? " You are in no room; /join one to talk."
                replyAfterQueuedEvents([LineReply.ok("leave", "You left \(left)." + next)])
            case .rooms:
                // Secret rooms (+s, set from IRC) are listed only to their members.
                let mine = Set(session.roomKeys)
                let rooms = hub.roomList().filter { room in
                    hub.details(of: room.name)?.settings.secret != true || mine.contains(NameRules.key(room.name))
                }
                for room in rooms { reply(LineReply.room(room)) }
                reply(LineReply.ok("rooms", "\(rooms.count) room\(rooms.count == 1 ? "" : "s")."))
            case .who(let room):
                guard let target = room ?? currentRoom else { throw .noCurrentRoom }
                if let error = NameRules.validateRoom(target) { throw error }
                guard let members = hub.members(of: target), let name = hub.roomName(target) else { throw .noSuchRoom(target) }
                for member in members { reply(LineReply.user(member.name, rooms: hub.roomNames(for: member.roomKeys))) }
                reply(LineReply.ok("who", "\(members.count) in \(name)."))
            case .list:
                let everyone = hub.online()
                for person in everyone { reply(LineReply.user(person.name, rooms: person.rooms)) }
                reply(LineReply.ok("list", "\(everyone.count) online."))
            case .help:
                for line in LineReply.help() { reply(line) }
            case .ping(let token):
                reply(token.map { "PONG \($0)" } ?? "PONG")
            case .quit(let reason):
                hub.disconnect(session, reason: reason)
                sink.disconnect(finalBytes: ByteBuffer(string: LineReply.bye("Goodbye, \(session.name).") + "\n"))
            }
        } catch {
            reply(LineReply.error(error))
        }
    }

    /// Shows a page of history: the messages before the oldest this client was shown of that target.
    private func showHistory(key: String, name: String, count: Int) {
        let hub = self.hub
        let before = historyCursors[key]
        runSlowCommand { () throws(HubError) -> [LoggedMessage] in
            try await hub.history(key, HistoryRange(before: before, limit: count, newestFirst: true))
        } then: { handler, page in
            if let oldest = page.first { handler.historyCursors[key] = oldest.cursor }
            let lines = page.compactMap { LineFormat.historyLine($0, target: name) }
            for line in lines { handler.reply(line) }
            if page.isEmpty {
                handler.reply(LineReply.ok("history", before == nil ? "No messages in \(name) yet." : "No older messages in \(name)."))
            } else {
                handler.reply(LineReply.ok("history", "\(lines.count) message\(lines.count == 1 ? "" : "s") from \(name), oldest first; /history again for older ones."))
            }
        }
    }

    /// Runs a command off the event loop (it awaits the password hasher or the store) and handles no
    /// further line of this client until it is answered.
    private func runSlowCommand(_ work: @escaping @Sendable () async throws(HubError) -> String,
                                then: @escaping (LineSession) -> Void = { _ in }) {
        runSlowCommand(work) { handler, answer in
            handler.reply(answer)
            then(handler)
        }
    }

    /// The general form: `then` runs on the loop with the result; an error is answered with an ERR.
    private func runSlowCommand<T: Sendable>(_ work: @escaping @Sendable () async throws(HubError) -> T,
                                             then: @escaping (LineSession, T) -> Void) {
        awaitingCommand = true
        pause()
        let bound = NIOLoopBound((self, then), eventLoop: eventLoop)
        let loop = eventLoop
        Task {
            let result: Result<T, HubError>
            do throws(HubError) {
                result = .success(try await work())
            } catch {
                result = .failure(error)
            }
            loop.execute {
                let (handler, then) = bound.value
                handler.awaitingCommand = false
                guard !handler.closing else { return }
                switch result {
                case .success(let value): then(handler, value)
                case .failure(let error): handler.reply(LineReply.error(error))
                }
                handler.resume()
                handler.flushIfNeeded()
            }
        }
    }

    private func reply(_ line: String) {
        guard !closing else { return }
        sink.enqueue(ByteBuffer(string: line + "\n"))
        wroteSinceFlush = true
    }

    /// Answers after the hub's events for the same command (JOIN before `OK join`), which are already
    /// queued on this loop; no further line is handled meanwhile, so replies stay in command order.
    private func replyAfterQueuedEvents(_ lines: [String]) {
        awaitingCommand = true
        pause()
        let bound = NIOLoopBound(self, eventLoop: eventLoop)
        eventLoop.execute {
            let handler = bound.value
            handler.awaitingCommand = false
            guard !handler.closing else { return }
            for line in lines { handler.reply(line) }
            handler.flushIfNeeded()
            handler.resume()
        }
    }

    private func flushIfNeeded() {
        guard wroteSinceFlush else { return }
        wroteSinceFlush = false
        sink.flushNow()
    }
}
