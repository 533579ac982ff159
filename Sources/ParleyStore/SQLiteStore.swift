import Foundation
import GRDB
import ParleyCore
import Synchronization

public enum StoreError: Error, CustomStringConvertible {
    case cannotOpen(path: String, reason: String)
    case backupFailed(path: String, reason: String)

    public var description: String {
        switch self {
        case .cannotOpen(let path, let reason):
            return "Cannot open the database \(path): \(reason)."
        case .backupFailed(let path, let reason):
            return "Cannot write the backup \(path): \(reason)."
        }
    }
}

/// Accounts and message history in one SQLite file in WAL mode. GRDB runs every access on its own
/// threads, and history is written by `SQLiteMessageLog`'s single writer thread, so no event loop ever
/// waits for the disk.
public final class SQLiteStore: AccountStore, Sendable {
    public let path: String
    let pool: DatabasePool
    /// Stamped into every Parley database ("PRLY"), so a database of another program is refused
    /// rather than written into.
    static let applicationID: Int32 = 0x5052_4C59
    /// Every account's name key, kept beside the table (this process is the database's only writer):
    /// each IRC guest asks whether its nick is an account, and with 5,000 clients registering at once
    /// those reads were a quarter of the server's CPU.
    private let nameKeys: Mutex<Set<String>>

    /// Opens (creating if needed, unless `create` is false) `DIR/parley.sqlite`, checks that it is an
    /// undamaged Parley database and brings its schema up to date.
    public init(directory: String, create: Bool = true) throws {
        let path = (directory as NSString).appendingPathComponent("parley.sqlite")
        self.path = path
        if !create && !FileManager.default.fileExists(atPath: path) {
            throw StoreError.cannotOpen(path: path, reason: "there is no database there; check --data-dir")
        }
        do {
            try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
            var configuration = Configuration()
            configuration.busyMode = .timeout(5)
            // SQLite checkpoints the WAL inside the commit that takes it past 1,000 pages: with no other
            // writer at that moment it copies all of it, so the WAL starts over (measured: cheaper than
            // a checkpoint thread of our own, whose checkpoints run against a stream of commits). A WAL
            // that was reset is cut back to this size, so it does not keep the disk of a burst.
            configuration.prepareDatabase { db in try db.execute(sql: "PRAGMA journal_size_limit = 67108864") }
            let pool = try DatabasePool(path: path, configuration: configuration)
            try pool.writeWithoutTransaction { db in try Self.check(db, path: path) }
            try Self.migrator.migrate(pool)
            self.pool = pool
            nameKeys = Mutex(try pool.read { db in try Set(String.fetchCursor(db, sql: "SELECT nameKey FROM account")) })
        } catch let error as StoreError {
            throw error
        } catch let error as DatabaseError {
            let what = error.message ?? "\(error.resultCode)"
            switch error.resultCode {
            case .SQLITE_CORRUPT: throw StoreError.cannotOpen(path: path, reason: "the file is damaged (\(what)). " + Self.damagedAdvice)
            case .SQLITE_NOTADB: throw StoreError.cannotOpen(path: path, reason: "it is not a database (\(what)). Point --data-dir at a Parley data directory")
            default: throw StoreError.cannotOpen(path: path, reason: "\(what). Check that it is a Parley database and that the directory is writable")
            }
        } catch {
            throw StoreError.cannotOpen(path: path, reason: "\(error)")
        }
    }

    static let damagedAdvice = "Restore it from a backup (see docs/operations.md) or move it aside to start with an empty database"

    /// Refuses a damaged file or another program's database, naming what is wrong.
    static func check(_ db: Database, path: String) throws {
        let result = try String.fetchAll(db, sql: "PRAGMA quick_check")
        guard result == ["ok"] else {
            throw StoreError.cannotOpen(path: path, reason: "the file is damaged (SQLite integrity check: \(result.prefix(3).joined(separator: "; "))). " + damagedAdvice)
        }
        let tables = try String.fetchAll(db, sql: "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'")
        let id = try Int32.fetchOne(db, sql: "PRAGMA application_id") ?? 0
        if tables.isEmpty || id == applicationID {
            if id != applicationID { try db.execute(sql: "PRAGMA application_id = \(applicationID)") }
            return
        }
        // Parley databases from before the stamp have exactly these tables.
        if id == 0, Set(tables).isSubset(of: ["grdb_migrations", "account"]), tables.contains("account") {
            try db.execute(sql: "PRAGMA application_id = \(applicationID)")
            return
        }
        throw StoreError.cannotOpen(path: path, reason: "it is not a Parley database (it holds other tables: \(tables.prefix(5).joined(separator: ", "))). Point --data-dir at a directory of its own")
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
        migrator.registerMigration("v2-history") { db in
            // One row per message; `id` is the message's serial (its msgid), `time` milliseconds since
            // 1970. `target` is a room key (`#room`) or a conversation key (`@a b`). One index serves
            // every history read: a target's messages in (time, id) order.
            try db.execute(sql: """
                CREATE TABLE message (
                    id INTEGER PRIMARY KEY,
                    target TEXT NOT NULL,
                    time INTEGER NOT NULL,
                    kind INTEGER NOT NULL,
                    sender TEXT NOT NULL,
                    senderUser TEXT NOT NULL,
                    senderHost TEXT NOT NULL,
                    senderAccount TEXT,
                    recipient TEXT NOT NULL,
                    text TEXT NOT NULL,
                    tags TEXT,
                    pendingFor TEXT
                );
                CREATE INDEX message_by_target ON message(target, time);
                CREATE INDEX message_pending ON message(pendingFor) WHERE pendingFor IS NOT NULL;
                """)
        }
        migrator.registerMigration("v3-room-chunks") { db in
            // Room messages move to chunks (see `RoomChunks`); direct messages stay a row each, where
            // pending marks and claims update them.
            try db.execute(sql: RoomChunks.schema)
            let rows = try Row.fetchCursor(db, sql: "SELECT * FROM message WHERE target NOT LIKE '@%' ORDER BY target, time, id")
            var target = ""
            var messages: [RoomMessage] = []
            while let row = try rows.next() {
                let rowTarget: String = row["target"]
                if rowTarget != target {
                    try RoomChunks.insert(target: target, messages, db)
                    (target, messages) = (rowTarget, [])
                }
                if case .room(let message)? = SQLiteMessageLog.message(row) { messages.append(message) }
            }
            try RoomChunks.insert(target: target, messages, db)
            try db.execute(sql: "DELETE FROM message WHERE target NOT LIKE '@%'")
        }
        return migrator
    }

    public func createAccount(_ record: AccountRecord) async throws -> Bool {
        let key = NameRules.key(record.name)
        let created = try await pool.write { db in
            try db.execute(
                sql: "INSERT INTO account (nameKey, name, passwordHash, createdAt) VALUES (?, ?, ?, ?) ON CONFLICT(nameKey) DO NOTHING",
                arguments: [key, record.name, record.passwordHash, record.createdAt])
            return db.changesCount == 1
        }
        if created { nameKeys.withLock { _ = $0.insert(key) } }
        return created
    }

    public func accountExists(named name: String) async throws -> Bool {
        knowsAccount(named: name)
    }

    public func accountExistsAtOnce(named name: String) -> Bool? {
        knowsAccount(named: name)
    }

    private func knowsAccount(named name: String) -> Bool {
        let key = NameRules.key(name)
        return nameKeys.withLock { $0.contains(key) }
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

    /// Writes a consistent copy of the database to `file` (SQLite's `VACUUM INTO`), even while a server
    /// is writing to it. The copy is a complete database: to restore, put it in place of `parley.sqlite`.
    public func backup(to file: String) throws {
        guard !FileManager.default.fileExists(atPath: file) else {
            throw StoreError.backupFailed(path: file, reason: "the file already exists; choose a new name or remove it")
        }
        do {
            // Outside a transaction (VACUUM refuses one); it reads a consistent snapshot by itself.
            try pool.unsafeRead { db in try db.execute(sql: "VACUUM INTO ?", arguments: [file]) }
        } catch let error as DatabaseError {
            throw StoreError.backupFailed(path: file, reason: error.message ?? "\(error.resultCode)")
        }
    }

    private let closed = Atomic<Bool>(false)

    /// Checkpoints the WAL (unless another process, a running server, owns the file) and closes the
    /// file; the store is unusable afterwards. Safe to call more than once.
    public func close(checkpoint: Bool = true) throws {
        guard !closed.exchange(true, ordering: .relaxed) else { return }
        if checkpoint { try pool.writeWithoutTransaction { db in _ = try db.checkpoint(.truncate) } }
        try pool.close()
    }
}

