import Foundation
import GRDB
import ParleyCore

public enum StoreError: Error, CustomStringConvertible {
    case cannotOpen(path: String, reason: String)

    public var description: String {
        switch self {
        case .cannotOpen(let path, let reason):
            return "Cannot open the database \(path): \(reason). Check that it is a Parley database and that the directory is writable."
        }
    }
}

/// Accounts (and, later, history) in one SQLite file in WAL mode. GRDB runs every access on its own
/// threads, so no event loop ever waits for the disk.
public final class SQLiteStore: AccountStore, Sendable {
    public let path: String
    private let pool: DatabasePool

    /// Opens (creating if needed) `DIR/parley.sqlite` and brings its schema up to date.
    public init(directory: String) throws {
        let path = (directory as NSString).appendingPathComponent("parley.sqlite")
        self.path = path
        do {
            try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
            var configuration = Configuration()
            configuration.busyMode = .timeout(5)
            pool = try DatabasePool(path: path, configuration: configuration)
            try Self.migrator.migrate(pool)
        } catch let error as DatabaseError {
            throw StoreError.cannotOpen(path: path, reason: error.message ?? "\(error.resultCode)")
        } catch {
            throw StoreError.cannotOpen(path: path, reason: "\(error)")
        }
    }

    static var migrator: DatabaseMigrator {
        var migrator = DatabaseMigrator()
        migrator.registerMigration("v1-accounts") { db in
            try db.create(table: "account") { table in
                // The lowercased name: names are unique case-insensitively.
                table.primaryKey("nameKey", .text)
                table.column("name", .text).notNull()
                table.column("passwordHash", .text).notNull()
                table.column("createdAt", .datetime).notNull()
            }
        }
        return migrator
    }

    public func createAccount(_ record: AccountRecord) async throws -> Bool {
        try await pool.write { db in
            try db.execute(
                sql: "INSERT INTO account (nameKey, name, passwordHash, createdAt) VALUES (?, ?, ?, ?) ON CONFLICT(nameKey) DO NOTHING",
                arguments: [NameRules.key(record.name), record.name, record.passwordHash, record.createdAt])
            return db.changesCount == 1
        }
    }

    public func account(named name: String) async throws -> AccountRecord? {
        try await pool.read { db in
            guard let row = try Row.fetchOne(
                db, sql: "SELECT name, passwordHash, createdAt FROM account WHERE nameKey = ?",
                arguments: [NameRules.key(name)])
            else { return nil }
            return AccountRecord(name: row["name"], passwordHash: row["passwordHash"], createdAt: row["createdAt"])
        }
    }

    /// Checkpoints the WAL and closes the file; the store is unusable afterwards.
    public func close() throws {
        try pool.writeWithoutTransaction { db in _ = try db.checkpoint(.truncate) }
        try pool.close()
    }
}
