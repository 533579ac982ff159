import Foundation
import NIOCore
import ParleyCore

public struct IRCDoorConfig: Sendable {
    /// The source of the server's own lines and the name in PONG.
    public var serverName = "parley.local"
    public var network = "Parley"
    public var version = "parley-0.1"
    /// Lines of the message of the day; nil: none (422).
    public var motd: [String]?
    /// A client that has not finished registering by then is disconnected.
    public var registrationTimeout = TimeAmount.seconds(60)
    /// A client silent this long is sent a PING; silent as long again, it is disconnected.
    public var pingInterval = TimeAmount.seconds(120)
    public var floodBurst = 200.0
    public var floodRate = 100.0
    public var closeGrace = TimeAmount.seconds(2)
    public var createdAt = Date()
    /// How long a guest may keep a registered nick before it is renamed (unless it logs in).
    public var nickGracePeriod = TimeAmount.seconds(30)
    /// IRC operators: OPER name -> password.
    public var operators: [String: String] = [:]
    /// A password for the whole IRC door (PASS); nil: none, and PASS may carry `account:password`.
    public var serverPassword: String?
    /// Whether draft/account-registration's REGISTER works before the connection is registered.
    public var registrationBeforeConnect = true
    /// The most messages one CHATHISTORY returns; nil: the server keeps no history (no draft/chathistory).
    public var historyLimit: Int?

    public init() {}
}

/// The capabilities this server offers (IRCv3 CAP). Only what is implemented is listed.
enum IRCCapabilities {
    /// Name and, for CAP LS 302, value.
    static let offered: [(name: String, value: String?)] = [
        ("account-notify", nil), ("account-tag", nil), ("away-notify", nil), ("cap-notify", nil),
        ("draft/account-registration", "before-connect"), ("echo-message", nil), ("extended-join", nil),
        ("labeled-response", nil), ("message-tags", nil), ("batch", nil),
        ("multi-prefix", nil), ("sasl", "PLAIN"), ("server-time", nil), ("standard-replies", nil),
        ("userhost-in-names", nil),
    ]
    /// draft/chathistory is offered only by a server that keeps history.
    static let history = (name: "draft/chathistory", value: String?.none)

    static func offered(_ config: IRCDoorConfig) -> [(name: String, value: String?)] {
        config.historyLimit == nil ? offered : offered + [history]
    }

    static func list(withValues: Bool, config: IRCDoorConfig) -> String {
        offered(config).map { cap in
            var value = cap.value
            if cap.name == "draft/account-registration" && !config.registrationBeforeConnect { value = nil }
            return withValues ? value.map { "\(cap.name)=\($0)" } ?? cap.name : cap.name
        }.joined(separator: " ")
    }
}

/// What every connection of one IRC door shares: its configuration, its formats, and the timer that
/// runs each connection's keep-alive and registration timeout. Shared rather than copied into each
/// connection, so that an idle connection stays small.
public final class IRCDoor: Sendable {
    public let config: IRCDoorConfig
    let formats: IRCFormats
    let sweeper: ConnectionSweeper<IRCConnectionHandler>
    /// Where a connection with more lines than a turn's share waits for the next turn; without it
    /// (tests on their own loops) a connection handles all it has read at once.
    let turns: LoopTurns?

    public init(config: IRCDoorConfig, turns: LoopTurns? = nil) {
        self.config = config
        self.turns = turns
        self.formats = IRCFormats(serverName: config.serverName)
        // Fine enough for both timeouts, and no busier than once a second.
        let shortest = min(config.pingInterval, config.registrationTimeout)
        self.sweeper = ConnectionSweeper(period: max(.milliseconds(10), min(.seconds(1), .nanoseconds(shortest.nanoseconds / 4))))
    }
}

/// One IRC connection: framing, registration (CAP, PASS, NICK, USER), commands, keep-alive. Its state
/// lives on the channel's event loop; it reaches other users only through the hub.
public final class IRCConnectionHandler: ChannelDuplexHandler, SweptConnection {
    public typealias InboundIn = ByteBuffer
    public typealias OutboundIn = ByteBuffer
    public typealias OutboundOut = ByteBuffer

    private let hub: Hub
    private let door: IRCDoor
    private var config: IRCDoorConfig { door.config }
    private var formats: IRCFormats { door.formats }
    /// The format for this client's capabilities, kept as they change rather than looked up per message.
    private var renderFormat: IRCFormat
    /// `@exclusivity(unchecked)` on `framer` and `flood`: no run-time exclusivity check per line (two
    /// per chat message, about 1% of rooms). Their only modifying accesses are their own mutating
    /// methods (`next`, `spend`), which call no code that could reach this handler again.
    @exclusivity(unchecked) private var framer = LineFramer(maxLineLength: IRCLimits.maxLineBytes)
    private var sink: ChannelSink?
    private var session: Session?
    private var address = "unknown"

    // Registration. Its state lives in a box dropped once the client is registered, so an idle
    // connection keeps one pointer for it. Setting a value after registration (nil or false aside)
    // makes a new box.
    private final class Registration {
        var nick: String?
        var userName: String?
        var realName: String?
        var password: String?
        /// nil: not negotiating.
        var capNegotiating: Bool?
        /// A connection still unregistered then is closed (the sweeper checks).
        var deadline: NIODeadline?
        /// The account a client logged in to (SASL, REGISTER) before its registration completed.
        var preAccount: String?
        /// SASL PLAIN in progress: the base64 received so far (clients send it in 400-byte pieces).
        var saslBuffer: String?
    }
    private var registration: Registration? = Registration()
    /// Sets a registration value, making a box only for a value worth keeping.
    private func setRegistration<Value>(_ field: ReferenceWritableKeyPath<Registration, Value?>, _ value: Value?) {
        guard value != nil || registration != nil else { return }
        let box = registration ?? Registration()
        registration = box
        box[keyPath: field] = value
    }
    private var nick: String? {
        get { registration?.nick }
        set { setRegistration(\.nick, newValue) }
    }
    private var userName: String? {
        get { registration?.userName }
        set { setRegistration(\.userName, newValue) }
    }
    private var realName: String? {
        get { registration?.realName }
        set { setRegistration(\.realName, newValue) }
    }
    private var password: String? {
        get { registration?.password }
        set { setRegistration(\.password, newValue) }
    }
    private var capNegotiating: Bool {
        get { registration?.capNegotiating ?? false }
        set { setRegistration(\.capNegotiating, newValue ? true : nil) }
    }
    private var registrationDeadline: NIODeadline? {
        get { registration?.deadline }
        set { setRegistration(\.deadline, newValue) }
    }
    private var preAccount: String? {
        get { registration?.preAccount }
        set { setRegistration(\.preAccount, newValue) }
    }
    private var saslBuffer: String? {
        get { registration?.saslBuffer }
        set { setRegistration(\.saslBuffer, newValue) }
    }
    private var capabilities: Set<String> = [] {
        didSet {
            echoMessage = capabilities.contains("echo-message")
            messageTags = capabilities.contains("message-tags")
            labeledResponse = capabilities.contains("labeled-response")
        }
    }
    /// The capabilities every chat message asks about, kept as flags: a set lookup hashes the name.
    private var echoMessage = false
    private var messageTags = false
    private var labeledResponse = false
    private var graceTimer: Scheduled<Void>?

    // Flow control and keep-alive.
    /// Work this connection waits for (a slow command, replies queued behind hub events); no further
    /// line is handled until it is done.
    private var pendingWork = 0
    /// IRCv3 labeled-response: the label of the command being handled and the replies it produced.
    private var label: String?
    private var labeledReplies: [IRCMessage] = []
    private var nextBatchNumber = 1
    private var floodPaused = false
    /// It handled its share of lines this turn and waits for the next.
    private var turnPaused = false
    private var readPending = false
    @exclusivity(unchecked) private var flood: FloodBucket
    private var wroteSinceFlush = false
    private var heardSinceLastCheck = true
    private var pingOutstanding = false
    /// When the sweeper next checks that the client is alive.
    private var nextAliveCheck = NIODeadline.distantFuture
    /// Set while the connection is active, for the sweeper's visits; cleared when it closes.
    private var activeContext: ChannelHandlerContext?
    public var sweepSlot = -1
    /// Chat messages this client sent that the hub has not published yet (they are being stored).
    private var unpublished = 0
    /// A command that came while `unpublished` > 0: it waits, so that its replies do not overtake
    /// the echoes and errors of the messages before it.
    private var heldCommand: IRCMessage? {
        get { heldCommands.first }
        set { heldCommands = newValue.map { [$0] } ?? [] }
    }
    /// Holds `heldCommand`: an empty array costs an idle connection 8 bytes, an optional message 49.
    private var heldCommands: [IRCMessage] = []

    public init(hub: Hub, door: IRCDoor) {
        self.hub = hub
        self.door = door
        self.renderFormat = door.formats.format(IRCRenderOptions())
        self.flood = FloodBucket(burst: door.config.floodBurst, rate: door.config.floodRate)
    }

    private var paused: Bool { pendingWork > 0 || floodPaused || turnPaused }
    private var closing: Bool { sink?.isClosing ?? true }
    private var currentNick: String { session?.name ?? nick ?? "*" }

    // MARK: Channel events

    public func channelActive(context: ChannelHandlerContext) {
        address = ChannelSink.describe(context.channel.remoteAddress)
        hub.counters.unregisteredConnections.add(1, ordering: .relaxed)
        sink = ChannelSink(channel: context.channel, format: renderFormat,
                           closeGrace: config.closeGrace, receivesOwnMessages: false,
                           turn: door.turns?.turn(for: context.eventLoop)) { format in
            format.render(.goodbye(.sendqExceeded))
        }
        let now = NIODeadline.now()
        registrationDeadline = now + config.registrationTimeout
        nextAliveCheck = now + config.pingInterval
        activeContext = context
        door.sweeper.add(self, on: context.eventLoop)
        context.fireChannelActive()
    }

    /// The sweeper's visit: the registration timeout, then the keep-alive.
    public func sweep(now: NIODeadline) {
        guard let context = activeContext else { return }
        if let registrationDeadline, now >= registrationDeadline, session == nil {
            close(context, reason: "Registration timed out (\(config.serverName))")
            return
        }
        if now >= nextAliveCheck {
            nextAliveCheck = now + config.pingInterval
            checkAlive(context)
        }
    }

    public func channelInactive(context: ChannelHandlerContext) {
        if session == nil { hub.counters.unregisteredConnections.subtract(1, ordering: .relaxed) }
        sink?.markClosed()
        graceTimer?.cancel()
        door.sweeper.remove(self, on: context.eventLoop)
        // The context refers to this handler: letting go of it ends the cycle.
        activeContext = nil
        if let session { hub.disconnect(session) }
        context.fireChannelInactive()
    }

    public func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        framer.append(unwrapInboundIn(data))
        heardSinceLastCheck = true
        pingOutstanding = false
        processLines(context)
    }

    public func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if event is ServerShuttingDown, session == nil {
            close(context, reason: "The server is shutting down")
        }
        context.fireUserInboundEventTriggered(event)
    }

    public func errorCaught(context: ChannelHandlerContext, error: any Error) {
        context.close(promise: nil)
    }

    public func read(context: ChannelHandlerContext) {
        // A connection waiting for its next turn reads on (turning reads off and on costs two
        // epoll_ctl calls) until a few lines' worth of its input is waiting.
        if pendingWork > 0 || floodPaused || (turnPaused && framer.bufferedBytes >= NextTurn.bytesHeldPerConnection) {
            readPending = true
        } else {
            context.read()
        }
    }

    private func checkAlive(_ context: ChannelHandlerContext) {
        if pingOutstanding && !heardSinceLastCheck {
            let interval = config.pingInterval.nanoseconds
            let seconds = interval / 1_000_000_000
            let said = interval % 1_000_000_000 != 0 ? "\(interval / 1_000_000) ms" : seconds == 1 ? "1 second" : "\(seconds) seconds"
            close(context, reason: "Ping timeout: \(said)")
            return
        }
        if !heardSinceLastCheck {
            send(context, IRCMessage("PING", [config.serverName]))
            pingOutstanding = true
            flushIfNeeded(context)
        }
        heardSinceLastCheck = false
    }

    // MARK: Lines

    private func processLines(_ context: ChannelHandlerContext) {
        var handled = 0
        while !paused && !closing, let framed = framer.next() {
            handle(framed, context)
            if let wait = flood.spend() { pauseForFlood(context, wait) }
            handled += 1
            if handled == NextTurn.linesPerConnection, framer.hasPartialLine, !paused, let turn = door.turns?.turn(for: context.eventLoop) {
                pauseForTurn(context, turn)
            }
        }
        flushIfNeeded(context)
    }

    /// The rest of what it sent waits for the loop's next turn, after every other connection has
    /// had its share of this one.
    private func pauseForTurn(_ context: ChannelHandlerContext, _ turn: NextTurn) {
        turnPaused = true
        turn.later {
            self.turnPaused = false
            self.resume(context)
        }
    }

    private func pauseForFlood(_ context: ChannelHandlerContext, _ wait: TimeAmount) {
        floodPaused = true
        let bound = NIOLoopBound((self, context), eventLoop: context.eventLoop)
        context.eventLoop.scheduleTask(in: wait) {
            let (handler, context) = bound.value
            handler.floodPaused = false
            handler.resume(context)
        }
    }

    private func resume(_ context: ChannelHandlerContext) {
        guard !paused else { return }
        processLines(context)
        if !paused && readPending {
            readPending = false
            context.read()
        }
    }

    private func handle(_ framed: FramedLine, _ context: ChannelHandlerContext) {
        guard case .line(let bytes) = framed else {
            numeric(context, "417", "Input line was too long")
            return
        }
        // IRC is UTF-8 here (UTF8ONLY); invalid bytes are replaced rather than dropping the line.
        let parsed = bytes.withUnsafeReadableBytes { line -> Result<IRCMessage, IRCMessage.ParseError>? in
            if IRCLimits.check(line) != nil { return nil }
            return Result { () throws(IRCMessage.ParseError) in try IRCMessage(parsing: line) }
        }
        let message: IRCMessage
        switch parsed {
        case nil:
            numeric(context, "417", "Input line was too long")
            return
        case .success(let parsed)?:
            message = parsed
        case .failure(.empty)?:
            return
        case .failure?:
            let line = String(decoding: bytes.readableBytesView, as: UTF8.self)
            numeric(context, "421", String(line.prefix(32)), "Unknown command")
            return
        }
        if unpublished > 0 && !Self.isChat(message.command) {
            heldCommand = message
            pendingWork += 1
            return
        }
        run(message, context)
    }

    /// Plain comparisons rather than a set: this runs for every line of a client whose messages are
    /// being stored, and comparing short strings costs less than hashing one.
    private static func isChat(_ command: String) -> Bool {
        command == "PRIVMSG" || command == "NOTICE" || command == "TAGMSG"
    }

    private func run(_ message: IRCMessage, _ context: ChannelHandlerContext) {
        if labeledResponse, let value = message.tag("label")?.value {
            label = value
            labeledReplies = []
        }
        dispatch(message, context)
        finishLabeledResponse(context)
    }

    /// A chat message of this client was published (or refused): run a command that waited for that.
    private func messagePublished(_ context: ChannelHandlerContext) {
        unpublished -= 1
        guard unpublished == 0, let held = heldCommand else { return }
        heldCommand = nil
        pendingWork -= 1
        if !closing { run(held, context) }
        flushIfNeeded(context)
        resume(context)
    }

    /// Sends a labeled command's replies once it is done: ACK for none, the label on a single reply,
    /// a labeled-response batch around several.
    private func finishLabeledResponse(_ context: ChannelHandlerContext) {
        guard pendingWork == 0, let label else { return }
        self.label = nil
        let replies = labeledReplies
        labeledReplies = []
        writeLabeledResponse(replies, label: label, context)
    }

    private func writeLabeledResponse(_ replies: [IRCMessage], label: String, _ context: ChannelHandlerContext) {
        let labelTag = IRCMessage.Tag("label", label)
        switch replies.count {
        case 0:
            write(context, IRCMessage(tags: [labelTag], source: config.serverName, "ACK"))
        case 1:
            var reply = replies[0]
            reply.tags.insert(labelTag, at: 0)
            write(context, reply)
        default:
            let id = "lr\(nextBatchNumber)"
            nextBatchNumber += 1
            write(context, IRCMessage(tags: [labelTag], source: config.serverName, "BATCH", ["+" + id, "labeled-response"]))
            for var reply in replies {
                // Lines of a batch inside this one (a chathistory batch) keep their own batch tag.
                if !reply.tags.contains(where: { $0.key == "batch" }) { reply.tags.insert(.init("batch", id), at: 0) }
                write(context, reply)
            }
            write(context, IRCMessage(source: config.serverName, "BATCH", ["-" + id]))
        }
    }

    // MARK: Commands

    /// What the door knows of each command before running it.
    private struct CommandSpec {
        /// Parameters it needs.
        var minParams: Int
        /// It may come before registration.
        var beforeRegistration: Bool
        /// It makes the hub queue events for this client (a MODE, a TOPIC), whose lines the next
        /// command's replies must not overtake.
        var causesEvents = false
    }

    private static let commandTable: [String: CommandSpec] = [
        "CAP": .init(minParams: 1, beforeRegistration: true), "PASS": .init(minParams: 1, beforeRegistration: true),
        "NICK": .init(minParams: 0, beforeRegistration: true, causesEvents: true),
        "USER": .init(minParams: 4, beforeRegistration: true), "PING": .init(minParams: 0, beforeRegistration: true),
        "PONG": .init(minParams: 0, beforeRegistration: true), "QUIT": .init(minParams: 0, beforeRegistration: true),
        "JOIN": .init(minParams: 1, beforeRegistration: false, causesEvents: true),
        "PART": .init(minParams: 1, beforeRegistration: false, causesEvents: true),
        "PRIVMSG": .init(minParams: 0, beforeRegistration: false), "NOTICE": .init(minParams: 0, beforeRegistration: false),
        "NAMES": .init(minParams: 0, beforeRegistration: false), "WHO": .init(minParams: 0, beforeRegistration: false),
        "WHOIS": .init(minParams: 1, beforeRegistration: false),
        "MODE": .init(minParams: 1, beforeRegistration: false, causesEvents: true),
        "TOPIC": .init(minParams: 1, beforeRegistration: false, causesEvents: true),
        "LIST": .init(minParams: 0, beforeRegistration: false), "ISON": .init(minParams: 1, beforeRegistration: false),
        "USERHOST": .init(minParams: 1, beforeRegistration: false), "MOTD": .init(minParams: 0, beforeRegistration: false),
        "LUSERS": .init(minParams: 0, beforeRegistration: false), "VERSION": .init(minParams: 0, beforeRegistration: false),
        "TIME": .init(minParams: 0, beforeRegistration: false),
        "AWAY": .init(minParams: 0, beforeRegistration: false, causesEvents: true),
        "KICK": .init(minParams: 2, beforeRegistration: false, causesEvents: true),
        "INVITE": .init(minParams: 0, beforeRegistration: false, causesEvents: true),
        "AUTHENTICATE": .init(minParams: 1, beforeRegistration: true), "REGISTER": .init(minParams: 3, beforeRegistration: true),
        "OPER": .init(minParams: 2, beforeRegistration: false),
        "KILL": .init(minParams: 1, beforeRegistration: false, causesEvents: true),
        "TAGMSG": .init(minParams: 1, beforeRegistration: false), "CHATHISTORY": .init(minParams: 1, beforeRegistration: false),
    ]

    private func dispatch(_ message: IRCMessage, _ context: ChannelHandlerContext) {
        guard let spec = Self.commandTable[message.command] else {
            numeric(context, "421", message.command, "Unknown command")
            return
        }
        guard spec.beforeRegistration || session != nil else {
            numeric(context, "451", "You have not registered")
            return
        }
        guard message.params.count >= spec.minParams else {
            numeric(context, "461", message.command, "Not enough parameters")
            return
        }
        let params = message.params
        // Chat first: a `switch` over strings tries its cases in order.
        switch message.command {
        case "PRIVMSG", "NOTICE", "TAGMSG":
            // Client-only tags (+name) travel with the message, for clients that negotiated message-tags.
            let tags = messageTags
                ? message.tags.filter { $0.key.hasPrefix("+") }.map { MessageTag($0.key, $0.value) } : []
            if message.command == "TAGMSG" {
                guard messageTags else { return }
                chat(message.command, [params[0], ""], context, tags: tags)
            } else {
                chat(message.command, params, context, tags: tags)
            }
        case "CAP": capability(params, context)
        case "PASS":
            if session != nil { numeric(context, "462", "You may not reregister") } else { password = params[0] }
        case "NICK": changeNick(params, context)
        case "USER":
            if session != nil {
                numeric(context, "462", "You may not reregister")
            } else if params[0].isEmpty || params[3].isEmpty {
                numeric(context, "461", "USER", "Not enough parameters")
            } else {
                userName = String(params[0].prefix(20))
                realName = params[3]
                completeRegistration(context)
            }
        case "PING":
            guard let token = params.first else { numeric(context, "409", "No origin specified"); return }
            // After everything already queued for this client: a PING is how clients (and irctest)
            // know that the effects of their earlier commands have all arrived.
            let pong = IRCMessage(source: config.serverName, "PONG", [config.serverName, token])
            if let session {
                // After every message accepted before it, from anyone, that could reach this client has been published.
                afterPublished(session, context) { handler, context in handler.send(context, pong) }
            } else {
                send(context, pong)
            }
        case "PONG": return
        case "QUIT":
            let reason = params.first.map { "Quit: \($0)" } ?? "Quit"
            if let session { hub.disconnect(session, reason: reason) }
            close(context, reason: reason)
        case "JOIN": join(params, context)
        case "PART": part(params, context)
        case "NAMES":
            if let channels = params.first {
                // One 366 for the whole request, with the list as asked.
                for channel in channels.split(separator: ",") { names(String(channel), context, endOfList: false) }
                numeric(context, "366", channels, "End of /NAMES list")
            } else {
                numeric(context, "366", "*", "End of /NAMES list")
            }
        case "WHO": who(params.first, fields: params.count > 1 ? params[1] : nil, context)
        case "WHOIS": whois(params.last ?? "", context)
        case "MODE": mode(params, context)
        case "TOPIC": topic(params, context)
        case "AUTHENTICATE": authenticate(params[0], context)
        case "OPER": oper(params, context)
        case "KILL": kill(params, context)
        case "REGISTER": registerAccount(params, context)
        case "KICK": kick(params, context)
        case "INVITE": invite(params, context)
        case "LIST": list(params.first, context)
        case "ISON":
            let present = params.flatMap { $0.split(separator: " ") }.compactMap { hub.sessions(named: String($0)).first?.name }
            numeric(context, "303", present.joined(separator: " "))
        case "USERHOST":
            let replies = params.flatMap { $0.split(separator: " ") }.prefix(5).compactMap { name -> String? in
                guard let other = hub.sessions(named: String(name)).first else { return nil }
                let speaker = other.speaker
                return "\(speaker.name)=\(other.away == nil ? "+" : "-")\(speaker.user)@\(speaker.host)"
            }
            numeric(context, "302", replies.joined(separator: " "))
        case "CHATHISTORY": chathistory(params, context)
        case "MOTD": motd(context)
        case "LUSERS": lusers(context)
        case "VERSION":
            numeric(context, "351", config.version, config.serverName, "Parley chat server")
            isupport(context)
        case "TIME":
            numeric(context, "391", config.serverName, Date().formatted(.iso8601))
        case "AWAY":
            guard let session else { return }
            if let text = params.first, !text.isEmpty {
                hub.setAway(session, message: text)
                numeric(context, "306", "You have been marked as being away")
            } else {
                hub.setAway(session, message: nil)
                numeric(context, "305", "You are no longer marked as being away")
            }
        default:
            numeric(context, "421", message.command, "Unknown command")
        }
        // Events this command caused for this client (a MODE, a TOPIC, an echo) are queued on the loop;
        // the next command's replies must not overtake them.
        if session != nil, pendingWork == 0, spec.causesEvents || (echoMessage && Self.isChat(message.command)) {
            afterQueuedEvents(context) { _, _ in }
        }
    }

    private func capability(_ params: [String], _ context: ChannelHandlerContext) {
        let subcommand = params[0].uppercased()
        switch subcommand {
        case "LS":
            if session == nil { capNegotiating = true }
            let withValues = (params.count > 1 ? Int(params[1]) ?? 0 : 0) >= 302
            send(context, IRCMessage(source: config.serverName, "CAP", [currentNick, "LS", IRCCapabilities.list(withValues: withValues, config: config)]))
        case "LIST":
            send(context, IRCMessage(source: config.serverName, "CAP", [currentNick, "LIST", capabilities.sorted().joined(separator: " ")]))
        case "REQ":
            if session == nil { capNegotiating = true }
            let requested = (params.count > 1 ? params[1] : "").split(separator: " ").map(String.init)
            let names = Set(IRCCapabilities.offered(config).map(\.name))
            let known = requested.allSatisfy { names.contains($0.hasPrefix("-") ? String($0.dropFirst()) : $0) }
            guard known, !requested.isEmpty else {
                send(context, IRCMessage(source: config.serverName, "CAP", [currentNick, "NAK", requested.joined(separator: " ")]))
                return
            }
            for cap in requested {
                if cap.hasPrefix("-") { capabilities.remove(String(cap.dropFirst())) } else { capabilities.insert(cap) }
            }
            applyCapabilities()
            send(context, IRCMessage(source: config.serverName, "CAP", [currentNick, "ACK", requested.joined(separator: " ")]))
        case "END":
            capNegotiating = false
            completeRegistration(context)
        default:
            numeric(context, "410", params[0], "Invalid CAP command")
        }
    }

    private func applyCapabilities() {
        sink?.receivesOwnMessages = capabilities.contains("echo-message")
        renderFormat = formats.format(IRCRenderOptions(capabilities: capabilities))
        sink?.format = renderFormat
    }

    private func changeNick(_ params: [String], _ context: ChannelHandlerContext) {
        guard let wanted = params.first, !wanted.isEmpty else {
            numeric(context, "431", "No nickname given")
            return
        }
        if let error = NameRules.validateName(wanted) {
            numeric(context, "432", wanted, "Erroneous nickname: \(error.message)")
            return
        }
        guard let session else {
            nick = wanted
            completeRegistration(context)
            return
        }
        runSlowCommand(context) { [hub] () throws(HubError) in
            try await hub.changeNick(session, to: wanted)
        } onError: { handler, context, error in
            if case .nameTaken = error {
                handler.numeric(context, "433", wanted, "Nickname is already in use")
            } else {
                handler.numeric(context, "432", wanted, "Erroneous nickname: \(error.message)")
            }
        }
    }

    /// Registration ends once NICK and USER are in and CAP negotiation (if any) has ended. A PASS of
    /// the form `account:password` logs in first; the client keeps its nick unless that nick is
    /// another account's (then it gets its account's name).
    private func completeRegistration(_ context: ChannelHandlerContext) {
        guard session == nil, pendingWork == 0, let wantedNick = nick, let userName, !capNegotiating else { return }
        let hub = self.hub
        let address = self.address
        if let required = config.serverPassword {
            guard let given = password, Self.constantTimeEqual(given, required) else {
                numeric(context, "464", "Password incorrect")
                close(context, reason: "Bad password")
                return
            }
        }
        let login = config.serverPassword != nil ? nil : password.flatMap { pass -> (String, String)? in
            guard let colon = pass.firstIndex(of: ":") else { return nil }
            return (String(pass[..<colon]), String(pass[pass.index(after: colon)...]))
        }
        password = nil
        let preAccount = self.preAccount
        if preAccount == nil, login == nil, let nickIsAnAccount = hub.accountExistsAtOnce(wantedNick) {
            // A guest, and the store knows its names at once: no trip off the loop (with 5,000
            // connecting at once, that trip woke a pool thread on the server's core each time:
            // 7,000-8,000 context switches, about 150 without it).
            finishRegistration(context, outcome: nickIsAnAccount ? .reservedNick : .guest, wantedNick: wantedNick, userName: userName)
            return
        }
        runSlowCommand(context) { () throws(HubError) -> RegistrationOutcome in
            var account = preAccount
            if account == nil, let (name, secret) = login {
                account = try await hub.authenticate(name: name, password: secret, address: address)
            }
            let nickIsAnAccount = try await hub.accountExists(wantedNick)
            if let account {
                // A logged-in user keeps the nick it asked for, unless that nick is another account's.
                let othersNick = nickIsAnAccount && NameRules.key(wantedNick) != NameRules.key(account)
                return .loggedIn(account: account, nick: othersNick ? account : wantedNick)
            }
            return nickIsAnAccount ? .reservedNick : .guest
        } then: { handler, context, outcome in
            handler.finishRegistration(context, outcome: outcome, wantedNick: wantedNick, userName: userName)
        } onError: { handler, context, error in
            if case .loginFailed = error {
                handler.numeric(context, "464", "Password incorrect")
                handler.close(context, reason: "Bad password")
            } else {
                handler.numeric(context, "FAIL", "Could not complete registration: \(error.message)")
            }
        }
    }

    enum RegistrationOutcome: Sendable {
        case guest
        case reservedNick
        case loggedIn(account: String, nick: String)
    }

    private func finishRegistration(_ context: ChannelHandlerContext, outcome: RegistrationOutcome, wantedNick: String, userName: String) {
        let name: String
        var account: String?
        switch outcome {
        case .reservedNick, .guest:
            name = wantedNick
        case .loggedIn(let accountName, let nick):
            name = nick
            account = accountName
        }
        guard let sink else { return }
        do {
            session = try hub.connect(door: "irc", address: address, sink: sink, name: name, user: userName,
                                      realName: realName, account: account, joinLobby: false)
        } catch .nameTaken {
            numeric(context, "433", name, "Nickname is already in use")
            nick = nil
            return
        } catch {
            close(context, reason: error.message)
            return
        }
        registration = nil
        hub.counters.unregisteredConnections.subtract(1, ordering: .relaxed)
        welcome(context)
        if case .reservedNick = outcome { startGracePeriod(context) }
        if account != nil, let session { deliverPending(to: session) }
    }

    /// A guest using a registered nick: told to identify, and renamed when the grace period ends.
    private func startGracePeriod(_ context: ChannelHandlerContext) {
        guard let session else { return }
        let seconds = config.nickGracePeriod.nanoseconds / 1_000_000_000
        serviceNotice(context, "This nickname is registered. Identify with /msg NickServ IDENTIFY password within \(seconds) seconds, or you will be renamed.")
        let nick = NameRules.key(session.name)
        let hub = self.hub
        graceTimer = context.eventLoop.scheduleTask(in: config.nickGracePeriod) {
            guard session.account == nil, NameRules.key(session.name) == nick else { return }
            hub.renameToGuest(session)
        }
    }

    // MARK: Accounts: SASL, REGISTER, NickServ

    private var isLoggedIn: Bool { (session?.account ?? preAccount) != nil }

    private func authenticate(_ argument: String, _ context: ChannelHandlerContext) {
        if isLoggedIn {
            numeric(context, "907", "You have already authenticated using SASL")
            return
        }
        if argument == "*" {
            saslBuffer = nil
            numeric(context, "906", "SASL authentication aborted")
            return
        }
        guard var buffer = saslBuffer else {
            guard argument.uppercased() == "PLAIN" else {
                numeric(context, "908", "PLAIN", "are available SASL mechanisms")
                numeric(context, "904", "SASL authentication failed")
                return
            }
            saslBuffer = ""
            send(context, IRCMessage("AUTHENTICATE", ["+"]))
            return
        }
        if argument != "+" { buffer += argument }
        guard buffer.utf8.count <= 8192 else {
            // Far more than any PLAIN credentials: fail the exchange rather than buffer without end.
            saslBuffer = nil
            numeric(context, "904", "SASL authentication failed: the credentials are too long")
            return
        }
        guard argument.utf8.count < 400 else {
            // A full 400-byte piece: more follows.
            saslBuffer = buffer
            return
        }
        saslBuffer = nil
        let fields = Data(base64Encoded: buffer).map { data in data.split(separator: 0, omittingEmptySubsequences: false) } ?? []
        guard fields.count == 3, let account = String(data: Data(fields[1]), encoding: .utf8),
              let secret = String(data: Data(fields[2]), encoding: .utf8) else {
            numeric(context, "904", "SASL authentication failed")
            return
        }
        logIn(context, account: account, password: secret) { handler, context, name in
            handler.numeric(context, "903", "SASL authentication successful")
        } failure: { handler, context in
            handler.numeric(context, "904", "SASL authentication failed")
        }
    }

    /// Logs in before or after registration; after it, the session takes the account's name.
    private func logIn(_ context: ChannelHandlerContext, account: String, password: String,
                       success: @escaping (IRCConnectionHandler, ChannelHandlerContext, String) -> Void,
                       failure: @escaping (IRCConnectionHandler, ChannelHandlerContext) -> Void) {
        let hub = self.hub
        let address = self.address
        let session = self.session
        runSlowCommand(context) { () throws(HubError) -> String in
            if let current = session?.account { throw .alreadyLoggedIn(current) }
            return try await hub.authenticate(name: account, password: password, address: address)
        } then: { handler, context, name in
            // An IRC user keeps its nick when it logs in; the account is what changes.
            handler.loggedInNumeric(context, account: name)
            success(handler, context, name)
            if let session {
                do throws(HubError) {
                    try hub.adopt(session, account: name, keepName: true)
                    handler.deliverPending(to: session)
                } catch {
                    handler.numeric(context, "FAIL", error.message)
                }
            } else {
                handler.preAccount = name
            }
        } onError: { handler, context, _ in
            failure(handler, context)
        }
    }

    /// Direct messages kept while the account was offline, after the replies to the login.
    private func deliverPending(to session: Session) {
        let hub = self.hub
        Task { await hub.deliverPending(to: session) }
    }

    private func loggedInNumeric(_ context: ChannelHandlerContext, account: String) {
        let nick = session?.name ?? nick ?? account
        let mask = "\(nick)!\(session?.speaker.user ?? userName ?? nick)@\(Hub.host(of: address))"
        numeric(context, "900", mask, account, "You are now logged in as \(account)")
    }

    /// IRCv3 draft/account-registration: `REGISTER <account|*> <email|*> <password>`.
    private func registerAccount(_ params: [String], _ context: ChannelHandlerContext) {
        let requested = params[0] == "*" ? (session?.name ?? nick) : params[0]
        guard let name = requested else {
            send(context, IRCMessage(source: config.serverName, "FAIL", ["REGISTER", "NEED_NICK", "*", "Send NICK before REGISTER"]))
            return
        }
        if isLoggedIn {
            send(context, IRCMessage(source: config.serverName, "FAIL", ["REGISTER", "ALREADY_AUTHENTICATED", name, "You are already logged in"]))
            return
        }
        if session == nil && !config.registrationBeforeConnect {
            send(context, IRCMessage(source: config.serverName, "FAIL", ["REGISTER", "COMPLETE_CONNECTION_REQUIRED", name,
                                                                         "Finish connecting (NICK, USER, CAP END) before REGISTER"]))
            return
        }
        if let session, NameRules.key(name) != NameRules.key(session.name) {
            send(context, IRCMessage(source: config.serverName, "FAIL", ["REGISTER", "ACCOUNT_NAME_MUST_BE_NICK", name,
                                                                         "Register your current nick, \(session.name), or change nick first"]))
            return
        }
        let hub = self.hub
        let session = self.session
        let password = params[2]
        runSlowCommand(context) { () throws(HubError) -> String in
            if let session {
                try await hub.register(session, name: name, password: password)
            } else {
                try await hub.createAccount(name: name, password: password)
            }
            return name
        } then: { handler, context, name in
            if handler.session == nil { handler.preAccount = name }
            handler.send(context, IRCMessage(source: handler.config.serverName, "REGISTER", ["SUCCESS", name, "Account created"]))
            handler.loggedInNumeric(context, account: name)
        } onError: { handler, context, error in
            let code: String
            switch error {
            case .nameTaken: code = "ACCOUNT_EXISTS"
            case .badName: code = "BAD_ACCOUNT_NAME"
            case .badPassword: code = "WEAK_PASSWORD"
            case .alreadyLoggedIn: code = "ALREADY_AUTHENTICATED"
            default: code = "TEMPORARILY_UNAVAILABLE"
            }
            handler.send(context, IRCMessage(source: handler.config.serverName, "FAIL", ["REGISTER", code, name, error.message]))
        }
    }

    private func serviceNotice(_ context: ChannelHandlerContext, _ text: String) {
        send(context, IRCMessage(source: "NickServ!NickServ@services.\(config.serverName)", "NOTICE", [currentNick, text]))
    }

    /// NickServ, for clients without SASL: REGISTER, IDENTIFY, LOGOUT, INFO, HELP.
    private func nickServ(_ text: String, _ context: ChannelHandlerContext) {
        guard let session else { return }
        let words = text.split(separator: " ").map(String.init)
        let command = words.first?.uppercased() ?? "HELP"
        let hub = self.hub
        switch command {
        case "REGISTER":
            guard words.count >= 2 else { serviceNotice(context, "Syntax: REGISTER <password> [email]"); return }
            let password = words[1]
            runSlowCommand(context) { () throws(HubError) in
                try await hub.register(session, name: session.name, password: password)
            } then: { handler, context, _ in
                handler.graceTimer?.cancel()
                handler.serviceNotice(context, "Account \(session.name) registered; you are now logged in.")
                handler.loggedInNumeric(context, account: session.name)
            } onError: { handler, context, error in
                handler.serviceNotice(context, "Could not register \(session.name): \(error.message)")
            }
        case "IDENTIFY":
            guard words.count >= 2 else { serviceNotice(context, "Syntax: IDENTIFY [account] <password>"); return }
            let account = words.count >= 3 ? words[1] : session.name
            logIn(context, account: account, password: words.last ?? "") { handler, context, name in
                handler.graceTimer?.cancel()
                handler.serviceNotice(context, "You are now identified as \(name).")
            } failure: { handler, context in
                handler.serviceNotice(context, "Invalid account or password for \(account).")
            }
        case "LOGOUT":
            do {
                try hub.logout(session)
                // After the NICK line the logout queued.
                afterQueuedEvents(context) { handler, context in
                    handler.numeric(context, "901", IRCFormat.mask(session.speaker), "You are now logged out")
                    handler.serviceNotice(context, "You are now logged out and called \(session.name).")
                }
            } catch {
                serviceNotice(context, "You are not logged in.")
            }
        case "INFO":
            let name = words.count >= 2 ? words[1] : session.name
            runSlowCommand(context) { () throws(HubError) -> Bool in
                try await hub.accountExists(name)
            } then: { handler, context, exists in
                let online = hub.sessions(named: name).contains { $0.account != nil }
                handler.serviceNotice(context, exists
                    ? "\(name) is a registered account\(online ? ", logged in now" : "")."
                    : "\(name) is not registered.")
            }
        case "HELP":
            for line in [
                "NickServ lets you use your Parley account from IRC clients without SASL:",
                "REGISTER <password> [email]   register your current nick as an account",
                "IDENTIFY [account] <password> log in",
                "LOGOUT                        log out",
                "INFO [name]                   is a name registered?",
            ] { serviceNotice(context, line) }
        default:
            serviceNotice(context, "Unknown command \(command). Try HELP.")
        }
    }

    // MARK: Operators

    private func oper(_ params: [String], _ context: ChannelHandlerContext) {
        guard let session else { return }
        guard let expected = config.operators[params[0]] else {
            numeric(context, "491", "No O-lines for your host")
            return
        }
        guard Self.constantTimeEqual(params[1], expected) else {
            numeric(context, "464", "Password incorrect")
            return
        }
        hub.makeServerOperator(session)
        numeric(context, "381", "You are now an IRC operator")
        send(context, IRCMessage(source: session.name, "MODE", [session.name, "+o"]))
    }

    /// Compares every byte whatever the first difference, so timing does not reveal a prefix.
    static func constantTimeEqual(_ a: String, _ b: String) -> Bool {
        let given = Array(a.utf8), wanted = Array(b.utf8)
        var difference = given.count ^ wanted.count
        for index in 0..<max(given.count, wanted.count) {
            difference |= Int((index < given.count ? given[index] : 0) ^ (index < wanted.count ? wanted[index] : 0))
        }
        return difference == 0
    }

    private func kill(_ params: [String], _ context: ChannelHandlerContext) {
        guard let session else { return }
        guard session.isServerOperator else {
            numeric(context, "481", "Permission Denied- You're not an IRC operator")
            return
        }
        let targets = hub.sessions(named: params[0])
        guard !targets.isEmpty else {
            numeric(context, "401", params[0], "No such nick/channel")
            return
        }
        let reason = "Killed (\(session.name) (\(params.count > 1 ? params[1] : "no reason")))"
        for target in targets {
            hub.disconnect(target, reason: reason)
            hub.drop(target, .kicked(reason: reason))
        }
    }

    // MARK: Replies for registration

    private func welcome(_ context: ChannelHandlerContext) {
        let nick = currentNick
        numeric(context, "001", "Welcome to the \(config.network) IRC network, \(nick)")
        numeric(context, "002", "Your host is \(config.serverName), running version \(config.version)")
        numeric(context, "003", "This server was created \(config.createdAt.formatted(.iso8601))")
        send(context, IRCMessage(source: config.serverName, "004", [nick, config.serverName, config.version, "i", "beIiklmnostv", "beIklov"]))
        isupport(context)
        lusers(context)
        motd(context)
    }

    static func isupportTokens(_ config: IRCDoorConfig) -> [String] {
        [
            "AWAYLEN=200", "CASEMAPPING=ascii", "CHANLIMIT=#:", "CHANMODES=beI,k,l,imnst", "EXCEPTS=e", "INVEX=I", "ELIST=MNU", "CHANNELLEN=\(NameRules.roomLength.upperBound + 1)",
            "CHANTYPES=#", "HOSTLEN=64", "MAXTARGETS=4", "MODES=4", "NETWORK=\(config.network)",
            "NICKLEN=\(NameRules.nameLength.upperBound)", "PREFIX=(ov)@+", "TARGMAX=JOIN:,KICK:,NAMES:,PART:,PRIVMSG:4,NOTICE:4,WHOIS:1",
            "TOPICLEN=300", "USERLEN=20", "UTF8ONLY", "WHOX",
        ] + (config.historyLimit.map { ["CHATHISTORY=\($0)", "MSGREFTYPES=msgid,timestamp"] } ?? [])
    }

    private func isupport(_ context: ChannelHandlerContext) {
        for tokens in IRCLimits.chunks(Self.isupportTokens(config), budget: 350, maxItems: 13) {
            numeric(context, "005", tokens + ["are supported by this server"])
        }
    }

    private func lusers(_ context: ChannelHandlerContext) {
        let counters = hub.counters
        let users = counters.activeSessions.load(ordering: .relaxed)
        let peak = max(users, counters.peakSessions.load(ordering: .relaxed))
        let operators = counters.serverOperators.load(ordering: .relaxed)
        numeric(context, "251", "There are \(users) users and 0 invisible on 1 servers")
        numeric(context, "252", "\(operators)", "operator(s) online")
        numeric(context, "253", "\(max(0, counters.unregisteredConnections.load(ordering: .relaxed)))", "unknown connection(s)")
        numeric(context, "254", "\(hub.roomList().count)", "channels formed")
        numeric(context, "255", "I have \(users) clients and 0 servers")
        numeric(context, "265", "\(users)", "\(peak)", "Current local users \(users), max \(peak)")
        numeric(context, "266", "\(users)", "\(peak)", "Current global users \(users), max \(peak)")
    }

    private func motd(_ context: ChannelHandlerContext) {
        guard let lines = config.motd else {
            numeric(context, "422", "MOTD File is missing")
            return
        }
        numeric(context, "375", "- \(config.serverName) Message of the day - ")
        for line in lines { numeric(context, "372", "- \(line)") }
        numeric(context, "376", "End of /MOTD command.")
    }

    // MARK: Channels and messages

    private func join(_ params: [String], _ context: ChannelHandlerContext) {
        guard let session else { return }
        if params[0] == "0" {
            for room in hub.roomNames(for: session.roomKeys) { _ = try? hub.part(session, room: room) }
            return
        }
        let keys = params.count > 1 ? params[1].split(separator: ",", omittingEmptySubsequences: false).map(String.init) : []
        for (index, channel) in params[0].split(separator: ",").map(String.init).enumerated() {
            do {
                // A labeled JOIN's own JOIN line belongs in the labeled response: the door sends it.
                let echoHere = label != nil
                let joined = try hub.join(session, room: channel, key: index < keys.count ? keys[index] : nil, echo: !echoHere)
                guard !joined.alreadyMember else { continue }
                if echoHere, let line = renderFormat
                    .message(for: .joined(room: joined.name, who: session.speaker)) {
                    send(context, line)
                }
                // After the hub's JOIN line, which is already queued on this loop.
                afterQueuedEvents(context) { handler, context in
                    handler.topicReply(joined.name, context, quietWhenUnset: true)
                    handler.names(joined.name, context)
                }
            } catch .roomFull {
                numeric(context, "471", channel, "Cannot join channel (+l)")
            } catch .inviteOnly {
                numeric(context, "473", channel, "Cannot join channel (+i)")
            } catch .banned {
                numeric(context, "474", channel, "Cannot join channel (+b)")
            } catch .badKey {
                numeric(context, "475", channel, "Cannot join channel (+k)")
            } catch {
                numeric(context, "403", channel, "No such channel: \(error.message)")
            }
        }
    }

    private func part(_ params: [String], _ context: ChannelHandlerContext) {
        guard let session else { return }
        let reason = params.count > 1 ? params[1] : nil
        for channel in params[0].split(separator: ",").map(String.init) {
            do {
                try hub.part(session, room: channel, reason: reason)
            } catch .notInRoom {
                if hub.roomName(channel) == nil {
                    numeric(context, "403", channel, "No such channel")
                } else {
                    numeric(context, "442", channel, "You're not on that channel")
                }
            } catch {
                numeric(context, "403", channel, "No such channel")
            }
        }
    }

    private func chat(_ command: String, _ params: [String], _ context: ChannelHandlerContext, tags: [MessageTag] = []) {
        guard let session else { return }
        guard let targets = params.first, !targets.isEmpty else {
            numeric(context, "411", "No recipient given (\(command))")
            return
        }
        guard command == "TAGMSG" || (params.count > 1 && !params[1].isEmpty) else {
            numeric(context, "412", "No text to send")
            return
        }
        var text = params[1]
        var kind: MessageKind = command == "NOTICE" ? .notice : command == "TAGMSG" ? .tagOnly : .say
        // The first byte first: `hasPrefix` compares by Character, slowly, and most lines are plain.
        if kind == .say, text.utf8.first == 1, text.hasPrefix("\u{1}ACTION ") {
            kind = .action
            text = String(text.dropFirst(8))
            if text.hasSuffix("\u{1}") { text.removeLast() }
        }
        // One target, the usual case, needs no split (splitting a String by Character is slow) and
        // no array.
        guard targets.utf8.contains(UInt8(ascii: ",")) else {
            return chat(command, to: targets, text: text, kind: kind, tags: tags, session: session, context)
        }
        for target in targets.split(separator: ",").prefix(4) {
            chat(command, to: String(target), text: text, kind: kind, tags: tags, session: session, context)
        }
    }

    /// One target of a PRIVMSG, NOTICE or TAGMSG.
    private func chat(_ command: String, to target: String, text: String, kind: MessageKind, tags: [MessageTag],
                      session: Session, _ context: ChannelHandlerContext) {
        let toRoom = target.utf8.first == UInt8(ascii: "#")
        if !toRoom {
            let targetKey = NameRules.key(target)
            if targetKey == "nickserv" || targetKey.hasPrefix("nickserv@") {
                if command == "PRIVMSG" { nickServ(text, context) }
                return
            }
        }
        // A labeled message's echo is this command's response, so it carries the label: the door
        // sends it, once the hub has published the message, instead of the hub.
        let echoLabel = echoMessage ? label : nil
        if echoLabel != nil { label = nil }
        let format = renderFormat
        let outcome = ChatOutcome(bound: NIOLoopBound((self, context), eventLoop: context.eventLoop),
                                  command: command, target: target, label: echoLabel)
        do {
            if toRoom {
                try hub.say(session, room: target, text: text, kind: kind, tags: tags, echo: echoLabel == nil,
                            then: { outcome.report($0) { format.message(for: .message($0)) } })
            } else {
                try hub.direct(session, to: target, text: text, kind: kind, tags: tags, echo: echoLabel == nil,
                               then: { outcome.report($0) { format.message(for: .direct($0)) } })
                if kind == .say || kind == .action, let away = hub.sessions(named: target).first?.away {
                    numeric(context, "301", target, away)
                }
            }
            unpublished += 1
        } catch {
            // A NOTICE never gets an automatic reply, not even an error.
            let reply = command == "NOTICE" ? nil : chatErrorReply(error, target: target)
            if let echoLabel {
                writeLabeledResponse(reply.map { [$0] } ?? [], label: echoLabel, context)
            } else if let reply {
                send(context, reply)
            }
        }
    }

    /// What the door does once the hub has published a chat message (or refused it): the labeled
    /// echo, or the error, in order with this client's other replies. A value the hub's callback
    /// captures, rather than a closure made by a generic function: that one came wrapped in a
    /// reabstraction thunk, a second allocation per message.
    private struct ChatOutcome: Sendable {
        let bound: NIOLoopBound<(IRCConnectionHandler, ChannelHandlerContext)>
        let command: String
        let target: String
        /// The message's label when the client echoes it (the echo is then rendered here, by `echo`).
        let label: String?

        func report<Message>(_ result: Result<Message, HubError>, echo: (Message) -> IRCMessage?) {
            let (handler, context) = bound.value
            var replies: [IRCMessage] = []
            switch result {
            case .success(let message):
                if label != nil, let line = echo(message) { replies.append(line) }
            case .failure(let error):
                if command != "NOTICE" { replies.append(handler.chatErrorReply(error, target: target)) }
            }
            if !handler.closing {
                if let label {
                    handler.writeLabeledResponse(replies, label: label, context)
                } else {
                    for reply in replies { handler.write(context, reply) }
                }
            }
            handler.messagePublished(context)
            handler.flushIfNeeded(context)
        }
    }

    private func chatErrorReply(_ error: HubError, target: String) -> IRCMessage {
        switch error {
        case .noSuchUser: return numericMessage("401", [target, "No such nick/channel"])
        case .noSuchRoom, .badRoom: return numericMessage("403", [target, "No such channel"])
        case .emptyMessage: return numericMessage("412", ["No text to send"])
        case .moderated, .banned, .notInRoom: return numericMessage("404", [target, "Cannot send to channel"])
        default: return numericMessage("404", [target, "Cannot send to channel: \(error.message)"])
        }
    }

    // MARK: History (draft/chathistory)

    /// A `timestamp=` or `msgid=` reference, or `*`.
    private enum HistoryReference: Sendable {
        case latest
        case time(Date)
        case msgid(String)
    }

    /// `CHATHISTORY BEFORE|AFTER|LATEST|AROUND target ref limit`, `BETWEEN target ref ref limit`,
    /// `TARGETS timestamp timestamp limit`. Answers with a `chathistory` batch (plain lines without
    /// `batch`), oldest first.
    private func chathistory(_ params: [String], _ context: ChannelHandlerContext) {
        guard let session else { return }
        let subcommand = params[0].uppercased()
        func fail(_ code: String, _ rest: [String]) {
            send(context, IRCMessage(source: config.serverName, "FAIL", ["CHATHISTORY", code, params[0]] + rest))
        }
        guard let maxLimit = config.historyLimit else {
            fail("MESSAGE_ERROR", [params.count > 1 ? params[1] : "*", "This server keeps no history"])
            return
        }
        let expected: Int
        switch subcommand {
        case "BEFORE", "AFTER", "LATEST", "AROUND", "TARGETS": expected = 4
        case "BETWEEN": expected = 5
        default:
            fail("INVALID_PARAMS", ["Unknown command"])
            return
        }
        guard params.count >= expected else { fail("INVALID_PARAMS", ["Insufficient parameters"]); return }
        guard params.count == expected else { fail("INVALID_PARAMS", ["Too many parameters"]); return }
        // Like other servers: a limit that is missing, zero or above the maximum means the maximum.
        let asked = Int(params[expected - 1]) ?? 0
        let limit = asked > 0 ? min(asked, maxLimit) : maxLimit

        var parsed: [HistoryReference] = []
        for text in params[(subcommand == "TARGETS" ? 1 : 2)..<(expected - 1)] {
            if text == "*" && subcommand == "LATEST" {
                parsed.append(.latest)
            } else if text.hasPrefix("timestamp="), let date = Milliseconds.parse(String(text.dropFirst(10))) {
                parsed.append(.time(date))
            } else if text.hasPrefix("msgid="), subcommand != "TARGETS" {
                parsed.append(.msgid(String(text.dropFirst(6))))
            } else {
                fail("INVALID_PARAMS", [text, text.hasPrefix("timestamp=") ? "Invalid timestamp" : "Invalid message reference"])
                return
            }
        }
        let hub = self.hub
        let format = renderFormat
        let serverName = config.serverName
        let references = parsed

        if subcommand == "TARGETS" {
            guard case .time(let first) = references[0], case .time(let second) = references[1] else { return }
            runSlowCommand(context) { () throws(HubError) in
                try await hub.historyTargets(for: session, from: min(first, second), to: max(first, second), limit: limit)
            } then: { handler, context, targets in
                let lines = targets.map { IRCMessage(source: serverName, "CHATHISTORY", ["TARGETS", $0.name, Milliseconds.iso8601($0.latest)]) }
                handler.sendBatch(context, type: ["draft/chathistory-targets"], lines)
            } onError: { handler, context, _ in
                handler.send(context, IRCMessage(source: serverName, "FAIL", ["CHATHISTORY", "MESSAGE_ERROR", params[0], "*", "Messages could not be retrieved"]))
            }
            return
        }

        let target = params[1]
        let key: String
        do {
            key = try hub.historyTarget(for: session, target).key
        } catch {
            fail("INVALID_TARGET", [target, "Messages could not be retrieved"])
            return
        }
        runSlowCommand(context) { () throws(HubError) -> [LoggedMessage]? in
            // Where a reference stands: nil for a msgid that is not in this target's history.
            func position(_ reference: HistoryReference, asLowerBound lower: Bool) async throws(HubError) -> HistoryCursor? {
                switch reference {
                case .latest: return nil
                case .time(let date): return lower ? .after(date) : .before(date)
                case .msgid(let id): return try await hub.historyCursor(msgid: id, in: key)
                }
            }
            func fetch(after: HistoryCursor? = nil, before: HistoryCursor? = nil, newestFirst: Bool, count: Int = limit) async throws(HubError) -> [LoggedMessage] {
                try await hub.history(key, HistoryRange(after: after, before: before, limit: count, newestFirst: newestFirst))
            }
            let reference = references[0]
            switch subcommand {
            case "LATEST":
                if case .latest = reference { return try await fetch(newestFirst: true) }
                guard let after = try await position(reference, asLowerBound: true) else { return nil }
                return try await fetch(after: after, newestFirst: true)
            case "BEFORE":
                guard let before = try await position(reference, asLowerBound: false) else { return nil }
                return try await fetch(before: before, newestFirst: true)
            case "AFTER":
                guard let after = try await position(reference, asLowerBound: true) else { return nil }
                return try await fetch(after: after, newestFirst: false)
            case "AROUND":
                // Half the limit before the reference, the rest from there on (the reference included).
                guard let center = try await position(reference, asLowerBound: false) else { return nil }
                let half = (limit + 1) / 2
                let earlier = try await fetch(before: center, newestFirst: true, count: half)
                let start = earlier.count == half ? earlier.first?.cursor : nil
                return try await fetch(after: start, newestFirst: false)
            default: // BETWEEN: counted from the first reference towards the second, either way in time.
                guard let firstLow = try await position(reference, asLowerBound: true),
                      let firstHigh = try await position(reference, asLowerBound: false),
                      let secondLow = try await position(references[1], asLowerBound: true),
                      let secondHigh = try await position(references[1], asLowerBound: false) else { return nil }
                if firstHigh <= secondHigh {
                    return try await fetch(after: firstLow, before: secondHigh, newestFirst: false)
                }
                return try await fetch(after: secondLow, before: firstHigh, newestFirst: true)
            }
        } then: { handler, context, found in
            // Without event playback only PRIVMSG and NOTICE are replayed.
            let lines = (found ?? []).compactMap { logged -> IRCMessage? in
                switch logged {
                case .room(let message) where message.kind != .tagOnly: return format.message(for: .message(message), stored: true)
                case .direct(let message, _, _) where message.kind != .tagOnly: return format.message(for: .direct(message), stored: true)
                default: return nil
                }
            }
            handler.sendBatch(context, type: ["chathistory", target], lines)
        } onError: { handler, context, _ in
            handler.send(context, IRCMessage(source: serverName, "FAIL", ["CHATHISTORY", "MESSAGE_ERROR", params[0], target, "Messages could not be retrieved"]))
        }
    }

    /// Lines in a batch of the given type when the client has `batch`, as they are otherwise.
    private func sendBatch(_ context: ChannelHandlerContext, type: [String], _ lines: [IRCMessage]) {
        guard capabilities.contains("batch") else {
            for line in lines { send(context, line) }
            return
        }
        let id = "b\(nextBatchNumber)"
        nextBatchNumber += 1
        send(context, IRCMessage(source: config.serverName, "BATCH", ["+" + id] + type))
        for var line in lines {
            line.tags.insert(.init("batch", id), at: 0)
            send(context, line)
        }
        send(context, IRCMessage(source: config.serverName, "BATCH", ["-" + id]))
    }

    private func names(_ channel: String, _ context: ChannelHandlerContext, endOfList: Bool = true) {
        guard let details = hub.details(of: channel) else {
            if endOfList { numeric(context, "366", channel, "End of /NAMES list") }
            return
        }
        let full = capabilities.contains("userhost-in-names")
        let entries = details.members.map { member in
            prefix(isOperator: member.isOperator, isVoiced: member.isVoiced)
                + (full ? IRCFormat.mask(member.session.speaker) : member.session.name)
        }
        let isMember = details.members.contains { $0.session === session }
        if details.settings.secret && !isMember {
            if endOfList { numeric(context, "366", details.name, "End of /NAMES list") }
            return
        }
        for chunk in IRCLimits.chunks(entries, budget: 400) {
            numeric(context, "353", details.settings.secret ? "@" : "=", details.name, chunk.joined(separator: " "))
        }
        if endOfList { numeric(context, "366", details.name, "End of /NAMES list") }
    }

    /// The membership prefix: the highest one, or all of them with multi-prefix.
    private func prefix(isOperator: Bool, isVoiced: Bool) -> String {
        let all = (isOperator ? "@" : "") + (isVoiced ? "+" : "")
        return capabilities.contains("multi-prefix") ? all : String(all.prefix(1))
    }

    /// WHO, and WHOX when `fields` is `%fields[,token]` (354 with the fields in the canonical order).
    private func who(_ mask: String?, fields: String?, _ context: ChannelHandlerContext) {
        guard let mask else {
            numeric(context, "315", "*", "End of WHO list")
            return
        }
        let rows: [(Session, String, String)]
        if mask.hasPrefix("#") {
            let details = hub.details(of: mask)
            rows = (details?.members ?? []).map { ($0.session, details?.name ?? mask, prefix(isOperator: $0.isOperator, isVoiced: $0.isVoiced)) }
        } else if mask.contains("*") || mask.contains("?") {
            let pattern = mask.contains("!") ? mask : mask + "!*@*"
            let mine = Set(session?.roomKeys ?? [])
            // Invisible users (+i) show in masked WHO only to those sharing a room with them.
            rows = hub.allSessions()
                .filter { RoomSettings.matches(mask: pattern, $0.speaker) }
                .filter { !$0.isInvisible || $0 === session || !mine.isDisjoint(with: $0.roomKeys) }
                .map { ($0, "*", "") }
        } else {
            rows = hub.sessions(named: mask).prefix(1).map { ($0, "*", "") }
        }
        let whox = fields.flatMap { $0.hasPrefix("%") ? $0.dropFirst().split(separator: ",", maxSplits: 1, omittingEmptySubsequences: false) : nil }
        for (member, channel, prefix) in rows {
            let speaker = member.speaker
            let flags = (member.away == nil ? "H" : "G") + (member.isServerOperator ? "*" : "") + prefix
            guard let whox else {
                numeric(context, "352", channel, speaker.user, speaker.host, config.serverName, speaker.name,
                        flags, "0 \(member.realName ?? speaker.name)")
                continue
            }
            let wanted = Set(whox[0])
            let token = whox.count > 1 ? String(whox[1]) : "0"
            var values: [String] = []
            for field in "tcuihsnfdlaor" where wanted.contains(field) {
                switch field {
                case "t": values.append(token)
                case "c": values.append(channel)
                case "u": values.append(speaker.user)
                case "i": values.append(speaker.host)
                case "h": values.append(speaker.host)
                case "s": values.append(config.serverName)
                case "n": values.append(speaker.name)
                case "f": values.append(flags)
                case "d": values.append("0")
                case "l": values.append("0")
                case "a": values.append(speaker.account ?? "0")
                case "o": values.append("n/a")
                default: values.append(member.realName ?? speaker.name)
                }
            }
            numeric(context, "354", values)
        }
        numeric(context, "315", mask, "End of WHO list")
    }

    private func whois(_ target: String, _ context: ChannelHandlerContext) {
        guard let other = hub.sessions(named: target).first else {
            numeric(context, "401", target, "No such nick/channel")
            numeric(context, "318", target, "End of /WHOIS list")
            return
        }
        let speaker = other.speaker
        numeric(context, "311", speaker.name, speaker.user, speaker.host, "*", other.realName ?? speaker.name)
        let rooms = hub.roomNames(for: other.roomKeys)
        if !rooms.isEmpty {
            let shown = rooms.map { room in
                let member = hub.details(of: room)?.members.first { $0.session === other }
                return prefix(isOperator: member?.isOperator == true, isVoiced: member?.isVoiced == true) + room
            }
            numeric(context, "319", speaker.name, shown.joined(separator: " "))
        }
        numeric(context, "312", speaker.name, config.serverName, "Parley (\(other.door) door)")
        if let away = other.away { numeric(context, "301", speaker.name, away) }
        if other.isServerOperator { numeric(context, "313", speaker.name, "is an IRC operator") }
        if let account = speaker.account { numeric(context, "330", speaker.name, account, "is logged in as") }
        numeric(context, "318", speaker.name, "End of /WHOIS list")
    }

    private func mode(_ params: [String], _ context: ChannelHandlerContext) {
        guard let session else { return }
        let target = params[0]
        if target.hasPrefix("#") {
            channelMode(session, params, context)
            return
        }
        guard NameRules.key(target) == NameRules.key(session.name) else {
            numeric(context, hub.sessions(named: target).isEmpty ? "401" : "502",
                    target, hub.sessions(named: target).isEmpty ? "No such nick/channel" : "Can't change mode for other users")
            return
        }
        if params.count == 1 {
            numeric(context, "221", session.isInvisible ? "+i" : "+")
            return
        }
        var adding = true
        var changed = ""
        for flag in params[1] {
            switch flag {
            case "+": adding = true
            case "-": adding = false
            case "i":
                guard session.isInvisible != adding else { continue }
                session.isInvisible = adding
                changed += (adding ? "+" : "-") + "i"
            default:
                numeric(context, "501", "Unknown MODE flag")
            }
        }
        if !changed.isEmpty { send(context, IRCMessage(source: session.name, "MODE", [session.name, changed])) }
    }

    private func topic(_ params: [String], _ context: ChannelHandlerContext) {
        guard let session else { return }
        guard let room = hub.roomName(params[0]) else {
            numeric(context, "403", params[0], "No such channel")
            return
        }
        guard params.count > 1 else {
            topicReply(room, context, quietWhenUnset: false)
            return
        }
        do {
            try hub.setTopic(session, room: room, text: params[1])
        } catch .notInRoom {
            numeric(context, "442", room, "You're not on that channel")
        } catch .needsOperator {
            numeric(context, "482", room, "You're not channel operator")
        } catch {
            numeric(context, "403", room, error.message)
        }
    }

    /// 332 and 333 for a set topic; 331 when there is none (or nothing, on JOIN).
    private func topicReply(_ room: String, _ context: ChannelHandlerContext, quietWhenUnset: Bool) {
        guard let details = hub.details(of: room) else { return }
        guard let topic = details.settings.topic else {
            if !quietWhenUnset { numeric(context, "331", details.name, "No topic is set") }
            return
        }
        numeric(context, "332", details.name, topic.text)
        numeric(context, "333", details.name, topic.setBy, String(Int(topic.setAt.timeIntervalSince1970)))
    }

    private func channelMode(_ session: Session, _ params: [String], _ context: ChannelHandlerContext) {
        guard let details = hub.details(of: params[0]) else {
            numeric(context, "403", params[0], "No such channel")
            return
        }
        let room = details.name
        guard params.count > 1 else {
            let (modes, arguments) = details.settings.modeSummary
            let isMember = details.members.contains { $0.session === session }
            numeric(context, "324", [room, modes] + (isMember ? arguments : []))
            numeric(context, "329", room, String(Int(details.settings.createdAt.timeIntervalSince1970)))
            return
        }
        let parsed = Self.parseModes(params[1], arguments: Array(params.dropFirst(2)))
        for unknown in parsed.unknown { numeric(context, "472", String(unknown), "is unknown mode char to me") }
        var changes = parsed.changes
        // A list mode (+b, +e, +I) with no mask lists its masks instead.
        let listReplies: [ModeChange.Mode: (entry: String, end: String, text: String)] = [
            .ban: ("367", "368", "End of channel ban list"),
            .banException: ("348", "349", "End of channel exception list"),
            .inviteException: ("346", "347", "End of channel invite exception list"),
        ]
        for (mode, replies) in listReplies where changes.contains(where: { $0.mode == mode && $0.argument == nil }) {
            for mask in details.settings[list: mode] { numeric(context, replies.entry, room, mask) }
            numeric(context, replies.end, room, replies.text)
            changes.removeAll { $0.mode == mode && $0.argument == nil }
        }
        guard !changes.isEmpty else { return }
        do {
            let result = try hub.changeModes(session, room: room, changes)
            for error in result.errors {
                if case .userNotInRoom(let name, _) = error {
                    numeric(context, hub.sessions(named: name).isEmpty ? "401" : "441", name, room,
                            hub.sessions(named: name).isEmpty ? "No such nick/channel" : "They aren't on that channel")
                }
            }
        } catch .needsOperator {
            numeric(context, "482", room, "You're not channel operator")
        } catch {
            numeric(context, "403", room, error.message)
        }
    }

    /// Parses `+o-v+k nick nick key`: which modes take an argument follows CHANMODES=b,k,l,imnt and
    /// PREFIX=(ov)@+. At most four changes with arguments, as MODES=4 says.
    static func parseModes(_ text: String, arguments: [String]) -> (changes: [ModeChange], unknown: [Character]) {
        var adding = true
        var remaining = arguments[...]
        var changes: [ModeChange] = []
        var unknown: [Character] = []
        for character in text {
            switch character {
            case "+": adding = true
            case "-": adding = false
            default:
                guard let mode = ModeChange.Mode(rawValue: character) else {
                    unknown.append(character)
                    continue
                }
                let takesArgument: Bool
                switch mode {
                case .ban, .banException, .inviteException, .op, .voice, .key: takesArgument = true
                case .limit: takesArgument = adding
                default: takesArgument = false
                }
                var argument: String?
                if takesArgument, changes.filter({ $0.argument != nil }).count < 4 {
                    argument = remaining.popFirst()
                }
                // o, v and k (when added) are meaningless without their argument; b without one lists.
                if argument == nil && (mode == .op || mode == .voice || (mode == .key && adding) || (mode == .limit && adding)) { continue }
                changes.append(ModeChange(adding, mode, argument))
            }
        }
        return (changes, unknown)
    }

    /// `KICK #a nick` , `KICK #a nick1,nick2` or `KICK #a,#b nick1,nick2` (pairs).
    private func kick(_ params: [String], _ context: ChannelHandlerContext) {
        guard let session else { return }
        let reason = params.count > 2 ? params[2] : nil
        let channels = params[0].split(separator: ",").map(String.init)
        let targets = params[1].split(separator: ",").map(String.init)
        for (index, target) in targets.enumerated() {
            let channel = channels.count == targets.count ? channels[index] : channels.first ?? params[0]
            do {
                try hub.kick(session, room: channel, target: target, reason: reason)
            } catch .noSuchRoom, .badRoom {
                numeric(context, "403", channel, "No such channel")
            } catch .notInRoom {
                numeric(context, "442", channel, "You're not on that channel")
            } catch .needsOperator {
                numeric(context, "482", channel, "You're not channel operator")
            } catch .userNotInRoom {
                numeric(context, "441", target, channel, "They aren't on that channel")
            } catch {
                numeric(context, "403", channel, error.message)
            }
        }
    }

    private func invite(_ params: [String], _ context: ChannelHandlerContext) {
        guard let session else { return }
        // INVITE alone lists the rooms this user is invited to.
        if params.isEmpty {
            for room in hub.invitations(for: session) { numeric(context, "336", room) }
            numeric(context, "337", "End of /INVITE list")
            return
        }
        guard params.count >= 2 else {
            numeric(context, "461", "INVITE", "Not enough parameters")
            return
        }
        do {
            let (target, room) = try hub.invite(session, target: params[0], room: params[1])
            numeric(context, "341", target, room)
        } catch .noSuchUser {
            numeric(context, "401", params[0], "No such nick/channel")
        } catch .noSuchRoom, .badRoom {
            numeric(context, "403", params[1], "No such channel")
        } catch .notInRoom {
            numeric(context, "442", params[1], "You're not on that channel")
        } catch .alreadyInRoom(let name, let room) {
            numeric(context, "443", name, room, "is already on channel")
        } catch .needsOperator {
            numeric(context, "482", params[1], "You're not channel operator")
        } catch {
            numeric(context, "403", params[1], error.message)
        }
    }

    /// LIST with ELIST=MNU filters, comma-separated: `#name`, `*mask*`, `!*mask*`, `>N` and `<N` users.
    private func list(_ filter: String?, _ context: ChannelHandlerContext) {
        numeric(context, "321", "Channel", "Users  Name")
        let mine = Set(session?.roomKeys ?? [])
        let filters = filter?.split(separator: ",").map(String.init) ?? []
        func accepts(_ room: RoomInfo) -> Bool {
            filters.allSatisfy { filter in
                if filter.hasPrefix(">"), let count = Int(filter.dropFirst()) { return room.memberCount > count }
                if filter.hasPrefix("<"), let count = Int(filter.dropFirst()) { return room.memberCount < count }
                let negated = filter.hasPrefix("!")
                let pattern = Array(NameRules.key(negated ? String(filter.dropFirst()) : filter).unicodeScalars)
                return RoomSettings.glob(pattern, Array(NameRules.key(room.name).unicodeScalars)) != negated
            }
        }
        for room in hub.roomList() where accepts(room) {
            // Secret rooms are listed only to their members.
            if hub.details(of: room.name)?.settings.secret == true && !mine.contains(NameRules.key(room.name)) { continue }
            numeric(context, "322", room.name, "\(room.memberCount)", hub.details(of: room.name)?.settings.topic?.text ?? "")
        }
        numeric(context, "323", "End of /LIST")
    }

    // MARK: Plumbing

    /// Runs `body` after the tasks already queued on this loop: replies that must follow the hub's
    /// events for the same command (NAMES after JOIN) go through here.
    /// No further line is handled meanwhile, so replies stay in command order.
    private func afterQueuedEvents(_ context: ChannelHandlerContext, _ body: @escaping (IRCConnectionHandler, ChannelHandlerContext) -> Void) {
        pendingWork += 1
        let bound = NIOLoopBound((self, context, body), eventLoop: context.eventLoop)
        context.eventLoop.execute {
            let (handler, context, body) = bound.value
            handler.pendingWork -= 1
            guard !handler.closing else { return }
            body(handler, context)
            handler.finishLabeledResponse(context)
            handler.flushIfNeeded(context)
            handler.resume(context)
        }
    }

    /// Like `afterQueuedEvents`, but also after every chat message accepted so far (by anyone) for this
    /// client has been stored and published: what a PONG promises a client that uses PING to wait for
    /// its messages.
    private func afterPublished(_ session: Session, _ context: ChannelHandlerContext,
                                _ body: @escaping (IRCConnectionHandler, ChannelHandlerContext) -> Void) {
        pendingWork += 1
        let bound = NIOLoopBound((self, context, body), eventLoop: context.eventLoop)
        let loop = context.eventLoop
        hub.afterPublished(to: session) {
            loop.execute {
                let (handler, context, body) = bound.value
                handler.pendingWork -= 1
                handler.afterQueuedEvents(context, body)
            }
        }
    }

    /// Runs a command that awaits (the store, the password hasher) off the loop, reading no further
    /// line until it is answered.
    private func runSlowCommand<T: Sendable>(
        _ context: ChannelHandlerContext,
        _ work: @escaping @Sendable () async throws(HubError) -> T,
        then success: @escaping (IRCConnectionHandler, ChannelHandlerContext, T) -> Void = { _, _, _ in },
        onError failure: @escaping (IRCConnectionHandler, ChannelHandlerContext, HubError) -> Void = { handler, context, error in
            handler.numeric(context, "FAIL", error.message)
        }
    ) {
        pendingWork += 1
        let bound = NIOLoopBound((self, context, success, failure), eventLoop: context.eventLoop)
        let loop = context.eventLoop
        Task {
            let result: Result<T, HubError>
            do throws(HubError) {
                result = .success(try await work())
            } catch {
                result = .failure(error)
            }
            loop.execute {
                let (handler, context, success, failure) = bound.value
                handler.pendingWork -= 1
                guard !handler.closing else { return }
                switch result {
                case .success(let value): success(handler, context, value)
                case .failure(let error): failure(handler, context, error)
                }
                handler.finishLabeledResponse(context)
                handler.flushIfNeeded(context)
                handler.resume(context)
            }
        }
    }

    func numeric(_ context: ChannelHandlerContext, _ code: String, _ params: String...) {
        numeric(context, code, params)
    }

    func numeric(_ context: ChannelHandlerContext, _ code: String, _ params: [String]) {
        send(context, numericMessage(code, params))
    }

    private func numericMessage(_ code: String, _ params: [String]) -> IRCMessage {
        if code == "FAIL" {
            return IRCMessage(source: config.serverName, "NOTICE", [currentNick, params.joined(separator: " ")])
        }
        return IRCMessage(source: config.serverName, code, [currentNick] + params)
    }

    private func send(_ context: ChannelHandlerContext, _ message: IRCMessage) {
        guard !closing else { return }
        if label != nil {
            labeledReplies.append(message)
            return
        }
        write(context, message)
    }

    /// Through the sink, so that replies stay in order with the hub's messages gathered there.
    private func write(_ context: ChannelHandlerContext, _ message: IRCMessage) {
        guard let sink else { return }
        sink.enqueue { message.writeLine(to: &$0) }
        wroteSinceFlush = true
        sink.enforceOutboundLimit()
    }

    /// Replies are written at once, not with the loop's gathered flush: that one waits for the next
    /// turn (longer when the loop is busy), and a PONG that acknowledges a sender's window waited
    /// with it (fan-out to 1,000: 12% fewer deliveries, PING p99 16 -> 27 ms; docs/benchmarks.md).
    private func flushIfNeeded(_ context: ChannelHandlerContext) {
        guard wroteSinceFlush else { return }
        wroteSinceFlush = false
        sink?.flushNow()
    }

    private func close(_ context: ChannelHandlerContext, reason: String) {
        flushIfNeeded(context)
        sink?.disconnect(finalBytes: IRCMessage("ERROR", ["Closing Link: \(address) (\(reason))"]).wireLine)
    }
}
