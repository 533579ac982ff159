/// Everything a hub operation can refuse, with a sentence a user can act on.
/// Doors map each case to their own error form (a line-protocol code word, an IRC numeric).
public enum HubError: Error, Equatable, Sendable {
    case badName(String)
    case badRoom(String)
    case badPassword(String)
    case nameTaken(String)
    case loginFailed
    case alreadyLoggedIn(String)
    case notLoggedIn
    case loginRequired
    case notInRoom(String)
    case noSuchRoom(String)
    case noSuchUser(String)
    case emptyMessage
    case noCurrentRoom
    case shuttingDown
    case storeFailed(String)
    case needsOperator(String)
    case banned(String)
    case inviteOnly(String)
    case badKey(String)
    case roomFull(String)
    case moderated(String)
    case userNotInRoom(name: String, room: String)
    case alreadyInRoom(name: String, room: String)
    case tooManyAttempts
    case historyUnavailable
    case historyNeedsLogin

    public var message: String {
        switch self {
        case .badName(let why), .badRoom(let why), .badPassword(let why): return why
        case .nameTaken(let name): return "The name \(name) is already taken; choose another."
        case .loginFailed: return "Unknown account or wrong password. Check both, or /register a new account."
        case .alreadyLoggedIn(let name): return "You are already logged in as \(name); /logout first."
        case .notLoggedIn: return "You are not logged in."
        case .loginRequired: return "This server requires an account to chat: /register NAME PASSWORD or /login NAME PASSWORD."
        case .notInRoom(let room): return "You are not in \(room). Type /join \(room) to join it."
        case .noSuchRoom(let room): return "There is no room called \(room). Type /rooms to see the rooms."
        case .noSuchUser(let name): return "Nobody called \(name) is online. Type /list to see who is."
        case .emptyMessage: return "The message is empty."
        case .noCurrentRoom: return "You are not in a room. Type /join #room to join one."
        case .shuttingDown: return "The server is shutting down."
        case .storeFailed(let what): return "The server could not \(what) (database error); try again later."
        case .needsOperator(let room): return "You are not an operator of \(room)."
        case .banned(let room): return "You are banned from \(room)."
        case .inviteOnly(let room): return "\(room) is invite-only; ask a member to invite you."
        case .badKey(let room): return "\(room) needs the right key to join."
        case .roomFull(let room): return "\(room) is full."
        case .moderated(let room): return "\(room) is moderated: only operators and voiced users may speak."
        case .userNotInRoom(let name, let room): return "\(name) is not in \(room)."
        case .alreadyInRoom(let name, let room): return "\(name) is already in \(room)."
        case .tooManyAttempts: return "Too many failed logins for this account or from your address; wait a few seconds and try again."
        case .historyUnavailable: return "This server keeps no history (it runs with --history off)."
        case .historyNeedsLogin: return "Only logged-in users have a direct-message history; /login first."
        }
    }
}
