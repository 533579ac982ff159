import NIOCore
import NIOPosix
import Synchronization

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif

// MARK: - Errors

/// What can go wrong while talking to a server with `LineClient`.
public enum LineClientError: Error, CustomStringConvertible, Sendable, Equatable {
    /// Nothing suitable arrived in time; `waitingFor` says what was awaited.
    case timeout(waitingFor: String)
    /// The server closed the connection (or it was closed locally) and no line is left to read.
    case closed
    /// The TCP connection could not be made; the text says to where and why.
    case connectFailed(String)

    public var description: String {
        switch self {
        case .timeout(let what): return "timed out waiting for \(what)"
        case .closed: return "the connection is closed"
        case .connectFailed(let why): return "could not connect to \(why)"
        }
    }
}

/// An `ERR CODE text` answer to a command sent by `LineClient.register` or `LineClient.login`.
public struct LineCommandError: Error, CustomStringConvertible, Sendable, Equatable {
    /// The stable error word, e.g. `login-failed`.
    public let code: String
    /// The sentence for humans that followed the code (may be empty).
    public let message: String

    public init(code: String, message: String) {
        self.code = code
        self.message = message
    }

    /// Parses an `ERR CODE text` line; `nil` when the line is not an `ERR` line.
    public init?(errLine line: String) {
        guard line == "ERR" || line.hasPrefix("ERR ") else { return nil }
        let rest = line.dropFirst(3).drop(while: { $0 == " " })
        if let space = rest.firstIndex(of: " ") {
            code = String(rest[..<space])
            message = String(rest[rest.index(after: space)...].drop(while: { $0 == " " }))
        } else {
            code = String(rest)
            message = ""
        }
    }

    public var description: String {
        message.isEmpty ? "ERR \(code)" : "ERR \(code): \(message)"
    }
}

// MARK: - Incoming lines

/// One line received from the server, with the moment its bytes were read from the socket.
struct IncomingLine: Sendable {
    var text: String
    var receivedAt: ContinuousClock.Instant
}

/// The unbounded queue of received lines plus the tasks waiting for them.
///
/// All state sits behind one `Mutex`; continuations are always resumed *after* the lock is released.
/// Every waiter is resumed exactly once: whoever removes it from `waiters` (a delivered line, the close,
/// the timeout timer or its task's cancellation) resumes it, and removal happens under the lock.
///
/// Timeouts: rather than one event-loop timer per wait (cancelling a NIO timer is a linear search of
/// the loop's timer queue, which a thousand busy clients would pay on every line), each inbox keeps at
/// most one armed timer, at or before the earliest waiter's deadline. A satisfied wait leaves the timer
/// alone; when it fires it expires the waiters that are due and re-arms for the earliest remaining one.
/// Invariant: while a waiter exists, a timer is pending with a deadline no later than the waiter's.
final class LineInbox: Sendable {
    private struct Waiter {
        let id: UInt64
        /// How many lines the waiter takes at most (1 for `nextLine`, many for batches).
        let maxLines: Int
        let deadline: NIODeadline
        let continuation: CheckedContinuation<[IncomingLine], any Error>
    }

    private struct State {
        var lines: [IncomingLine] = []
        var head = 0
        var closed = false
        var waiters: [Waiter] = []
        /// Ids of waits whose task was cancelled before the waiter was installed.
        var cancelledEarly: Set<UInt64> = []
        var nextID: UInt64 = 0
        /// The deadline of the earliest pending timer this inbox armed (nil: none known to be pending).
        var armedAt: NIODeadline? = nil

        var available: Int { lines.count - head }

        mutating func take(_ maxLines: Int) -> [IncomingLine] {
            let count = Swift.min(maxLines, available)
            if head == 0 && count == lines.count {
                let all = lines
                lines = []
                return all
            }
            let out = Array(lines[head..<(head + count)])
            head += count
            compact()
            return out
        }

        mutating func takeOne() -> IncomingLine {
            let line = lines[head]
            head += 1
            compact()
            return line
        }

        private mutating func compact() {
            if head == lines.count {
                lines.removeAll(keepingCapacity: true)
                head = 0
            } else if head >= 1024 && head * 2 >= lines.count {
                lines.removeFirst(head)
                head = 0
            }
        }

        /// Arms a timer for `deadline` unless one is already pending at or before it; returns whether to schedule.
        mutating func arm(for deadline: NIODeadline) -> Bool {
            if let armedAt, armedAt <= deadline { return false }
            armedAt = deadline
            return true
        }
    }

    private let state = Mutex(State())
    private let eventLoop: any EventLoop

    init(eventLoop: any EventLoop) {
        self.eventLoop = eventLoop
    }

    var isClosed: Bool {
        state.withLock { $0.closed }
    }

    /// Called on the event loop with the lines of one read.
    func deliver(_ newLines: [IncomingLine]) {
        let wakeups: [(Waiter, [IncomingLine])] = state.withLock { state in
            state.lines.append(contentsOf: newLines)
            var wakeups: [(Waiter, [IncomingLine])] = []
            while !state.waiters.isEmpty && state.available > 0 {
                let waiter = state.waiters.removeFirst()
                wakeups.append((waiter, state.take(waiter.maxLines)))
            }
            return wakeups
        }
        for (waiter, lines) in wakeups {
            waiter.continuation.resume(returning: lines)
        }
    }

    /// Marks the inbox closed; waiters (there are only waiters when no line is buffered) get `.closed`.
    func close() {
        let waiters: [Waiter] = state.withLock { state in
            guard !state.closed else { return [] }
            state.closed = true
            let waiters = state.waiters
            state.waiters = []
            return waiters
        }
        for waiter in waiters {
            waiter.continuation.resume(throwing: LineClientError.closed)
        }
    }

    private enum Immediate {
        case lines([IncomingLine])
        case closed
        case timeout
        case cancelled
        case wait(UInt64)
    }

    /// Returns the next line: buffered ones first; `.closed` once closed and drained; `.timeout` otherwise.
    func nextLine(timeout: Duration) async throws -> IncomingLine {
        let fast: IncomingLine? = state.withLock { state in
            state.available > 0 ? state.takeOne() : nil
        }
        if let fast { return fast }
        let lines = try await wait(maxLines: 1, timeout: timeout)
        guard let first = lines.first else { throw LineClientError.timeout(waitingFor: "a line") }
        return first
    }

    /// Returns all buffered lines (at least one, at most `maxLines`), waiting for one if none is buffered.
    func nextBatch(maxLines: Int, timeout: Duration) async throws -> [IncomingLine] {
        try await wait(maxLines: Swift.max(1, maxLines), timeout: timeout)
    }

    private func wait(maxLines: Int, timeout: Duration) async throws -> [IncomingLine] {
        let first: Immediate = state.withLock { state in
            if state.available > 0 { return .lines(state.take(maxLines)) }
            if state.closed { return .closed }
            if timeout <= .zero { return .timeout }
            state.nextID &+= 1
            return .wait(state.nextID)
        }
        let id: UInt64
        switch first {
        case .lines(let lines): return lines
        case .closed: throw LineClientError.closed
        case .timeout, .cancelled: throw LineClientError.timeout(waitingFor: "a line")
        case .wait(let waitID): id = waitID
        }
        let deadline = NIODeadline.now() + TimeAmount(timeout)
        defer {
            state.withLock { state in
                if !state.cancelledEarly.isEmpty { state.cancelledEarly.remove(id) }
            }
        }
        return try await withTaskCancellationHandler {
            try await withCheckedThrowingContinuation { (continuation: CheckedContinuation<[IncomingLine], any Error>) in
                var schedule = false
                let now: Immediate? = state.withLock { state in
                    if state.cancelledEarly.remove(id) != nil { return .cancelled }
                    if state.available > 0 { return .lines(state.take(maxLines)) }
                    if state.closed { return .closed }
                    state.waiters.append(Waiter(id: id, maxLines: maxLines, deadline: deadline, continuation: continuation))
                    schedule = state.arm(for: deadline)
                    return nil
                }
                switch now {
                case .lines(let lines): continuation.resume(returning: lines)
                case .closed: continuation.resume(throwing: LineClientError.closed)
                case .cancelled: continuation.resume(throwing: CancellationError())
                case .timeout, .wait: continuation.resume(throwing: LineClientError.timeout(waitingFor: "a line"))
                case nil: if schedule { scheduleTimer(at: deadline) }
                }
            }
        } onCancel: {
            self.cancel(id)
        }
    }

    private func scheduleTimer(at deadline: NIODeadline) {
        eventLoop.scheduleTask(deadline: deadline) { [self] in
            self.timerFired(armedFor: deadline)
        }
    }

    private func timerFired(armedFor firedDeadline: NIODeadline) {
        let now = NIODeadline.now()
        var rearmAt: NIODeadline? = nil
        let expired: [Waiter] = state.withLock { state in
            if state.armedAt == firedDeadline { state.armedAt = nil }
            var expired: [Waiter] = []
            var earliest: NIODeadline? = nil
            state.waiters.removeAll { waiter in
                if waiter.deadline <= now {
                    expired.append(waiter)
                    return true
                }
                if let current = earliest, current <= waiter.deadline {} else { earliest = waiter.deadline }
                return false
            }
            if let earliest, state.arm(for: earliest) { rearmAt = earliest }
            return expired
        }
        for waiter in expired {
            waiter.continuation.resume(throwing: LineClientError.timeout(waitingFor: "a line"))
        }
        if let rearmAt { scheduleTimer(at: rearmAt) }
    }

    private func cancel(_ id: UInt64) {
        let waiter: Waiter? = state.withLock { state in
            if let index = state.waiters.firstIndex(where: { $0.id == id }) {
                return state.waiters.remove(at: index)
            }
            state.cancelledEarly.insert(id)
            return nil
        }
        waiter?.continuation.resume(throwing: CancellationError())
    }
}

// MARK: - Channel handler

/// Splits the inbound byte stream into lines (LF or CRLF) and hands each read's lines to the inbox.
final class LineSplitter: ChannelInboundHandler, RemovableChannelHandler {
    typealias InboundIn = ByteBuffer

    private let inbox: LineInbox
    /// Bytes of a line whose end has not arrived yet.
    private var partial: [UInt8] = []

    init(inbox: LineInbox) {
        self.inbox = inbox
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        let buffer = unwrapInboundIn(data)
        let now = ContinuousClock.now
        var lines: [IncomingLine] = []
        buffer.withUnsafeReadableBytes { raw in
            guard let base = raw.baseAddress else { return }
            let count = raw.count
            var start = 0
            while start < count, let found = memchr(base + start, 0x0A, count - start) {
                let end = base.distance(to: UnsafeRawPointer(found))
                if partial.isEmpty {
                    var lineEnd = end
                    if lineEnd > start && raw[lineEnd - 1] == 0x0D { lineEnd -= 1 }
                    let text = String(decoding: UnsafeRawBufferPointer(rebasing: raw[start..<lineEnd]), as: UTF8.self)
                    lines.append(IncomingLine(text: text, receivedAt: now))
                } else {
                    partial.append(contentsOf: raw[start..<end])
                    lines.append(IncomingLine(text: takePartial(), receivedAt: now))
                }
                start = end + 1
            }
            if start < count {
                partial.append(contentsOf: raw[start..<count])
            }
        }
        if !lines.isEmpty {
            inbox.deliver(lines)
        }
    }

    private func takePartial() -> String {
        if partial.last == 0x0D { partial.removeLast() }
        let text = String(decoding: partial, as: UTF8.self)
        partial.removeAll(keepingCapacity: true)
        return text
    }

    func channelInactive(context: ChannelHandlerContext) {
        if !partial.isEmpty {
            // The server ended with an unterminated line: still hand it over.
            inbox.deliver([IncomingLine(text: takePartial(), receivedAt: .now)])
        }
        inbox.close()
        context.fireChannelInactive()
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        context.close(promise: nil)
    }
}

// MARK: - The client

/// A client for the line protocol (see docs/protocol.md).
///
/// Incoming lines are read continuously and queued without bound, so a test can read them later;
/// `nextLine`, `expect` and `waitForClose` take them off the queue in order. Several tasks may wait at
/// once; lines go to the waiters in the order they started waiting.
public final class LineClient: Sendable {
    private let channel: any Channel
    private let inbox: LineInbox
    /// The local TCP port of the connection (0 if unknown).
    public let localPort: Int

    init(channel: any Channel, inbox: LineInbox) {
        self.channel = channel
        self.inbox = inbox
        self.localPort = channel.localAddress?.port ?? 0
    }

    /// Connects to a line door. `receiveBufferSize` sets `SO_RCVBUF` before the connection is made.
    public static func connect(
        host: String,
        port: Int,
        receiveBufferSize: Int? = nil,
        group: any EventLoopGroup = MultiThreadedEventLoopGroup.singleton
    ) async throws -> LineClient {
        try await connect(host: host, port: port, receiveBufferSize: receiveBufferSize, group: group, connectTimeout: .seconds(10))
    }

    /// As `connect(host:port:receiveBufferSize:group:)`, with a bound on the TCP connect itself.
    static func connect(
        host: String,
        port: Int,
        receiveBufferSize: Int? = nil,
        group: any EventLoopGroup = MultiThreadedEventLoopGroup.singleton,
        connectTimeout: Duration
    ) async throws -> LineClient {
        let eventLoop = group.next()
        let inbox = LineInbox(eventLoop: eventLoop)
        var bootstrap = ClientBootstrap(group: eventLoop)
            .channelOption(.tcpOption(.tcp_nodelay), value: 1)
            .connectTimeout(TimeAmount(connectTimeout > .zero ? connectTimeout : .milliseconds(1)))
            .channelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.addHandler(LineSplitter(inbox: inbox))
                }
            }
        if let receiveBufferSize {
            bootstrap = bootstrap.channelOption(.socketOption(.so_rcvbuf), value: SocketOptionValue(clamping: receiveBufferSize))
        }
        let channel: any Channel
        do {
            // An address literal (every benchmark's 127.0.0.1) is connected to directly: by name, NIO
            // resolves it on a thread of its own and races the results (Happy Eyeballs), a cost per
            // connection that held up `--scenario connections` more than the server did.
            if let address = try? SocketAddress(ipAddress: host, port: port) {
                channel = try await bootstrap.connect(to: address).get()
            } else {
                channel = try await bootstrap.connect(host: host, port: port).get()
            }
        } catch {
            throw LineClientError.connectFailed("\(host):\(port): \(describeConnectError(error))")
        }
        return LineClient(channel: channel, inbox: inbox)
    }

    // MARK: Sending

    /// Sends `line` followed by `"\n"`, flushed.
    public func send(_ line: String) async throws {
        var buffer = channel.allocator.buffer(capacity: line.utf8.count + 1)
        buffer.writeString(line)
        buffer.writeInteger(UInt8(ascii: "\n"))
        try await write(buffer)
    }

    /// The event loop the connection runs on.
    var eventLoop: any EventLoop { channel.eventLoop }

    /// Replaces the line reader with `handler`, which from then on gets the raw bytes (lines already read
    /// stay unread). For load generators that must not pay for a string per line.
    func handOver(to handler: some ChannelInboundHandler & Sendable) async throws {
        let channel = self.channel
        try await channel.eventLoop.submit {
            let splitter = try channel.pipeline.syncOperations.context(handlerType: LineSplitter.self)
            try channel.pipeline.syncOperations.addHandler(handler)
            return channel.pipeline.syncOperations.removeHandler(context: splitter)
        }.flatMap { $0 }.get()
    }

    /// Sends exactly `bytes`, flushed.
    public func sendRaw(_ bytes: [UInt8]) async throws {
        var buffer = channel.allocator.buffer(capacity: bytes.count)
        buffer.writeBytes(bytes)
        try await write(buffer)
    }

    private func write(_ buffer: ByteBuffer) async throws {
        do {
            try await channel.writeAndFlush(buffer)
        } catch let error as ChannelError {
            switch error {
            case .ioOnClosedChannel, .alreadyClosed, .outputClosed, .eof:
                throw LineClientError.closed
            default:
                throw error
            }
        } catch {
            if !channel.isActive || inbox.isClosed { throw LineClientError.closed }
            throw error
        }
    }

    // MARK: Receiving

    /// The next line from the server, without its line ending. Throws `.closed` when the server closed
    /// and no line is left, `.timeout` when none came in time.
    public func nextLine(timeout: Duration = .seconds(10)) async throws -> String {
        try await nextIncoming(timeout: timeout).text
    }

    func nextIncoming(timeout: Duration) async throws -> IncomingLine {
        try await inbox.nextLine(timeout: timeout)
    }

    /// All lines queued so far (at least one: waits up to `timeout` for one when none is queued).
    func nextBatch(maxLines: Int = .max, timeout: Duration) async throws -> [IncomingLine] {
        try await inbox.nextBatch(maxLines: maxLines, timeout: timeout)
    }

    /// Reads lines, discarding those that do not match, until one matches; returns it.
    /// Throws `.timeout(waitingFor: what)` when none matched in time, `.closed` when the server closed.
    public func expect(
        timeout: Duration = .seconds(10),
        _ what: String = "a matching line",
        where predicate: @Sendable (String) -> Bool
    ) async throws -> String {
        try await expectIncoming(timeout: timeout, what, where: predicate).text
    }

    func expectIncoming(
        timeout: Duration,
        _ what: String,
        where predicate: (String) -> Bool
    ) async throws -> IncomingLine {
        let deadline = ContinuousClock.now + timeout
        while true {
            let remaining = deadline - .now
            // Checked first so that a flood of non-matching lines cannot keep us here past the deadline.
            if remaining <= .zero { throw LineClientError.timeout(waitingFor: what) }
            do {
                let line = try await nextIncoming(timeout: remaining)
                if predicate(line.text) { return line }
            } catch LineClientError.timeout {
                throw LineClientError.timeout(waitingFor: what)
            }
        }
    }

    /// Reads lines until one starts with `prefix`; returns it.
    public func expect(prefix: String, timeout: Duration = .seconds(10)) async throws -> String {
        try await expectIncoming(timeout: timeout, "a line starting with \"\(prefix)\"", where: { $0.hasPrefix(prefix) }).text
    }

    /// Discards lines until the server closes the connection; throws `.timeout` if it does not in time.
    public func waitForClose(timeout: Duration = .seconds(10)) async throws {
        let deadline = ContinuousClock.now + timeout
        while true {
            let remaining = deadline - .now
            if remaining <= .zero {
                if inbox.isClosed {
                    _ = try? await nextBatch(timeout: .zero)  // drop what is left
                    return
                }
                throw LineClientError.timeout(waitingFor: "the server to close the connection")
            }
            do {
                _ = try await nextBatch(timeout: remaining)
            } catch LineClientError.closed {
                return
            } catch LineClientError.timeout {
                throw LineClientError.timeout(waitingFor: "the server to close the connection")
            }
        }
    }

    /// Whether the connection is closed (lines received before the close may still be queued).
    public var isClosed: Bool {
        inbox.isClosed
    }

    /// Closes the connection (queued lines stay readable). Safe to call more than once.
    public func close() async {
        do {
            try await channel.close()
        } catch {
            // Already closed: nothing to do.
        }
        inbox.close()
    }

    /// Closes the connection after `delay` unless it is closed before; does not wait.
    func close(after delay: Duration) {
        let channel = self.channel
        channel.eventLoop.scheduleTask(in: TimeAmount(delay)) {
            channel.close(promise: nil)
        }
    }

    /// Stops reading from the socket (for tests of a slow reader); lines already queued stay readable.
    public func pauseReading() async {
        do {
            try await channel.setOption(ChannelOptions.autoRead, value: false).get()
        } catch {
            // The channel is closed: there is nothing to read anyway.
        }
    }

    /// Resumes reading from the socket after `pauseReading()`.
    public func resumeReading() async {
        do {
            try await channel.setOption(ChannelOptions.autoRead, value: true).get()
        } catch {
            return  // closed
        }
        channel.read()
    }

    // MARK: Commands

    /// Sends `/register NAME PASSWORD` and waits for `OK register`; throws `LineCommandError` on `ERR`.
    public func register(_ name: String, _ password: String, timeout: Duration = .seconds(30)) async throws {
        try await command("/register \(name) \(password)", okFor: "register", timeout: timeout)
    }

    /// Sends `/login NAME PASSWORD` and waits for `OK login`; throws `LineCommandError` on `ERR`.
    public func login(_ name: String, _ password: String, timeout: Duration = .seconds(30)) async throws {
        try await command("/login \(name) \(password)", okFor: "login", timeout: timeout)
    }

    /// Sends `line`, then reads until `OK <command>` (returned) or an `ERR` line (thrown as `LineCommandError`).
    @discardableResult
    func command(_ line: String, okFor command: String, timeout: Duration) async throws -> String {
        try await send(line)
        let answer = try await expectIncoming(timeout: timeout, "OK \(command)") { text in
            isOK(text, command) || text.hasPrefix("ERR ") || text == "ERR"
        }
        if let error = LineCommandError(errLine: answer.text) { throw error }
        return answer.text
    }
}

/// Whether `line` is `OK <command>` or `OK <command> text`.
func isOK(_ line: String, _ command: String) -> Bool {
    guard line.hasPrefix("OK ") else { return false }
    let rest = line.utf8.dropFirst(3)
    guard rest.starts(with: command.utf8) else { return false }
    let after = rest.dropFirst(command.utf8.count)
    return after.isEmpty || after.first == UInt8(ascii: " ")
}

/// A short reason for a failed connect ("Connection refused" rather than NIO's full error dump).
func describeConnectError(_ error: any Error) -> String {
    switch error {
    case let error as NIOConnectionError:
        if let first = error.connectionErrors.first {
            return describeConnectError(first.error)
        }
        if let dnsError = error.dnsAError ?? error.dnsAAAAError {
            return "cannot resolve \(error.host): \(dnsError)"
        }
        return "\(error)"
    case let error as IOError:
        return String(cString: strerror(error.errnoCode))
    case ChannelError.connectTimeout:
        return "timed out"
    default:
        return "\(error)"
    }
}
