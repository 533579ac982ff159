/// Size rules of IRC lines (modern.ircdocs.horse, IRCv3 message-tags).
public enum IRCLimits {
    /// The message without tags, CRLF included.
    public static let bodyBytes = 512
    /// Tags a client may send, the leading '@' and the trailing space included.
    public static let clientTagBytes = 4096
    /// The longest line the framer accepts before it answers 417: all tags a server may send plus a body.
    public static let maxLineBytes = 8191 + bodyBytes

    public enum Violation: Equatable, Sendable {
        case bodyTooLong
        case tagsTooLong
    }

    /// Checks a received line's bytes (without its line ending) against the limits.
    public static func check<Bytes: Collection<UInt8>>(_ line: Bytes) -> Violation? {
        var body = line[...]
        if body.first == UInt8(ascii: "@") {
            let end = body.firstIndex(of: UInt8(ascii: " ")) ?? body.endIndex
            let tagBytes = body.distance(from: body.startIndex, to: end) + 1
            if tagBytes > clientTagBytes { return .tagsTooLong }
            body = body[end...].drop { $0 == UInt8(ascii: " ") }
        }
        return body.count + 2 > bodyBytes ? .bodyTooLong : nil
    }

    /// Splits `items` into groups whose joined length (with `separator`) stays within `budget` bytes,
    /// so a long reply (NAMES, ISUPPORT) is sent as several lines instead of one over-long one.
    public static func chunks(_ items: [String], budget: Int, separator: String = " ", maxItems: Int = .max) -> [[String]] {
        var result: [[String]] = []
        var current: [String] = []
        var length = 0
        for item in items {
            let added = item.utf8.count + (current.isEmpty ? 0 : separator.utf8.count)
            if !current.isEmpty && (length + added > budget || current.count >= maxItems) {
                result.append(current)
                current = []
                length = 0
            }
            length += item.utf8.count + (current.isEmpty ? 0 : separator.utf8.count)
            current.append(item)
        }
        if !current.isEmpty { result.append(current) }
        return result
    }
}
