import ArgumentParser
import ParleyStore

/// `parley backup`: a consistent copy of the database, safe while the server runs.
struct Backup: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Copy the database (accounts and history) to a file, while the server runs or not.",
        discussion: """
            The copy is a consistent snapshot (SQLite's VACUUM INTO): every message committed before it \
            started, nothing half-written. To restore: stop the server, move the data directory's \
            parley.sqlite, parley.sqlite-wal and parley.sqlite-shm aside, copy the backup to \
            DIR/parley.sqlite, and start the server. See docs/operations.md.
            """)

    @Option(help: "The server's data directory.")
    var dataDir = "./parley-data"

    @Option(help: "The backup file to write; it must not exist yet.")
    var to: String

    func run() throws {
        do {
            let store = try SQLiteStore(directory: dataDir, create: false)
            defer { try? store.close(checkpoint: false) }
            try store.backup(to: to)
        } catch {
            printError("parley: \(error)")
            throw ExitCode.failure
        }
        emit("backup written to \(to)")
    }
}
