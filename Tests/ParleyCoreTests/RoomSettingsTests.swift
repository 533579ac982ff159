import Testing
@testable import ParleyCore

@Suite struct RoomSettingsTests {
    let bob = Speaker(name: "Bob", user: "b", host: "10.1.2.3", account: nil)

    @Test(arguments: [("*!*@*", true), ("bob!*@*", true), ("b?b!b@10.1.2.*", true), ("*!*@10.9.*", false), ("alice!*@*", false), ("*", true), ("bo", false)])
    func banMasksMatchCaseInsensitively(_ mask: String, _ matches: Bool) {
        #expect(RoomSettings.matches(mask: mask, bob) == matches)
    }

    @Test func modeChangesAreDescribedAsIRCShowsThem() {
        let changes: [ModeChange] = [.init(true, .op, "a"), .init(true, .voice, "b"), .init(false, .moderated), .init(true, .limit, "5")]
        #expect(ModeChange.describe(changes) == ("+ov-m+l", ["a", "b", "5"]))
    }

    @Test func summaryShowsKeyAndLimit() {
        var settings = RoomSettings()
        settings.key = "k1"
        settings.limit = 9
        settings.moderated = true
        #expect(settings.modeSummary == ("+mntkl", ["k1", "9"]))
    }
}
