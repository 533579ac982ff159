import Testing
@testable import ParleyIRC

@Suite struct IRCLimitsTests {
    @Test func bodyOf510BytesPlusCRLFFits() {
        let body = "PRIVMSG #a :" + String(repeating: "x", count: 510 - 12)
        #expect(body.utf8.count == 510)
        #expect(IRCLimits.check(body.utf8) == nil)
        #expect(IRCLimits.check((body + "x").utf8) == .bodyTooLong)
    }

    @Test func tagsDoNotCountAgainstTheBody() {
        let tags = "@" + String(repeating: "t", count: 4000) + " "
        let body = "PRIVMSG #a :" + String(repeating: "x", count: 498)
        #expect(IRCLimits.check((tags + body).utf8) == nil)
        let hugeTags = "@" + String(repeating: "t", count: 4095) + " "
        #expect(IRCLimits.check((hugeTags + "PING x").utf8) == .tagsTooLong)
    }

    @Test func chunksRespectTheBudgetAndTheItemCount() {
        let names = (1...10).map { "name\($0)" }
        let chunks = IRCLimits.chunks(names, budget: 20)
        #expect(chunks.flatMap { $0 } == names)
        #expect(chunks.allSatisfy { $0.joined(separator: " ").utf8.count <= 20 })
        #expect(IRCLimits.chunks(names, budget: 1000, maxItems: 3).map(\.count) == [3, 3, 3, 1])
        #expect(IRCLimits.chunks([], budget: 10) == [])
    }
}
