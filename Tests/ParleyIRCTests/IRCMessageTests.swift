import PropertyBased
import Testing
@testable import ParleyIRC

@Suite struct IRCMessageTests {
    func parse(_ line: String) throws -> IRCMessage { try IRCMessage(parsing: line) }

    @Test func parsesTheExamplesOfTheSpec() throws {
        #expect(try parse(":irc.example.com CAP * LIST :") == IRCMessage(source: "irc.example.com", "CAP", ["*", "LIST", ""]))
        #expect(try parse("CAP * LS :multi-prefix sasl") == IRCMessage("CAP", ["*", "LS", "multi-prefix sasl"]))
        #expect(try parse("CAP REQ :sasl message-tags foo") == IRCMessage("CAP", ["REQ", "sasl message-tags foo"]))
        #expect(try parse(":dan!d@localhost PRIVMSG #chan :Hey!") == IRCMessage(source: "dan!d@localhost", "PRIVMSG", ["#chan", "Hey!"]))
        #expect(try parse(":dan!d@localhost PRIVMSG #chan ::-)") == IRCMessage(source: "dan!d@localhost", "PRIVMSG", ["#chan", ":-)"]))
        #expect(try parse("privmsg  #chan   hello") == IRCMessage("PRIVMSG", ["#chan", "hello"]))
        #expect(try parse("PING") == IRCMessage("PING"))
        #expect(try parse("001 nick :Welcome") == IRCMessage("001", ["nick", "Welcome"]))
    }

    @Test func parsesTagsWithEscapes() throws {
        let message = try parse(#"@id=234AB;+example.com/x=a\sb\:c\\d\r\n;flag;empty= :nick!u@h PRIVMSG #a :hi"#)
        #expect(message.tags == [
            .init("id", "234AB"), .init("+example.com/x", "a b;c\\d\r\n"), .init("flag"), .init("empty"),
        ])
        #expect(message.tag("+example.com/x")?.value == "a b;c\\d\r\n")
        #expect(try parse(#"@a=x\ CMD"#).tag("a")?.value == "x")  // a trailing lone backslash is dropped
        #expect(try parse(#"@a=\b CMD"#).tag("a")?.value == "b")  // an unknown escape is the character
        #expect(try parse("@a=1;a=2 CMD").tags == [.init("a", "2")])
    }

    @Test func rejectsWhatIsNotAMessage() {
        #expect(throws: IRCMessage.ParseError.empty) { try parse("   ") }
        #expect(throws: IRCMessage.ParseError.missingCommand) { try parse(":source.only") }
        #expect(throws: IRCMessage.ParseError.invalidCommand("PRIV-MSG")) { try parse("PRIV-MSG #a b") }
    }

    /// The door parses a line's bytes as received: a lowercase command is uppercased, and bytes that
    /// are not UTF-8 are replaced in the parameter that holds them, not elsewhere.
    @Test func parsesReceivedBytesWithInvalidUTF8() throws {
        let bytes: [UInt8] = Array("privmsg #caf\u{E9} :ok ".utf8) + [0xC3, 0x20, 0xFF] + Array(" d\u{E9}j\u{E0}".utf8)
        let message = try bytes.withUnsafeBytes { raw in try IRCMessage(parsing: raw) }
        #expect(message == IRCMessage("PRIVMSG", ["#caf\u{E9}", "ok \u{FFFD} \u{FFFD} d\u{E9}j\u{E0}"]))
        #expect(throws: IRCMessage.ParseError.invalidCommand("PRIV\u{FFFD}")) {
            try [UInt8]("PRIV".utf8 + [0xFF]).withUnsafeBytes { raw in try IRCMessage(parsing: raw) }
        }
    }

    @Test func lineBreaksInsideParametersCannotSplitTheLine() {
        #expect(IRCMessage("PART", ["#a", "bye\r\n:evil PRIVMSG #a :x\0"]).serialized() == "PART #a :bye  :evil PRIVMSG #a :x ")
        // The space a CR becomes makes the parameter a trailing one.
        #expect(IRCMessage("PRIVMSG", ["#a", "a\rb"]).serialized() == "PRIVMSG #a :a b")
    }

    @Test func serializesWithATrailingColonOnlyWhenNeeded() {
        #expect(IRCMessage("PRIVMSG", ["#a", "hello"]).serialized() == "PRIVMSG #a hello")
        #expect(IRCMessage("PRIVMSG", ["#a", "hello there"]).serialized() == "PRIVMSG #a :hello there")
        #expect(IRCMessage("PRIVMSG", ["#a", ":)"]).serialized() == "PRIVMSG #a ::)")
        #expect(IRCMessage(source: "srv", "CAP", ["*", "LIST", ""]).serialized() == ":srv CAP * LIST :")
        #expect(IRCMessage(tags: [.init("time", "2026-01-01T00:00:00.000Z"), .init("x", "a b")], "PING", ["t"]).serialized()
                == "@time=2026-01-01T00:00:00.000Z;x=a\\sb PING t")
        #expect(IRCMessage("PRIVMSG", ["#a", "x"]).bodyLength == "PRIVMSG #a x\r\n".utf8.count)
    }

    // Generators for valid messages: what a serializer may be handed.
    static func characters(_ set: String) -> Generator<Character, Shrink.None<Character?>> {
        Gen<Character?>.element(of: Array(set) as [Character]).map { $0 ?? "a" }
    }
    static let word = Gen.letterOrNumber.string(of: 1...10)
    static let anyText = characters("ab Z09 :;\\=@!#é☃\t\r\n").string(of: 0...12)
    static let middle = characters("abZ09:;\\=@!#é☃").string(of: 1...10).map { text -> String in
        let stripped = String(text.drop { $0 == ":" })
        return stripped.isEmpty ? "x" : stripped
    }
    static let trailing = characters("ab Z09 :;\\=@!#é☃\t").string(of: 0...20)
    static let command = zip(Gen.bool(), Gen.uppercaseLetter.string(of: 1...10), Gen.number.string(of: 3))
        .map { (letters: Bool, word: String, digits: String) in letters ? word : digits }
    static let tag = zip(word, anyText).map { (key: String, value: String) in IRCMessage.Tag(key, value.isEmpty ? nil : value) }
    static let tags = tag.array(of: 0...4).map { (tags: [IRCMessage.Tag]) -> [IRCMessage.Tag] in
        var seen = Set<String>()
        return tags.filter { seen.insert($0.key).inserted }
    }
    static let source = zip(word, word, word).map { (nick: String, user: String, host: String) in "\(nick)!\(user)@\(host).example" }.optional()
    static let params = zip(middle.array(of: 0...5), trailing.optional()).map { (middles: [String], last: String?) in
        middles + (last.map { [$0] } ?? [])
    }

    @Test func parseOfSerializeIsIdentity() async {
        await propertyCheck(count: 500, input: Self.tags, Self.source, Self.command, Self.params) { tags, source, command, params in
            let message = IRCMessage(tags: tags, source: source, command, params)
            #expect((try? IRCMessage(parsing: message.serialized())) == message, "\(message.serialized())")
        }
    }
}
