import HummingbirdBcrypt
import NIOPosix
import ParleyCore

/// bcrypt on a thread pool of its own, so hashing never runs on an event loop. The C implementation
/// compares hashes in constant time.
public final class BcryptHasher: PasswordHasher {
    public let cost: UInt8
    private let pool: NIOThreadPool

    public init(cost: UInt8, pool: NIOThreadPool) {
        self.cost = cost
        self.pool = pool
    }

    public func hash(_ password: String) async throws -> String {
        let cost = self.cost
        return try await pool.runIfActive { Bcrypt.hash(Self.bcryptInput(password), cost: cost) }
    }

    public func verify(_ password: String, against hash: String) async throws -> Bool {
        try await pool.runIfActive { Bcrypt.verify(Self.bcryptInput(password), hash: hash) }
    }

    /// bcrypt reads at most 72 bytes: a longer password is first folded into its SHA-256 (hex, 64
    /// bytes), so every byte of it counts. Shorter passwords go to bcrypt unchanged.
    static func bcryptInput(_ password: String) -> String {
        let bytes = Array(password.utf8)
        return bytes.count > 72 ? SHA256.hex(bytes) : password
    }
}
