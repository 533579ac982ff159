/// A listener given as a URI, `SCHEME://HOST:PORT`, for example `line://127.0.0.1:5555`, `udp://127.0.0.1:5555`
/// or `line://[::1]:0`.
public struct ListenAddress: Sendable, Equatable, CustomStringConvertible {
    public enum Scheme: String, Sendable, CaseIterable {
        case line
        case irc
        /// The line protocol over reliable datagrams (docs/udp.md).
        case udp
    }

    public let scheme: Scheme
    /// The host without brackets: `127.0.0.1`, `::1`, `0.0.0.0`.
    public let host: String
    public let port: Int

    public static let defaultLine = ListenAddress(scheme: .line, host: "127.0.0.1", port: 5555)
    public static let defaultIRC = ListenAddress(scheme: .irc, host: "127.0.0.1", port: 6667)
    public static let defaultUDP = ListenAddress(scheme: .udp, host: "127.0.0.1", port: 5555)
    public static let defaults = [defaultLine, defaultIRC, defaultUDP]

    public init(scheme: Scheme, host: String, port: Int) {
        self.scheme = scheme
        self.host = host
        self.port = port
    }

    public enum ParseError: Error, CustomStringConvertible, Equatable {
        case invalid(String, why: String)
        public var description: String {
            switch self {
            case .invalid(let text, let why):
                return "Invalid listener \"\(text)\": \(why). Use SCHEME://HOST:PORT, for example line://127.0.0.1:5555 or line://[::1]:0."
            }
        }
    }

    public init(parsing text: String) throws(ParseError) {
        guard let separator = text.range(of: "://") else { throw .invalid(text, why: "no scheme") }
        let schemeText = String(text[..<separator.lowerBound]).lowercased()
        guard let scheme = Scheme(rawValue: schemeText) else {
            let known = Scheme.allCases.map(\.rawValue).joined(separator: ", ")
            throw .invalid(text, why: "unknown scheme \"\(schemeText)\" (this server offers: \(known))")
        }
        let rest = text[separator.upperBound...]
        let hostPart: Substring
        let portPart: Substring
        if rest.hasPrefix("[") {
            guard let close = rest.firstIndex(of: "]") else { throw .invalid(text, why: "missing ']' after an IPv6 address") }
            hostPart = rest[rest.index(after: rest.startIndex)..<close]
            let afterHost = rest[rest.index(after: close)...]
            guard afterHost.hasPrefix(":") else { throw .invalid(text, why: "missing port") }
            portPart = afterHost.dropFirst()
        } else {
            guard let colon = rest.lastIndex(of: ":") else { throw .invalid(text, why: "missing port") }
            hostPart = rest[..<colon]
            portPart = rest[rest.index(after: colon)...]
            if hostPart.contains(":") { throw .invalid(text, why: "an IPv6 address must be in brackets") }
        }
        guard !hostPart.isEmpty else { throw .invalid(text, why: "missing host") }
        guard let port = Int(portPart), (0...65535).contains(port) else {
            throw .invalid(text, why: "the port must be a number from 0 to 65535")
        }
        self.init(scheme: scheme, host: String(hostPart), port: port)
    }

    public var description: String { "\(scheme.rawValue)://\(host.contains(":") ? "[\(host)]" : host):\(port)" }
}
