import NIOCore

/// One IRC message (modern.ircdocs.horse, IRCv3 message-tags): `[@tags] [:source] COMMAND [params]`.
/// Pure value type: no channel, no hub (only NIO's ByteBuffer, to serialize into); the door and its
/// tests share it.
public struct IRCMessage: Equatable, Sendable, CustomStringConvertible {
    public struct Tag: Equatable, Sendable {
        public var key: String
        /// nil for a tag without a value (`key` and `key=` mean the same).
        public var value: String?
        public init(_ key: String, _ value: String? = nil) {
            self.key = key
            self.value = value
        }
    }

    public var tags: [Tag]
    public var source: String?
    /// Uppercased letters, or three digits for a numeric reply.
    public var command: String
    public var params: [String]

    public init(tags: [Tag] = [], source: String? = nil, _ command: String, _ params: [String] = []) {
        self.tags = tags
        self.source = source
        self.command = command
        self.params = params
    }

    public func tag(_ key: String) -> Tag? { tags.last { $0.key == key } }

    public var description: String { serialized() }

    // MARK: Parsing

    public enum ParseError: Error, Equatable, Sendable {
        case empty
        case missingCommand
        case invalidCommand(String)
    }

    /// Parses one line without its CRLF/LF. Extra spaces between parameters are tolerated. Works on
    /// bytes, not characters: IRC splits on the space byte even before a combining mark.
    public init(parsing line: Substring) throws(ParseError) {
        var line = line
        let parsed = line.withUTF8 { bytes in
            Result { () throws(ParseError) in try IRCMessage(parsing: UnsafeRawBufferPointer(bytes)) }
        }
        self = try parsed.get()
    }

    /// Parses one line's bytes. The separators are ASCII, so the line is split as bytes and only its
    /// parts become strings (invalid UTF-8 in them replaced): the door parses every received line, and
    /// a string of the whole line, then walked scalar by scalar, cost an allocation and a few percent
    /// of the rooms benchmark's loop.
    public init(parsing bytes: UnsafeRawBufferPointer) throws(ParseError) {
        let space = UInt8(ascii: " ")
        var index = 0
        func skipSpaces() {
            while index < bytes.count && bytes[index] == space { index += 1 }
        }
        func word() -> Range<Int> {
            let start = index
            while index < bytes.count && bytes[index] != space { index += 1 }
            return start..<index
        }
        func string(_ range: Range<Int>) -> String {
            String(decoding: UnsafeRawBufferPointer(rebasing: bytes[range]), as: UTF8.self)
        }
        skipSpaces()
        guard index < bytes.count else { throw .empty }
        var tags: [Tag] = []
        if bytes[index] == UInt8(ascii: "@") {
            index += 1
            tags = Self.parseTags(string(word()))
            skipSpaces()
        }
        var source: String?
        if index < bytes.count && bytes[index] == UInt8(ascii: ":") {
            index += 1
            source = string(word())
            skipSpaces()
        }
        let commandRange = word()
        guard !commandRange.isEmpty else { throw .missingCommand }
        // Checked, then upper-cased into a string made once (appending scalar by scalar cost more
        // than the rest of the parse).
        var lowerCase = false
        for byte in bytes[commandRange] {
            switch byte {
            case UInt8(ascii: "a")...UInt8(ascii: "z"): lowerCase = true
            case UInt8(ascii: "A")...UInt8(ascii: "Z"), UInt8(ascii: "0")...UInt8(ascii: "9"): break
            default: throw .invalidCommand(String(string(commandRange).prefix(32)))
            }
        }
        let command = lowerCase
            ? String(decoding: bytes[commandRange].lazy.map { $0 >= UInt8(ascii: "a") ? $0 - 32 : $0 }, as: UTF8.self)
            : string(commandRange)
        var params: [String] = []
        // Most commands carry up to four: one allocation instead of one per growth.
        params.reserveCapacity(4)
        while true {
            skipSpaces()
            if index == bytes.count { break }
            if bytes[index] == UInt8(ascii: ":") {
                params.append(string(index + 1..<bytes.count))
                break
            }
            params.append(string(word()))
        }
        self.init(tags: tags, source: source, command, params)
    }

    public init(parsing line: String) throws(ParseError) {
        try self.init(parsing: Substring(line))
    }

    static func parseTags(_ text: String) -> [Tag] {
        var tags: [Tag] = []
        for item in text.unicodeScalars.split(separator: ";", omittingEmptySubsequences: true) {
            let key: String
            let value: String
            if let equals = item.firstIndex(of: "=") {
                key = String(String.UnicodeScalarView(item[..<equals]))
                value = unescapeTagValue(String(String.UnicodeScalarView(item[item.index(after: equals)...])))
            } else {
                key = String(String.UnicodeScalarView(item))
                value = ""
            }
            guard !key.isEmpty else { continue }
            // A repeated key: the last one counts.
            tags.removeAll { $0.key == key }
            tags.append(Tag(key, value.isEmpty ? nil : value))
        }
        return tags
    }

    static func unescapeTagValue(_ text: String) -> String {
        guard text.unicodeScalars.contains("\\") else { return text }
        var result = String.UnicodeScalarView()
        var escaping = false
        for scalar in text.unicodeScalars {
            if escaping {
                switch scalar {
                case ":": result.append(";")
                case "s": result.append(" ")
                case "r": result.append("\r")
                case "n": result.append("\n")
                default: result.append(scalar)
                }
                escaping = false
            } else if scalar == "\\" {
                escaping = true
            } else {
                result.append(scalar)
            }
        }
        // A trailing lone backslash is dropped.
        return String(result)
    }

    static func escapeTagValue(_ text: String) -> String {
        var result = String.UnicodeScalarView()
        for scalar in text.unicodeScalars {
            switch scalar {
            case ";": result.append(contentsOf: "\\:".unicodeScalars)
            case " ": result.append(contentsOf: "\\s".unicodeScalars)
            case "\\": result.append(contentsOf: "\\\\".unicodeScalars)
            case "\r": result.append(contentsOf: "\\r".unicodeScalars)
            case "\n": result.append(contentsOf: "\\n".unicodeScalars)
            default: result.append(scalar)
            }
        }
        return String(result)
    }

    // MARK: Serializing

    /// The wire form without CRLF. The last parameter gets a ':' when it needs one (empty, has a
    /// space, or starts with ':'); earlier parameters must not need one.
    public func serialized() -> String {
        var buffer = ByteBuffer()
        write(to: &buffer)
        return String(buffer: buffer)
    }

    /// The line as it goes on the wire, with its CRLF, in a buffer of its own.
    public var wireLine: ByteBuffer {
        var buffer = ByteBuffer()
        writeLine(to: &buffer)
        return buffer
    }

    /// Appends the line with its CRLF to `buffer`.
    public func writeLine(to buffer: inout ByteBuffer) {
        write(to: &buffer)
        buffer.writeStaticString("\r\n")
    }

    /// Writes the line (without its CRLF) straight into `buffer`: rendering a message for a room is
    /// this once per format, so it makes no intermediate strings.
    public func write(to buffer: inout ByteBuffer) {
        Self.write(tags: tags, to: &buffer)
        if let source {
            buffer.writeInteger(UInt8(ascii: ":"))
            buffer.writeString(source)
            buffer.writeInteger(UInt8(ascii: " "))
        }
        buffer.writeString(command)
        for (index, param) in params.enumerated() {
            Self.write(param: param, last: index == params.count - 1, to: &buffer)
        }
    }

    /// `@key=value;key ` (nothing when there are no tags).
    static func write(tags: [Tag], to buffer: inout ByteBuffer) {
        guard !tags.isEmpty else { return }
        buffer.writeInteger(UInt8(ascii: "@"))
        for (index, tag) in tags.enumerated() {
            if index > 0 { buffer.writeInteger(UInt8(ascii: ";")) }
            buffer.writeString(tag.key)
            if let value = tag.value, !value.isEmpty {
                buffer.writeInteger(UInt8(ascii: "="))
                buffer.writeString(Self.escapeTagValue(value))
            }
        }
        buffer.writeInteger(UInt8(ascii: " "))
    }

    /// A CR, LF or NUL inside a parameter would end or corrupt the line for the reader: each is
    /// written as a space (all three are ASCII, so the bytes tell).
    static func breaksLine(_ byte: UInt8) -> Bool { byte == 0x0D || byte == 0x0A || byte == 0 }

    /// Whether a last parameter needs its ':': empty, starting with one, or holding a space or a byte
    /// that breaks the line (a space once written).
    static func lastParamNeedsColon(_ bytes: UnsafeBufferPointer<UInt8>) -> Bool {
        guard let first = bytes.first, first != UInt8(ascii: ":") else { return true }
        return bytes.contains { $0 == UInt8(ascii: " ") || breaksLine($0) }
    }

    /// A space and the parameter; the `last` one gets its ':' when it needs one.
    static func write(param: String, last: Bool, to buffer: inout ByteBuffer) {
        buffer.writeInteger(UInt8(ascii: " "))
        var param = param
        param.withUTF8 { bytes in
            if last && Self.lastParamNeedsColon(bytes) {
                buffer.writeInteger(UInt8(ascii: ":"))
            }
            if bytes.contains(where: Self.breaksLine) {
                buffer.writeBytes(bytes.map { Self.breaksLine($0) ? UInt8(ascii: " ") : $0 })
            } else {
                buffer.writeBytes(UnsafeRawBufferPointer(bytes))
            }
        }
    }

    /// Byte length of the part that the 512-byte limit applies to (everything but the tags), with CRLF.
    public var bodyLength: Int {
        var copy = self
        copy.tags = []
        return copy.serialized().utf8.count + 2
    }
}
