import Testing
@testable import ParleyCore

@Suite struct RulesTests {
    @Test(arguments: ["al", "alice", "Bob_2", "x-y", "abcdefghijklmnopqrst"])
    func validNames(_ name: String) {
        #expect(NameRules.validateName(name) == nil)
    }

    @Test func eachBrokenNameRuleHasItsOwnReason() {
        func reason(_ name: String) -> String {
            guard case .badName(let why)? = NameRules.validateName(name) else { return "" }
            return why
        }
        #expect(reason("a").contains("2 to 20 characters"))
        #expect(reason(String(repeating: "a", count: 21)).contains("2 to 20 characters"))
        #expect(reason("1abc").contains("start with a letter"))
        #expect(reason("al ice").contains("only letters, digits"))
        #expect(reason("élan").contains("start with a letter"))
        #expect(reason("guest-7").contains("kept for guests"))
        #expect(NameRules.validateName("guest-7", forGuest: true) == nil)
    }

    @Test func roomRules() {
        #expect(NameRules.validateRoom("#lobby") == nil)
        #expect(NameRules.validateRoom("lobby") != nil)
        #expect(NameRules.validateRoom("#") != nil)
        #expect(NameRules.validateRoom("#a b") != nil)
        #expect(NameRules.validateRoom("#" + String(repeating: "r", count: 33)) != nil)
    }

    @Test func passwordRules() {
        #expect(NameRules.validatePassword("12345678") == nil)
        #expect(NameRules.validatePassword("1234567") == .badPassword("A password must be at least 8 characters long."))
        #expect(NameRules.validatePassword(String(repeating: "p", count: 300)) == nil)
        #expect(NameRules.validatePassword(String(repeating: "p", count: 1025)) == .badPassword("A password may be at most 1024 bytes long."))
    }

    @Test func namesCompareCaseInsensitively() {
        #expect(NameRules.key("AliCE") == "alice")
        #expect(NameRules.key("#Dev") == "#dev")
    }

    @Test func controlCharactersAreRemovedFromText() {
        #expect(NameRules.cleanText("a\rb\u{7}c\td") == "abc\td")
        #expect(NameRules.cleanText(" \r ") == nil)
    }
}

@Suite struct LoginThrottleTests {
    @Test func firstFailuresAreFreeThenDelaysDoubleUpToTheCap() {
        let throttle = LoginThrottle(freeFailures: 3, baseDelay: .milliseconds(500), maxDelay: .seconds(2))
        let now = ContinuousClock.now
        let keys = ["account:alice"]
        #expect(throttle.admit(keys: keys, now: now) == .zero)
        for _ in 0..<3 { throttle.recordFailure(keys: keys, now: now) }
        // The 4th attempt waits half a second; one made in parallel queues behind it.
        #expect(throttle.admit(keys: keys, now: now) == .milliseconds(500))
        #expect(throttle.admit(keys: keys, now: now) == .seconds(1))
        #expect(throttle.delay(afterFailures: 4) == .seconds(1))
        #expect(throttle.delay(afterFailures: 10) == .seconds(2))
        throttle.recordSuccess(keys: keys)
        #expect(throttle.failures(for: "account:alice") == 0)
        #expect(throttle.admit(keys: keys, now: now) == .zero)
    }

    @Test func attemptsQueuedBeyondTheMaximumDelayAreRefused() {
        let throttle = LoginThrottle(freeFailures: 1, baseDelay: .seconds(1), maxDelay: .seconds(2))
        let now = ContinuousClock.now
        throttle.recordFailure(keys: ["account:x"], now: now)
        #expect(throttle.admit(keys: ["account:x"], now: now) == .seconds(1))
        #expect(throttle.admit(keys: ["account:x"], now: now) == .seconds(2))
        #expect(throttle.admit(keys: ["account:x"], now: now) == nil)
        #expect(throttle.admit(keys: ["account:y"], now: now) == .zero)
    }

    @Test func addressAndAccountAreCountedSeparately() {
        let throttle = LoginThrottle(freeFailures: 1)
        throttle.recordFailure(keys: ["account:a", "address:1.2.3.4"])
        throttle.recordFailure(keys: ["account:b", "address:1.2.3.4"])
        #expect(throttle.failures(for: "address:1.2.3.4") == 2)
        #expect(throttle.failures(for: "account:a") == 1)
    }
}
