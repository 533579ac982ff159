/// The rules for names, rooms, passwords and message text, shared by every door.
/// Each violation has its own reason, so a user is told exactly which rule was broken.
public enum NameRules {
    public static let nameLength = 2...20
    public static let roomLength = 1...32
    /// Longer than bcrypt's 72 bytes is fine: the hasher folds long passwords into a SHA-256 first.
    public static let passwordBytes = 8...1024
    public static let guestPrefix = "guest"
    /// Names of the server's own services.
    public static let reservedNames: Set<String> = ["nickserv", "chanserv", "server", "services", "operserv"]

    /// Lowercased ASCII: names and rooms compare case-insensitively (CASEMAPPING=ascii).
    public static func key(_ name: String) -> String {
        // Most names are already lower case: those need no new string (this runs for every message).
        var name = name
        // Over contiguous bytes: the generic `utf8.contains(where:)` was the bigger part of this.
        let hasUpperCase = name.withUTF8 { bytes in bytes.contains { $0 >= 65 && $0 <= 90 } }
        guard hasUpperCase else { return name }
        return String(decoding: name.utf8.map { ($0 >= 65 && $0 <= 90) ? $0 + 32 : $0 }, as: UTF8.self)
    }

    /// Checks an account or nick name; `forGuest` allows the reserved `guest` prefix.
    public static func validateName(_ name: String, forGuest: Bool = false) -> HubError? {
        let scalars = Array(name.unicodeScalars)
        guard nameLength.contains(scalars.count) else {
            return .badName("A name must be \(nameLength.lowerBound) to \(nameLength.upperBound) characters long; \"\(name.prefix(40))\" has \(scalars.count).")
        }
        guard let first = scalars.first, isASCIILetter(first) else {
            return .badName("A name must start with a letter (a-z, A-Z).")
        }
        if let bad = scalars.first(where: { !(isASCIILetter($0) || isDigit($0) || $0 == "_" || $0 == "-") }) {
            return .badName("A name may contain only letters, digits, '_' and '-'; \"\(bad.escaped(asASCII: true))\" is not allowed.")
        }
        if !forGuest && key(name).hasPrefix(guestPrefix) {
            return .badName("Names starting with \"guest\" are kept for guests; choose another name.")
        }
        if reservedNames.contains(key(name)) {
            return .badName("\(name) is the name of a service; choose another name.")
        }
        return nil
    }

    public static func validateRoom(_ room: String) -> HubError? {
        let scalars = Array(room.unicodeScalars)
        guard scalars.first == "#" else {
            return .badRoom("A room name starts with '#', for example #lobby.")
        }
        let body = scalars.dropFirst()
        guard roomLength.contains(body.count) else {
            return .badRoom("A room name has 1 to \(roomLength.upperBound) characters after the '#'.")
        }
        guard body.allSatisfy({ isASCIILetter($0) || isDigit($0) || $0 == "_" || $0 == "-" }) else {
            return .badRoom("A room name may contain only letters, digits, '_' and '-' after the '#'.")
        }
        return nil
    }

    /// `minimumLength` is the server's policy (8 by default, `--min-password-length`).
    public static func validatePassword(_ password: String, minimumLength: Int = passwordBytes.lowerBound) -> HubError? {
        let count = password.utf8.count
        if count < minimumLength {
            return .badPassword("A password must be at least \(minimumLength) characters long.")
        }
        if count > passwordBytes.upperBound {
            return .badPassword("A password may be at most \(passwordBytes.upperBound) bytes long.")
        }
        return nil
    }

    /// Message text with control characters (other than tab) removed, so no door can be
    /// tricked into splitting a line; nil when nothing printable is left.
    public static func cleanText(_ text: String) -> String? {
        // Control characters are all ASCII, so one pass over the bytes finds them. Most messages have
        // none and a visible ASCII character: those are returned as they are, with no new string.
        var text = text
        var hasControl = false
        var hasVisibleASCII = false
        text.withUTF8 { bytes in
            for byte in bytes {
                if (byte < 0x20 && byte != 0x09) || byte == 0x7F {
                    hasControl = true
                    break
                }
                if byte > 0x20 && byte < 0x7F { hasVisibleASCII = true }
            }
        }
        if !hasControl && hasVisibleASCII { return text }
        let cleaned = hasControl ? String(String.UnicodeScalarView(text.unicodeScalars.filter {
            $0 == "\t" || !($0.value < 0x20 || $0.value == 0x7F)
        })) : text
        return cleaned.allSatisfy({ $0.isWhitespace }) ? nil : cleaned
    }

    private static func isASCIILetter(_ s: Unicode.Scalar) -> Bool { (s >= "a" && s <= "z") || (s >= "A" && s <= "Z") }
    private static func isDigit(_ s: Unicode.Scalar) -> Bool { s >= "0" && s <= "9" }
}
