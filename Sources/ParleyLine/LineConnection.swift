import NIOCore
import ParleyCore

public struct LineDoorConfig: Sendable {
    public var maxLineLength = 8192
    /// Pending bytes with no line ending for this long count as a line.
    public var quietPeriod = TimeAmount.milliseconds(100)
    /// Flood control: a burst of this many lines, then `floodRate` lines a second; 0 turns it off.
    public var floodBurst = 200.0
    public var floodRate = 100.0
    /// How long a disconnecting client gets to take its last lines before the socket is closed anyway.
    public var closeGrace = TimeAmount.seconds(2)

    public init() {}
}

/// One line-protocol connection: framing, flood control, commands. Its state lives on the channel's
/// event loop (thread confinement); only hub calls cross threads.
public final class LineConnectionHandler: ChannelDuplexHandler {
    public typealias InboundIn = ByteBuffer
    public typealias OutboundIn = ByteBuffer
    public typealias OutboundOut = ByteBuffer

    private let hub: Hub
    private let config: LineDoorConfig
    private var framer: LineFramer
    private var sink: ChannelSink?
    private var session: Session?
    /// The room plain lines go to (the line protocol's idea; the hub has none).
    private var currentRoom: String?
    /// Per history key: the oldest message this client has been shown (by the replay on join or by
    /// `/history`), so that the next `/history` shows the page before it.
    private var historyCursors: [String: HistoryCursor] = [:]

    /// A command that takes time (password hashing) is running: handle no further line until it ends.
    private var awaitingCommand = false
    /// Over the flood allowance: reading is paused until the bucket refills.
    private var floodPaused = false
    private var readPending = false
    private var flood: FloodBucket
    private var toldAboutFlood = false
    private var quietTimer: Scheduled<Void>?
    private var wroteSinceFlush = false

    public init(hub: Hub, config: LineDoorConfig) {
        self.hub = hub
        self.config = config
        self.framer = LineFramer(maxLineLength: config.maxLineLength)
        self.flood = FloodBucket(burst: config.floodBurst, rate: config.floodRate)
    }

    private var paused: Bool { awaitingCommand || floodPaused }
    private var closing: Bool { sink?.isClosing ?? true }

    // MARK: Channel events

    public func channelActive(context: ChannelHandlerContext) {
        let sink = ChannelSink(channel: context.channel, format: LineFormat.shared, closeGrace: config.closeGrace) { format in
            var last = ByteBuffer(string: LineReply.err("sendq-exceeded", "You stopped reading and more than your outbound limit queued up; disconnecting. Reconnect to continue.") + "\n")
            if let bye = format.render(.goodbye(.sendqExceeded)) { last.writeImmutableBuffer(bye) }
            return last
        }
        self.sink = sink
        guard let session = hub.connect(door: "line", address: ChannelSink.describe(context.channel.remoteAddress), sink: sink) else {
            sink.disconnect(finalBytes: LineFormat.shared.render(.goodbye(.shutdown)))
            return
        }
        self.session = session
        currentRoom = hub.config.lobby
        reply(context, LineReply.welcome(name: session.name, room: hub.config.lobby))
        flushIfNeeded(context)
        context.fireChannelActive()
    }

    public func channelInactive(context: ChannelHandlerContext) {
        sink?.markClosed()
        quietTimer?.cancel()
        if let session { hub.disconnect(session) }
        context.fireChannelInactive()
    }

    public func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        framer.append(unwrapInboundIn(data))
        quietTimer?.cancel()
        quietTimer = nil
        processLines(context)
    }

    public func errorCaught(context: ChannelHandlerContext, error: any Error) {
        // A reset or a broken pipe: the client is gone. Nobody else is affected.
        context.close(promise: nil)
    }

    public func read(context: ChannelHandlerContext) {
        if paused {
            readPending = true
        } else {
            context.read()
        }
    }

    // MARK: Lines

    private func processLines(_ context: ChannelHandlerContext) {
        while !paused && !closing, let framed = framer.next() {
            handle(framed, context)
            spendToken(context)
        }
        flushIfNeeded(context)
        if !paused && !closing && framer.hasPartialLine && quietTimer == nil {
            let handler = NIOLoopBound(self, eventLoop: context.eventLoop)
            let boundContext = NIOLoopBound(context, eventLoop: context.eventLoop)
            quietTimer = context.eventLoop.scheduleTask(in: config.quietPeriod) {
                handler.value.quietPeriodExpired(boundContext.value)
            }
        }
    }

    private func quietPeriodExpired(_ context: ChannelHandlerContext) {
        quietTimer = nil
        guard !paused else { return }
        framer.terminatePartialLine()
        processLines(context)
    }

    private func pause(_ context: ChannelHandlerContext) {
        quietTimer?.cancel()
        quietTimer = nil
    }

    private func resume(_ context: ChannelHandlerContext) {
        guard !paused else { return }
        processLines(context)
        if !paused && readPending {
            readPending = false
            context.read()
        }
    }

    /// Token bucket: each line costs one token; a client in debt is not read until it is repaid.
    private func spendToken(_ context: ChannelHandlerContext) {
        guard let wait = flood.spend() else { return }
        floodPaused = true
        pause(context)
        if !toldAboutFlood {
            toldAboutFlood = true
            reply(context, LineReply.info("You are sending faster than \(Int(config.floodRate)) lines a second; your lines are being delayed, none is lost."))
        }
        let handler = NIOLoopBound(self, eventLoop: context.eventLoop)
        let boundContext = NIOLoopBound(context, eventLoop: context.eventLoop)
        context.eventLoop.scheduleTask(in: wait) {
            let handler = handler.value
            handler.floodPaused = false
            handler.resume(boundContext.value)
        }
    }

    private func handle(_ framed: FramedLine, _ context: ChannelHandlerContext) {
        guard case .line(let bytes) = framed else {
            reply(context, LineReply.err("line-too-long", "Lines may be at most \(config.maxLineLength) bytes; that one was discarded. Send long text in several lines."))
            return
        }
        guard let line = String(validating: bytes.readableBytesView, as: UTF8.self) else {
            reply(context, LineReply.err("invalid-utf8", "That line was not valid UTF-8 text and was ignored."))
            return
        }
        switch LineParser.parse(line) {
        case .success(nil): return
        case .success(let command?): execute(command, context)
        case .failure(let error): reply(context, LineReply.error(error))
        }
    }

    private func execute(_ command: LineCommand, _ context: ChannelHandlerContext) {
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
                showHistory(key: key, name: name, count: count ?? 20, context)
            case .register(let name, let password):
                runSlowCommand(context) { () throws(HubError) in
                    try await hub.register(session, name: name, password: password)
                    return LineReply.ok("register", "Account \(session.name) created. You are now logged in as \(session.name).")
                }
            case .login(let name, let password):
                runSlowCommand(context) { () throws(HubError) in
                    try await hub.login(session, name: name, password: password)
                    return LineReply.ok("login", "You are now logged in as \(session.name).")
                } then: { _, _ in
                    // Direct messages that came while the account was offline, after the OK.
                    Task { await hub.deliverPending(to: session) }
                }
            case .nick(let name):
                runSlowCommand(context) { () throws(HubError) in
                    try await hub.changeGuestName(session, to: name)
                    return LineReply.ok("nick", "You are now called \(session.name).")
                }
            case .logout:
                try hub.logout(session)
                replyAfterQueuedEvents(context, [LineReply.ok("logout", "You are logged out and now called \(session.name).")])
            case .join(let room):
                let joined = try hub.join(session, room: room)
                currentRoom = joined.name
                if let oldest = joined.replayed.first { historyCursors[NameRules.key(joined.name)] = LoggedMessage.room(oldest).cursor }
                let topic = joined.alreadyMember ? nil : hub.details(of: joined.name)?.settings.topic
                replyAfterQueuedEvents(context, (topic.map { ["TOPIC \(joined.name) \($0.setBy): \($0.text)"] } ?? [])
                    + [LineReply.ok("join", "You are now talking in \(joined.name).")])
            case .leave(let room):
                guard let target = room ?? currentRoom else { throw .noCurrentRoom }
                let left = try hub.part(session, room: target)
                if let current = currentRoom, NameRules.key(current) == NameRules.key(left) {
                    currentRoom = hub.roomNames(for: session.roomKeys).last
                }
                let next = currentRoom.map { " You are now talking in \($0)." } ?? " You are in no room; /join one to talk."
                replyAfterQueuedEvents(context, [LineReply.ok("leave", "You left \(left)." + next)])
            case .rooms:
                // Secret rooms (+s, set from IRC) are listed only to their members.
                let mine = Set(session.roomKeys)
                let rooms = hub.roomList().filter { room in
                    hub.details(of: room.name)?.settings.secret != true || mine.contains(NameRules.key(room.name))
                }
                for room in rooms { reply(context, LineReply.room(room)) }
                reply(context, LineReply.ok("rooms", "\(rooms.count) room\(rooms.count == 1 ? "" : "s")."))
            case .who(let room):
                guard let target = room ?? currentRoom else { throw .noCurrentRoom }
                if let error = NameRules.validateRoom(target) { throw error }
                guard let members = hub.members(of: target), let name = hub.roomName(target) else { throw .noSuchRoom(target) }
                for member in members { reply(context, LineReply.user(member.name, rooms: hub.roomNames(for: member.roomKeys))) }
                reply(context, LineReply.ok("who", "\(members.count) in \(name)."))
            case .list:
                let everyone = hub.online()
                for person in everyone { reply(context, LineReply.user(person.name, rooms: person.rooms)) }
                reply(context, LineReply.ok("list", "\(everyone.count) online."))
            case .help:
                for line in LineReply.help() { reply(context, line) }
            case .quit(let reason):
                hub.disconnect(session, reason: reason)
                sink?.disconnect(finalBytes: ByteBuffer(string: LineReply.bye("Goodbye, \(session.name).") + "\n"))
            }
        } catch {
            reply(context, LineReply.error(error))
        }
    }

    /// Shows a page of history: the messages before the oldest this client was shown of that target.
    private func showHistory(key: String, name: String, count: Int, _ context: ChannelHandlerContext) {
        let hub = self.hub
        let before = historyCursors[key]
        runSlowCommand(context) { () throws(HubError) -> [LoggedMessage] in
            try await hub.history(key, HistoryRange(before: before, limit: count, newestFirst: true))
        } then: { handler, context, page in
            if let oldest = page.first { handler.historyCursors[key] = oldest.cursor }
            let lines = page.compactMap { LineFormat.historyLine($0, target: name) }
            for line in lines { handler.reply(context, line) }
            if page.isEmpty {
                handler.reply(context, LineReply.ok("history", before == nil ? "No messages in \(name) yet." : "No older messages in \(name)."))
            } else {
                handler.reply(context, LineReply.ok("history", "\(lines.count) message\(lines.count == 1 ? "" : "s") from \(name), oldest first; /history again for older ones."))
            }
        }
    }

    /// Runs a command off the event loop (it awaits the password hasher or the store) and handles no
    /// further line of this client until it is answered.
    private func runSlowCommand(_ context: ChannelHandlerContext, _ work: @escaping @Sendable () async throws(HubError) -> String,
                                then: @escaping (LineConnectionHandler, ChannelHandlerContext) -> Void = { _, _ in }) {
        runSlowCommand(context, work) { handler, context, answer in
            handler.reply(context, answer)
            then(handler, context)
        }
    }

    /// The general form: `then` runs on the loop with the result; an error is answered with an ERR.
    private func runSlowCommand<T: Sendable>(_ context: ChannelHandlerContext, _ work: @escaping @Sendable () async throws(HubError) -> T,
                                             then: @escaping (LineConnectionHandler, ChannelHandlerContext, T) -> Void) {
        awaitingCommand = true
        pause(context)
        let bound = NIOLoopBound((self, context, then), eventLoop: context.eventLoop)
        let loop = context.eventLoop
        Task {
            let result: Result<T, HubError>
            do throws(HubError) {
                result = .success(try await work())
            } catch {
                result = .failure(error)
            }
            loop.execute {
                let (handler, context, then) = bound.value
                handler.awaitingCommand = false
                guard !handler.closing else { return }
                switch result {
                case .success(let value): then(handler, context, value)
                case .failure(let error): handler.reply(context, LineReply.error(error))
                }
                handler.resume(context)
                handler.flushIfNeeded(context)
            }
        }
    }

    private func reply(_ context: ChannelHandlerContext, _ line: String) {
        guard !closing else { return }
        context.write(wrapOutboundOut(ByteBuffer(string: line + "\n")), promise: nil)
        wroteSinceFlush = true
        sink?.enforceOutboundLimit()
    }

    /// Answers after the hub's events for the same command (JOIN before `OK join`), which are already
    /// queued on this loop; no further line is handled meanwhile, so replies stay in command order.
    private func replyAfterQueuedEvents(_ context: ChannelHandlerContext, _ lines: [String]) {
        awaitingCommand = true
        pause(context)
        let bound = NIOLoopBound((self, context), eventLoop: context.eventLoop)
        context.eventLoop.execute {
            let (handler, context) = bound.value
            handler.awaitingCommand = false
            guard !handler.closing else { return }
            for line in lines { handler.reply(context, line) }
            handler.flushIfNeeded(context)
            handler.resume(context)
        }
    }

    private func flushIfNeeded(_ context: ChannelHandlerContext) {
        guard wroteSinceFlush else { return }
        wroteSinceFlush = false
        context.flush()
    }
}
