import Foundation
import ParleyClient
import ParleyIRC
import ParleyServer
import Testing

extension IRCTestClient {
    /// Registers after asking for capabilities (and logs in with PASS when given).
    func register(_ nick: String, caps: String, pass: String? = nil) async throws {
        try await send("CAP LS 302")
        if let pass { try await send("PASS \(pass)") }
        try await send("NICK \(nick)")
        try await send("USER \(nick) 0 * :\(nick)")
        try await send("CAP REQ :\(caps)")
        let ack = try await expect("CAP") { $0.command == "CAP" && ($0.params[1] == "ACK" || $0.params[1] == "NAK") }
        #expect(ack.params[1] == "ACK")
        try await send("CAP END")
        _ = try await readWelcome()
    }

    /// Sends a command answered by a batch of the given type; returns the lines inside it.
    func batch(_ command: String, type: String) async throws -> [IRCMessage] {
        try await send(command)
        let start = try await expect("BATCH +") { $0.command == "BATCH" && $0.params.first?.hasPrefix("+") == true }
        #expect(start.params.dropFirst().first == type)
        let id = String(start.params[0].dropFirst())
        var lines: [IRCMessage] = []
        while true {
            let line = try await next()
            if line.command == "BATCH" && line.params == ["-" + id] { return lines }
            #expect(line.tag("batch")?.value == id)
            lines.append(line)
        }
    }
}

@Suite(.timeLimit(.minutes(2))) struct IRCHistoryTests {
    static let caps = "batch server-time message-tags echo-message draft/chathistory"

    @Test func chathistoryAnswersEverySubcommandWithTheEchoesTimesAndIds() async throws {
        try await withServer { server in
            let irc = try await IRCTestClient.connect(server)
            try await irc.register("hana", caps: Self.caps)
            let isupport = Set(try await irc.isupportTokens())
            #expect(isupport.contains("CHATHISTORY=100") && isupport.contains("MSGREFTYPES=msgid,timestamp"))
            try await irc.send("JOIN #h")
            _ = try await irc.expect("366")
            var echoes: [IRCMessage] = []
            for n in 0..<10 {
                try await irc.send("PRIVMSG #h :m\(n)")
                echoes.append(try await irc.expect("PRIVMSG"))
            }
            #expect(Set(echoes.compactMap { $0.tag("msgid")?.value }).count == 10)
            func id(_ n: Int) -> String { echoes[n].tag("msgid")?.value ?? "?" }
            func time(_ n: Int) -> String { echoes[n].tag("time")?.value ?? "?" }
            func texts(_ lines: [IRCMessage]) -> [String] { lines.map { $0.params[1] } }
            func range(_ r: ClosedRange<Int>) -> [String] { r.map { "m\($0)" } }

            let latest = try await irc.batch("CHATHISTORY LATEST #h * 5", type: "chathistory")
            #expect(texts(latest) == range(5...9))
            // History gives back exactly what the echo showed: time, msgid, target, text.
            #expect(latest.map { [$0.tag("time")?.value, $0.tag("msgid")?.value, $0.params[0]] } == (5...9).map { [time($0), id($0), "#h"] })
            #expect(texts(try await irc.batch("CHATHISTORY LATEST #h msgid=\(id(4)) 20", type: "chathistory")) == range(5...9))
            #expect(texts(try await irc.batch("CHATHISTORY BEFORE #h msgid=\(id(6)) 20", type: "chathistory")) == range(0...5))
            #expect(texts(try await irc.batch("CHATHISTORY AFTER #h msgid=\(id(3)) 3", type: "chathistory")) == range(4...6))
            #expect(texts(try await irc.batch("CHATHISTORY BETWEEN #h msgid=\(id(0)) msgid=\(id(9)) 20", type: "chathistory")) == range(1...8))
            #expect(texts(try await irc.batch("CHATHISTORY BETWEEN #h msgid=\(id(9)) msgid=\(id(0)) 3", type: "chathistory")) == range(6...8))
            #expect(texts(try await irc.batch("CHATHISTORY AROUND #h msgid=\(id(7)) 3", type: "chathistory")) == range(6...8))
            #expect(texts(try await irc.batch("CHATHISTORY AROUND #h msgid=\(id(7)) 1", type: "chathistory")) == ["m7"])
            // A timestamp excludes every message of its millisecond.
            let beforeTime = echoes.indices.filter { time($0) < time(6) }.map { "m\($0)" }
            #expect(texts(try await irc.batch("CHATHISTORY BEFORE #h timestamp=\(time(6)) 20", type: "chathistory")) == beforeTime)
            // A limit above the maximum is the maximum.
            #expect(texts(try await irc.batch("CHATHISTORY LATEST #h * 1000", type: "chathistory")) == range(0...9))
            #expect(try await irc.batch("CHATHISTORY AFTER #h msgid=nosuchid 10", type: "chathistory").isEmpty)

            let targets = try await irc.batch("CHATHISTORY TARGETS timestamp=2020-01-01T00:00:00.000Z timestamp=2262-01-01T00:00:00.000Z 10",
                                               type: "draft/chathistory-targets")
            #expect(targets.map(\.params) == [["TARGETS", "#h", time(9)]])

            // Errors name the subcommand and what was wrong.
            try await irc.send("CHATHISTORY LATEST #elsewhere * 10")
            #expect(try await irc.expect("FAIL").params == ["CHATHISTORY", "INVALID_TARGET", "LATEST", "#elsewhere", "Messages could not be retrieved"])
            try await irc.send("CHATHISTORY SOON #h * 10")
            #expect(try await irc.expect("FAIL").params == ["CHATHISTORY", "INVALID_PARAMS", "SOON", "Unknown command"])
            try await irc.send("CHATHISTORY BEFORE #h 10")
            #expect(try await irc.expect("FAIL").params == ["CHATHISTORY", "INVALID_PARAMS", "BEFORE", "Insufficient parameters"])
            try await irc.send("CHATHISTORY BEFORE #h timestamp=yesterday 10")
            #expect(try await irc.expect("FAIL").params == ["CHATHISTORY", "INVALID_PARAMS", "BEFORE", "timestamp=yesterday", "Invalid timestamp"])
        }
    }

    @Test func directMessageHistoryHasBothDirectionsForAccountsOnly() async throws {
        try await withServer { server in
            _ = try await server.user("ada")
            _ = try await server.user("ben")
            let ada = try await IRCTestClient.connect(server)
            try await ada.register("ada", caps: Self.caps, pass: "ada:password1")
            let ben = try await IRCTestClient.connect(server)
            try await ben.register("ben", caps: Self.caps, pass: "ben:password1")
            for n in 0..<3 {
                try await ada.send("PRIVMSG ben :from ada \(n)")
                _ = try await ben.expect("ada's message") { $0.command == "PRIVMSG" && $0.params[1] == "from ada \(n)" }
                try await ben.send("PRIVMSG ada :from ben \(n)")
                _ = try await ada.expect("the reply") { $0.command == "PRIVMSG" && $0.params[1] == "from ben \(n)" }
            }
            let seenByAda = try await ada.batch("CHATHISTORY LATEST BEN * 10", type: "chathistory")
            #expect(seenByAda.map(\.params) == (0..<3).flatMap { [["ben", "from ada \($0)"], ["ada", "from ben \($0)"]] })
            let seenByBen = try await ben.batch("CHATHISTORY LATEST ada * 10", type: "chathistory")
            #expect(seenByBen.map(\.params) == seenByAda.map(\.params))
            // A guest has no direct-message history to read.
            let guest = try await IRCTestClient.connect(server)
            try await guest.register("ghost", caps: Self.caps)
            try await guest.send("CHATHISTORY LATEST ada * 10")
            #expect(try await guest.expect("FAIL").params.prefix(2) == ["CHATHISTORY", "INVALID_TARGET"])
        }
    }

    @Test func joiningReplaysRecentMessagesUnlessTheClientAsksForHistory() async throws {
        try await withServer { server in
            let writer = try await server.user("wren")
            _ = try await writer.command("/join #r")
            for n in 1...3 { try await writer.send("said \(n)") }
            _ = try await writer.expect { $0 == "MSG #r wren: said 3" }

            // batch + server-time: a chathistory batch right after the JOIN, each message with its time.
            let batched = try await IRCTestClient.connect(server)
            try await batched.register("bea", caps: "batch server-time")
            try await batched.send("JOIN #r")
            #expect(try await batched.expect("JOIN").params == ["#r"])
            let start = try await batched.next()
            #expect(start.command == "BATCH" && start.params.dropFirst() == ["chathistory", "#r"])
            for n in 1...3 {
                let line = try await batched.next()
                #expect(line.command == "PRIVMSG" && line.params == ["#r", "said \(n)"] && line.source?.hasPrefix("wren!") == true)
                #expect(line.tag("time")?.value?.hasSuffix("Z") == true)
            }
            #expect(try await batched.next().command == "BATCH")
            #expect(try await batched.next().command == "353")

            // No capabilities: the same messages, the time in front of the text.
            let plain = try await IRCTestClient.connect(server)
            try await plain.register("pim")
            try await plain.send("JOIN #r")
            _ = try await plain.expect("JOIN")
            for n in 1...3 {
                let line = try await plain.next()
                #expect(line.command == "PRIVMSG" && line.params[1].hasPrefix("[20") && line.params[1].hasSuffix("Z] said \(n)"))
            }

            // draft/chathistory: nothing is replayed; the client asks.
            let modern = try await IRCTestClient.connect(server)
            try await modern.register("mo", caps: Self.caps)
            try await modern.send("JOIN #r")
            _ = try await modern.expect("366")
            try await modern.send("PING :check")
            #expect(try await modern.next().command == "PONG")
        }
    }

    @Test func aDirectMessageKeptWhileOfflineArrivesAtLoginWithItsTime() async throws {
        try await withServer { server in
            let account = try await server.user("otto")
            try await account.send("/quit")
            try await account.waitForClose()
            let sender = try await IRCTestClient.connect(server)
            try await sender.register("sam")
            try await sender.send("PRIVMSG otto :see you later")
            try await sender.send("PRIVMSG nobody :anyone?")
            #expect(try await sender.expect("401").params == ["sam", "nobody", "No such nick/channel"])

            let otto = try await IRCTestClient.connect(server)
            try await otto.register("otto", caps: "server-time", pass: "otto:password1")
            let late = try await otto.expect("PRIVMSG")
            #expect(late.params == ["otto", "see you later"] && late.source?.hasPrefix("sam!") == true)
            #expect(late.tag("time")?.value?.hasSuffix("Z") == true)
        }
    }

    @Test func aPingIsAnsweredAfterEveryEarlierMessageHasArrived() async throws {
        try await withServer { server in
            let talker = try await IRCTestClient.connect(server)
            try await talker.register("tal")
            let listener = try await IRCTestClient.connect(server)
            try await listener.register("lis")
            for client in [talker, listener] {
                try await client.send("JOIN #p")
                _ = try await client.expect("366")
            }
            for n in 0..<50 { try await talker.send("PRIVMSG #p :burst \(n)") }
            try await talker.send("PING :sent")
            _ = try await talker.expect("PONG")
            // The listener's PONG follows all 50 messages, which were accepted before its PING.
            try await listener.send("PING :mine")
            var chat = 0
            while true {
                let line = try await listener.next()
                if line.command == "PONG" { break }
                if line.command == "PRIVMSG" { chat += 1 }
            }
            #expect(chat == 50)
        }
    }
}

extension IRCTestClient {
    /// The ISUPPORT tokens, from a VERSION request.
    func isupportTokens() async throws -> [String] {
        try await send("VERSION")
        try await send("PING :isupport")
        var tokens: [String] = []
        while true {
            let line = try await next()
            if line.command == "PONG" { return tokens }
            if line.command == "005" { tokens += line.params.dropFirst().dropLast() }
        }
    }
}
