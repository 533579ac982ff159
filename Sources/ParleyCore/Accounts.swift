import Foundation
import Synchronization

public struct AccountRecord: Sendable, Equatable {
    public let name: String
    public let passwordHash: String
    public let createdAt: Date

    public init(name: String, passwordHash: String, createdAt: Date) {
        self.name = name
        self.passwordHash = passwordHash
        self.createdAt = createdAt
    }
}

/// Where accounts live. The hub only sees this protocol; SQLite is one implementation.
public protocol AccountStore: Sendable {
    /// Creates the account; returns false when the name (case-insensitively) is taken.
    func createAccount(_ record: AccountRecord) async throws -> Bool
    func account(named name: String) async throws -> AccountRecord?
    /// Whether an account has this name (case-insensitively).
    func accountExists(named name: String) async throws -> Bool
    /// The same answer when the store can give it without waiting (an index it keeps in memory), so
    /// a caller on an event loop need not leave it; nil when only `accountExists` can tell.
    func accountExistsAtOnce(named name: String) -> Bool?
}

extension AccountStore {
    public func accountExistsAtOnce(named name: String) -> Bool? { nil }

    public func accountExists(named name: String) async throws -> Bool {
        try await account(named: name) != nil
    }
}

/// A slow salted password hash. Implementations run off the event loops (a thread pool).
public protocol PasswordHasher: Sendable {
    func hash(_ password: String) async throws -> String
    /// Compares in constant time.
    func verify(_ password: String, against hash: String) async throws -> Bool
}

/// Slows down repeated failed logins per account and per address. After `freeFailures` failures in a
/// row, each further attempt is admitted only after a delay that doubles up to `maxDelay`; attempts
/// in parallel queue behind each other, so opening more connections does not make guessing faster.
public final class LoginThrottle: Sendable {
    public let freeFailures: Int
    public let baseDelay: Duration
    public let maxDelay: Duration
    private let maxEntries = 10_000

    struct Entry {
        var failures: Int
        var nextSlot: ContinuousClock.Instant
    }
    private let entries = Mutex<[String: Entry]>([:])

    public init(freeFailures: Int = 3, baseDelay: Duration = .milliseconds(500), maxDelay: Duration = .seconds(8)) {
        self.freeFailures = freeFailures
        self.baseDelay = baseDelay
        self.maxDelay = maxDelay
    }

    /// How long this attempt must wait before it is checked, or nil when the queue of attempts is
    /// already longer than `maxDelay` (then it is refused unchecked). Each admitted attempt takes the
    /// next slot, so attempts made in parallel wait one after another.
    public func admit(keys: [String], now: ContinuousClock.Instant = .now) -> Duration? {
        entries.withLock { entries in
            var wait = Duration.zero
            for key in keys {
                guard let entry = entries[key], entry.failures >= freeFailures else { continue }
                wait = max(wait, max(entry.nextSlot, now) - now)
            }
            guard wait <= maxDelay else { return nil }
            for key in keys {
                guard var entry = entries[key], entry.failures >= freeFailures else { continue }
                entry.nextSlot = max(entry.nextSlot, now) + delay(afterFailures: entry.failures)
                entries[key] = entry
            }
            return wait
        }
    }

    /// A failed attempt: from the `freeFailures`-th on, the next attempt waits `delay` from now.
    public func recordFailure(keys: [String], now: ContinuousClock.Instant = .now) {
        entries.withLock { entries in
            if entries.count >= maxEntries {
                // Bounded memory: forget entries whose slot has passed, or everything if none has.
                entries = entries.filter { $0.value.nextSlot > now }
                if entries.count >= maxEntries { entries.removeAll() }
            }
            for key in keys {
                var entry = entries[key] ?? Entry(failures: 0, nextSlot: now)
                entry.failures += 1
                if entry.failures >= freeFailures {
                    entry.nextSlot = max(entry.nextSlot, now + delay(afterFailures: entry.failures))
                }
                entries[key] = entry
            }
        }
    }

    public func recordSuccess(keys: [String]) {
        entries.withLock { entries in
            for key in keys { entries[key] = nil }
        }
    }

    public func failures(for key: String) -> Int {
        entries.withLock { $0[key]?.failures ?? 0 }
    }

    func delay(afterFailures failures: Int) -> Duration {
        let doublings = min(failures - freeFailures, 16)
        let delay = baseDelay * (1 << doublings)
        return min(delay, maxDelay)
    }
}
