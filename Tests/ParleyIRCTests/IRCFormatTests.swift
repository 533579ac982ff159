import Foundation
import NIOCore
import ParleyCore
import PropertyBased
import Testing
@testable import ParleyIRC

/// The format writes live chat messages straight into a buffer; every other way a message reaches a
/// client (echoes with labels, history) goes through `IRCMessage`. Both must give the same line.
@Suite struct IRCFormatTests {
    static let kinds: [MessageKind] = [.say, .action, .notice, .tagOnly]
    static let options = zip(Gen.bool(), Gen.bool(), Gen.bool()).map { (time: Bool, account: Bool, tags: Bool) in
        var options = IRCRenderOptions()
        options.serverTime = time
        options.accountTag = account
        options.messageTags = tags
        return options
    }
    static let kind = Gen<Int>.int(in: 0...3).map { kinds[$0] }
    static let text = IRCMessageTests.anyText
    static let clientTags = zip(IRCMessageTests.word, IRCMessageTests.anyText)
        .map { (key: String, value: String) in MessageTag("+" + key, value.isEmpty ? nil : value) }
        .array(of: 0...2)
    static let speaker = zip(IRCMessageTests.word, Gen.bool()).map { (name: String, hasAccount: Bool) in
        Speaker(name: name, user: "~" + name, host: "127.0.0.1", account: hasAccount ? name : nil)
    }

    @Test func liveChatLinesAreWhatTheGeneralRenderingGives() async {
        let formats = IRCFormats(serverName: "parley.test")
        await propertyCheck(count: 400, input: Self.options, Self.kind, Self.text, Self.clientTags, Self.speaker) { options, kind, text, tags, speaker in
            let format = formats.format(options)
            let time = Date(timeIntervalSince1970: 1_800_000_000.123)
            let room = RoomMessage(room: "#dev", sender: speaker, text: text, kind: kind, sequence: 1, time: time, serial: 4_000_001, tags: tags)
            #expect(format.render(.message(room)).map { String(buffer: $0) } == format.message(for: .message(room)).map { String(buffer: $0.wireLine) })
            let direct = DirectMessage(from: speaker, to: "bob", text: text, kind: kind, echo: false, time: time, serial: 7, tags: tags)
            #expect(format.render(.direct(direct)).map { String(buffer: $0) } == format.message(for: .direct(direct)).map { String(buffer: $0.wireLine) })
        }
    }

    @Test func aPlainMessageAndAnActionLookAsIRCClientsExpect() throws {
        let format = IRCFormats(serverName: "parley.test").format(IRCRenderOptions())
        let alice = Speaker(name: "alice", user: "~alice", host: "127.0.0.1", account: "alice")
        func line(_ text: String, _ kind: MessageKind) -> String? {
            format.render(.message(RoomMessage(room: "#dev", sender: alice, text: text, kind: kind, sequence: 1, time: Date(), serial: 1))).map { String(buffer: $0) }
        }
        #expect(line("hi", .say) == ":alice!~alice@127.0.0.1 PRIVMSG #dev hi\r\n")
        #expect(line("hello there", .notice) == ":alice!~alice@127.0.0.1 NOTICE #dev :hello there\r\n")
        #expect(line("waves", .action) == ":alice!~alice@127.0.0.1 PRIVMSG #dev :\u{1}ACTION waves\u{1}\r\n")
        #expect(line("a\r\nQUIT", .say) == ":alice!~alice@127.0.0.1 PRIVMSG #dev :a  QUIT\r\n")
        // A client without message-tags gets no TAGMSG at all.
        #expect(line("", .tagOnly) == nil)
    }
}
