import Dispatch
import Foundation
import Synchronization
import Testing
@testable import ParleyStore

/// What the history writer reads to know whether an event loop still has work.
@Suite struct ThreadStatesTests {
    @Test func theStateIsTheLetterAfterTheLastParenthesis() {
        func state(_ line: String) -> Character? {
            Array(line.utf8).withUnsafeBytes { ThreadStates.state($0) }.map { Character(UnicodeScalar($0)) }
        }
        #expect(state("4711 (NIO-ELT-1-#1) R 1 4711 4711 0") == "R")
        #expect(state("4711 (a) b) (c) S 1 4711") == "S")
        #expect(state("4711 (cut") == nil)
        #expect(state("4711 (x)") == nil)
    }

    #if os(Linux)
    /// A thread blocked on a semaphore reads as asleep; the thread asking reads as running.
    @Test func aBlockedThreadIsAsleepAndTheAskingThreadRuns() async throws {
        let opened = DispatchSemaphore(value: 0)
        let release = DispatchSemaphore(value: 0)
        let file = Mutex<Int32?>(nil)
        let thread = Thread {
            file.withLock { $0 = ThreadStates.openCurrentThread() }
            opened.signal()
            release.wait()
        }
        thread.start()
        opened.wait()
        defer { release.signal() }
        let blocked = try #require(file.withLock { $0 })
        let states = ThreadStates(files: [blocked])
        // Bounded: the thread goes to sleep on the semaphore right after it signals.
        let deadline = ContinuousClock.now + .seconds(5)
        while states.anyRunning() && ContinuousClock.now < deadline { await Task.yield() }
        #expect(!states.anyRunning())
        let asking = try #require(ThreadStates.openCurrentThread())
        #expect(ThreadStates(files: [asking]).anyRunning())
        #expect(ThreadStates(files: []).anyRunning())
    }
    #endif
}
