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
        return try await pool.runIfActive { Bcrypt.hash(password, cost: cost) }
    }

    public func verify(_ password: String, against hash: String) async throws -> Bool {
        try await pool.runIfActive { Bcrypt.verify(password, hash: hash) }
    }
}
