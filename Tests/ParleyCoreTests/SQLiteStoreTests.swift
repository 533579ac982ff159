import Foundation
import Testing
import ParleyCore
@testable import ParleyStore

@Suite struct SQLiteStoreTests {
    @Test func accountsSurviveReopeningAndNamesAreCaseInsensitive() async throws {
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("parley-store-\(UUID())").path
        defer { try? FileManager.default.removeItem(atPath: directory) }
        do {
            let store = try SQLiteStore(directory: directory)
            #expect(try await store.createAccount(AccountRecord(name: "Alice", passwordHash: "h", createdAt: Date())))
            #expect(try await store.createAccount(AccountRecord(name: "alice", passwordHash: "h2", createdAt: Date())) == false)
            // Names known without a read: the one just made, in any case.
            #expect(try await store.accountExists(named: "ALICE"))
            #expect(try await store.accountExists(named: "bob") == false)
            // And at once, through the protocol the hub sees, so a registering guest stays on its loop.
            let accounts: any AccountStore = store
            #expect(accounts.accountExistsAtOnce(named: "ALICE") == true)
            #expect(accounts.accountExistsAtOnce(named: "bob") == false)
            try store.close()
        }
        let reopened = try SQLiteStore(directory: directory)
        let record = try await reopened.account(named: "ALICE")
        #expect(record?.name == "Alice")
        #expect(record?.passwordHash == "h")
        #expect(try await reopened.account(named: "bob") == nil)
        // Loaded from the table when the store opens.
        #expect(try await reopened.accountExists(named: "alice"))
        #expect(try await reopened.accountExists(named: "bob") == false)
        try reopened.close()
    }

    @Test func aFileThatIsNotADatabaseGivesAClearError() throws {
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("parley-store-\(UUID())").path
        defer { try? FileManager.default.removeItem(atPath: directory) }
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        try Data(repeating: 0x42, count: 4096).write(to: URL(fileURLWithPath: directory + "/parley.sqlite"))
        #expect {
            _ = try SQLiteStore(directory: directory)
        } throws: { error in
            "\(error)".contains("parley.sqlite") && "\(error)".contains("Cannot open the database")
        }
    }
}
