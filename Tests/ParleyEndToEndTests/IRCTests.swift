import Foundation
import ParleyClient
import ParleyIRC
import ParleyServer
import Testing

@Suite(.timeLimit(.minutes(2))) struct IRCRegistrationTests {
    @Test func registrationWithoutCapGivesTheWelcomeBurst() async throws {
        try await withServer { server in
            let irc = try await IRCTestClient.connect(server)
            let burst = try await irc.register("dana")
            #expect(burst.first == IRCMessage(source: "parley.test", "001", ["dana", "Welcome to the Parley IRC network, dana"]))
            #expect(burst.map(\.command).filter { $0 != "005" } == ["001", "002", "003", "004", "251", "252", "253", "254", "255", "265", "266", "422"])
            let isupport = burst.filter { $0.command == "005" }
            #expect(isupport.allSatisfy { $0.params.count <= 13 + 2 && $0.params.last == "are supported by this server" })
            let tokens = Set(isupport.flatMap { $0.params.dropFirst().dropLast() })
            for token in ["CASEMAPPING=ascii", "CHANTYPES=#", "NICKLEN=20", "NETWORK=Parley", "UTF8ONLY", "PREFIX=(ov)@+", "CHANMODES=beI,k,l,imnst", "EXCEPTS=e", "INVEX=I", "WHOX"] {
                #expect(tokens.contains(token))
            }
            #expect(tokens.contains { $0.hasPrefix("CHANNELLEN=") } && tokens.contains { $0.hasPrefix("TOPICLEN=") })
        }
    }

    @Test func registrationWaitsForCapEnd() async throws {
        try await withServer { server in
            let irc = try await IRCTestClient.connect(server)
            try await irc.send("CAP LS 302")
            let ls = try await irc.expect("CAP")
            #expect(ls.params[1] == "LS" && ls.params[2].split(separator: " ").contains("echo-message"))
            try await irc.send("NICK erin")
            try await irc.send("USER erin 0 * :Erin")
            try await irc.send("CAP REQ :echo-message server-time")
            // The ACK comes, and no 001 before it: registration waits for CAP END.
            let ack = try await irc.next()
            #expect(ack.command == "CAP" && ack.params == ["erin", "ACK", "echo-message server-time"])
            try await irc.send("CAP REQ :no-such-cap")
            #expect(try await irc.next().params == ["erin", "NAK", "no-such-cap"])
            try await irc.send("CAP END")
            #expect(try await irc.next().command == "001")
            try await irc.send("CAP LIST")
            #expect(try await irc.expect("CAP").params == ["erin", "LIST", "echo-message server-time"])
        }
    }

    @Test func commandErrorsHaveTheirNumerics() async throws {
        try await withServer { server in
            let irc = try await IRCTestClient.connect(server)
            try await irc.send("PRIVMSG #lobby :too early")
            #expect(try await irc.next() == IRCMessage(source: "parley.test", "451", ["*", "You have not registered"]))
            try await irc.send("NICK 9bad")
            #expect(try await irc.next().command == "432")
            try await irc.register("fay")
            try await irc.send("FROB")
            #expect(try await irc.next() == IRCMessage(source: "parley.test", "421", ["fay", "FROB", "Unknown command"]))
            try await irc.send("JOIN")
            #expect(try await irc.next() == IRCMessage(source: "parley.test", "461", ["fay", "JOIN", "Not enough parameters"]))
            try await irc.send("PRIVMSG nobody :hi")
            #expect(try await irc.next().command == "401")
            try await irc.send("PRIVMSG #nowhere :hi")
            #expect(try await irc.next().command == "403")
            try await irc.send("PRIVMSG #lobby")
            #expect(try await irc.next().command == "412")
            try await irc.send("PART #lobby")
            #expect(try await irc.next().command == "403")
            try await irc.send("PRIVMSG #lobby :" + String(repeating: "x", count: 600))
            #expect(try await irc.next() == IRCMessage(source: "parley.test", "417", ["fay", "Input line was too long"]))
            try await irc.send("PING :still-here")
            #expect(try await irc.next() == IRCMessage(source: "parley.test", "PONG", ["parley.test", "still-here"]))
            let other = try await IRCTestClient.connect(server)
            try await other.send("NICK FAY")
            try await other.send("USER x 0 * :x")
            #expect(try await other.next().command == "433")
        }
    }

    @Test func passLogsInAndReservedNicksNeedTheirAccount() async throws {
        try await withServer { server in
            _ = try await server.user("gwen")
            let guest = try await IRCTestClient.connect(server)
            try await guest.send("NICK gwen")
            try await guest.send("USER g 0 * :G")
            #expect(try await guest.next().command == "433")
            let owner = try await IRCTestClient.connect(server)
            let burst = try await owner.register("whatever", pass: "gwen:password1")
            #expect(burst.first?.params.first == "whatever")
            try await owner.send("WHOIS whatever")
            #expect(try await owner.expect("330").params == ["whatever", "whatever", "gwen", "is logged in as"])
            // A logged-in user asking for another account's nick gets its own account's name.
            _ = try await server.user("hugo")
            let other = try await IRCTestClient.connect(server)
            #expect(try await other.register("hugo", pass: "gwen:password1").first?.params.first == "gwen")
            let wrong = try await IRCTestClient.connect(server)
            try await wrong.send("PASS gwen:nope-nope")
            try await wrong.send("NICK g2")
            try await wrong.send("USER g 0 * :G")
            #expect(try await wrong.next().command == "464")
            #expect(try await wrong.next().command == "ERROR")
        }
    }
}

@Suite(.timeLimit(.minutes(2))) struct IRCChatTests {
    @Test func joinNamesPrivmsgAndPartWithAnotherIRCUser() async throws {
        try await withServer { server in
            let hal = try await IRCTestClient.connect(server)
            try await hal.register("hal")
            let ivy = try await IRCTestClient.connect(server)
            try await ivy.register("ivy")
            try await hal.send("JOIN #den")
            #expect(try await hal.next().serialized() == ":hal!hal@127.0.0.1 JOIN #den")
            #expect(try await hal.next().params == ["hal", "=", "#den", "@hal"])
            #expect(try await hal.next().command == "366")
            try await ivy.send("JOIN #den")
            #expect(try await ivy.expect("353").params == ["ivy", "=", "#den", "@hal ivy"])
            #expect(try await ivy.next().command == "366")
            #expect(try await hal.next().serialized() == ":ivy!ivy@127.0.0.1 JOIN #den")
            try await ivy.send("PRIVMSG #den :hello hal")
            #expect(try await hal.next().serialized() == ":ivy!ivy@127.0.0.1 PRIVMSG #den :hello hal")
            try await ivy.send("PRIVMSG hal :\u{1}ACTION waves\u{1}")
            #expect(try await hal.next().serialized() == ":ivy!ivy@127.0.0.1 PRIVMSG hal :\u{1}ACTION waves\u{1}")
            try await ivy.send("NOTICE #den :fyi")
            #expect(try await hal.next().serialized() == ":ivy!ivy@127.0.0.1 NOTICE #den fyi")
            // Without echo-message, ivy got none of her own messages: her next line is the PART.
            try await ivy.send("PART #den :bye now")
            #expect(try await ivy.next().serialized() == ":ivy!ivy@127.0.0.1 PART #den :bye now")
            #expect(try await hal.next().serialized() == ":ivy!ivy@127.0.0.1 PART #den :bye now")
            try await hal.send("WHO #den")
            #expect(try await hal.next().params == ["hal", "#den", "hal", "127.0.0.1", "parley.test", "hal", "H@", "0 The real hal"])
            #expect(try await hal.next().command == "315")
            try await hal.send("ISON ivy nobody hal")
            #expect(try await hal.next().params == ["hal", "ivy hal"])
        }
    }

    /// A client handles a turn's share of lines and then waits for the loop's next turn (so that
    /// others are read in between): a burst far past that share still arrives whole, in order, and
    /// the PING behind it is answered after it.
    @Test func aBurstOfLinesIsHandledWholeAndInOrderAcrossTurns() async throws {
        try await withServer { server in
            let hal = try await IRCTestClient.connect(server)
            try await hal.register("hal")
            let ivy = try await IRCTestClient.connect(server)
            try await ivy.register("ivy")
            try await hal.send("JOIN #den")
            _ = try await hal.expect("366")
            try await ivy.send("JOIN #den")
            _ = try await ivy.expect("366")
            _ = try await hal.expect("JOIN")
            let count = 150
            try await ivy.send((1...count).map { "PRIVMSG #den :line \($0)" }.joined(separator: "\r\n") + "\r\nPING :after")
            for number in 1...count {
                #expect(try await hal.next().params == ["#den", "line \(number)"])
            }
            let pong = try await ivy.expect("PONG")
            #expect(pong.params.last == "after")
            // hal, who sent nothing, is answered as at rest.
            try await hal.send("PING :quiet")
            #expect(try await hal.expect("PONG").params.last == "quiet")
        }
    }

    @Test func echoMessageAndServerTime() async throws {
        try await withServer { server in
            let jo = try await IRCTestClient.connect(server)
            try await jo.send("CAP REQ :echo-message server-time")
            try await jo.send("NICK jo")
            try await jo.send("USER jo 0 * :Jo")
            try await jo.send("CAP END")
            _ = try await jo.readWelcome()
            try await jo.send("JOIN #lobby")
            let join = try await jo.expect("JOIN")
            #expect(join.tag("time")?.value?.hasSuffix("Z") == true)
            try await jo.send("PRIVMSG #lobby :echo me")
            let echo = try await jo.expect("PRIVMSG")
            #expect(echo.source == "jo!jo@127.0.0.1" && echo.params == ["#lobby", "echo me"])
            let time = try #require(echo.tag("time")?.value)
            #expect(time.wholeMatch(of: /\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z/) != nil)
        }
    }

    @Test func ircAndLineUsersTalkInTheLobby() async throws {
        try await withServer { server in
            let kim = try await server.user("kim")
            let leo = try await IRCTestClient.connect(server)
            try await leo.register("leo")
            try await leo.send("JOIN #lobby")
            let names = try await leo.expect("353")
            #expect(names.params.last?.split(separator: " ").contains { $0 == "kim" || $0 == "@kim" } == true)
            #expect(try await kim.expect(prefix: "JOIN #lobby leo") == "JOIN #lobby leo")
            try await kim.send("hello irc")
            #expect(try await leo.expect("PRIVMSG").serialized() == ":kim!kim@127.0.0.1 PRIVMSG #lobby :hello irc")
            try await leo.send("PRIVMSG #lobby :hello line")
            #expect(try await kim.expect(prefix: "MSG ") == "MSG #lobby kim: hello irc")
            #expect(try await kim.expect(prefix: "MSG ") == "MSG #lobby leo: hello line")
            try await kim.send("/msg leo psst")
            #expect(try await leo.expect("PRIVMSG").serialized() == ":kim!kim@127.0.0.1 PRIVMSG leo psst")
            try await leo.send("PRIVMSG kim :back at you")
            #expect(try await kim.expect(prefix: "DM ") == "DM to leo: psst")
            #expect(try await kim.expect(prefix: "DM ") == "DM from leo: back at you")
            #expect(try await kim.listing("/list").contains("USER leo #lobby"))
            guard case .output(let list) = Console(hub: server.server.hub).execute("list") else { return }
            #expect(list.contains { $0.contains("\tleo (guest)\tirc\t127.0.0.1:") })
            try await leo.send("QUIT :gotta go")
            #expect(try await leo.expect("ERROR").params.first?.contains("Quit: gotta go") == true)
            #expect(try await kim.expect(prefix: "QUIT ") == "QUIT leo Quit: gotta go")
        }
    }

    @Test func shutdownTellsRegisteredAndRegisteringClients() async throws {
        let running = try await RunningServer.start()
        let registered = try await IRCTestClient.connect(running)
        try await registered.register("max")
        let registering = try await IRCTestClient.connect(running)
        // Answered, so the server has accepted the connection: one still in the kernel's backlog when
        // the listener closes is reset, with no goodbye to read.
        try await registering.send("CAP LS 302")
        _ = try await registering.expect("CAP")
        try await registering.send("NICK half")
        await running.stop()
        #expect(try await registered.expect("ERROR").params == ["Closing Link: The server is shutting down"])
        #expect(try await registering.expect("ERROR").params.first?.contains("shutting down") == true)
    }
}

@Suite(.timeLimit(.minutes(2))) struct IRCChannelAdminTests {
    /// Two registered IRC clients: `op` created #ops (so is its operator), `member` joined it after.
    func opAndMember(_ server: RunningServer) async throws -> (IRCTestClient, IRCTestClient) {
        let op = try await IRCTestClient.connect(server)
        try await op.register("opal")
        let member = try await IRCTestClient.connect(server)
        try await member.register("mel")
        try await op.send("JOIN #ops")
        _ = try await op.expect("366")
        try await member.send("JOIN #ops")
        _ = try await member.expect("366")
        _ = try await op.expect("JOIN")
        return (op, member)
    }

    @Test func topicsAreLockedToOperatorsByDefault() async throws {
        try await withServer { server in
            let (op, member) = try await opAndMember(server)
            try await member.send("TOPIC #ops")
            #expect(try await member.next().params == ["mel", "#ops", "No topic is set"])
            try await member.send("TOPIC #ops :mine now")
            #expect(try await member.next().params == ["mel", "#ops", "You're not channel operator"])
            try await op.send("TOPIC #ops :release friday")
            #expect(try await member.next().serialized() == ":opal!opal@127.0.0.1 TOPIC #ops :release friday")
            try await member.send("TOPIC #ops")
            #expect(try await member.next().params == ["mel", "#ops", "release friday"])
            #expect(try await member.next().params.prefix(3) == ["mel", "#ops", "opal"])
            let line = try await server.user("lou")
            try await line.send("/join #ops")
            // The line door shows the event first, then answers the command.
            #expect(try await line.nextLine() == "JOIN #ops lou")
            #expect(try await line.nextLine() == "TOPIC #ops opal: release friday")
            #expect(try await line.nextLine() == "OK join You are now talking in #ops.")
        }
    }

    @Test func modesKeyLimitInviteOnlyModeratedAndBans() async throws {
        try await withServer { server in
            let (op, member) = try await opAndMember(server)
            try await member.send("MODE #ops +m")
            #expect(try await member.next().command == "482")
            try await op.send("MODE #ops +mk-t secret")
            #expect(try await member.next().serialized() == ":opal!opal@127.0.0.1 MODE #ops +mk-t secret")
            try await member.send("PRIVMSG #ops :can I talk?")
            #expect(try await member.next().params == ["mel", "#ops", "Cannot send to channel"])
            try await op.send("MODE #ops +v mel")
            #expect(try await member.next().serialized() == ":opal!opal@127.0.0.1 MODE #ops +v mel")
            try await member.send("PRIVMSG #ops :now I can")
            #expect(try await op.expect("PRIVMSG").params == ["#ops", "now I can"])
            try await op.send("MODE #ops")
            #expect(try await op.expect("324").params == ["opal", "#ops", "+mnk", "secret"])
            try await op.send("NAMES #ops")
            #expect(try await op.expect("353").params.last == "@opal +mel")

            let outsider = try await IRCTestClient.connect(server)
            try await outsider.register("otto")
            try await outsider.send("JOIN #ops")
            #expect(try await outsider.next().command == "475")
            try await outsider.send("JOIN #ops secret")
            _ = try await outsider.expect("366")
            try await op.send("KICK #ops otto :out you go")
            #expect(try await outsider.expect("KICK").serialized() == ":opal!opal@127.0.0.1 KICK #ops otto :out you go")
            try await op.send("MODE #ops +b otto!*@*")
            _ = try await op.expect("MODE")
            try await outsider.send("JOIN #ops secret")
            #expect(try await outsider.next().command == "474")
            try await op.send("MODE #ops -b+il otto!*@* 2")
            #expect(try await op.expect("MODE").params == ["#ops", "-b+il", "otto!*@*", "2"])
            try await outsider.send("JOIN #ops secret")
            #expect(try await outsider.next().command == "473")
            try await op.send("INVITE otto #ops")
            #expect(try await op.expect("341").params == ["opal", "otto", "#ops"])
            #expect(try await outsider.next().serialized() == ":opal!opal@127.0.0.1 INVITE otto #ops")
            // The invitation lets otto past +i, the limit of 2 and the key, once.
            try await outsider.send("JOIN #ops")
            #expect(try await outsider.next().serialized() == ":otto!otto@127.0.0.1 JOIN #ops")
            try await op.send("KICK #ops nobody")
            #expect(try await op.expect("441").params == ["opal", "nobody", "#ops", "They aren't on that channel"])
            try await member.send("KICK #ops opal")
            #expect(try await member.expect("482").command == "482")
        }
    }
}

@Suite(.timeLimit(.minutes(2))) struct IRCAccountTests {
    static func plain(_ account: String, _ password: String) -> String {
        Data("\(account)\0\(account)\0\(password)".utf8).base64EncodedString()
    }

    @Test func saslPlainLogsInBeforeRegistration() async throws {
        try await withServer { server in
            _ = try await server.user("nina", password: "password1")
            let irc = try await IRCTestClient.connect(server)
            try await irc.send("CAP LS 302")
            #expect(try await irc.expect("CAP").params.last?.split(separator: " ").contains("sasl=PLAIN") == true)
            try await irc.send("NICK temp")
            try await irc.send("USER nina 0 * :Nina")
            try await irc.send("CAP REQ :sasl")
            _ = try await irc.expect("CAP")
            try await irc.send("AUTHENTICATE PLAIN")
            #expect(try await irc.next() == IRCMessage("AUTHENTICATE", ["+"]))
            try await irc.send("AUTHENTICATE \(Self.plain("nina", "password1"))")
            #expect(try await irc.next().params == ["temp", "temp!nina@127.0.0.1", "nina", "You are now logged in as nina"])
            #expect(try await irc.next().command == "903")
            try await irc.send("CAP END")
            let welcome = try await irc.next()
            #expect(welcome.command == "001" && welcome.params.first == "temp")
            try await irc.send("WHOIS temp")
            #expect(try await irc.expect("330").params == ["temp", "temp", "nina", "is logged in as"])
        }
    }

    @Test func saslFailuresAndAborts() async throws {
        try await withServer { server in
            _ = try await server.user("omar", password: "password1")
            let irc = try await IRCTestClient.connect(server)
            try await irc.send("CAP REQ :sasl")
            _ = try await irc.expect("CAP")
            try await irc.send("AUTHENTICATE SCRAM-SHA-256")
            #expect(try await irc.next().command == "908")
            #expect(try await irc.next().command == "904")
            try await irc.send("AUTHENTICATE PLAIN")
            _ = try await irc.expect("AUTHENTICATE")
            try await irc.send("AUTHENTICATE \(Self.plain("omar", "wrong-password"))")
            #expect(try await irc.next().command == "904")
            try await irc.send("AUTHENTICATE PLAIN")
            _ = try await irc.expect("AUTHENTICATE")
            try await irc.send("AUTHENTICATE *")
            #expect(try await irc.next().command == "906")
        }
    }

    @Test func accountRegistrationBeforeConnect() async throws {
        try await withServer { server in
            let irc = try await IRCTestClient.connect(server)
            try await irc.send("CAP LS 302")
            #expect(try await irc.expect("CAP").params.last?.contains("draft/account-registration=before-connect") == true)
            try await irc.send("CAP REQ :draft/account-registration")
            _ = try await irc.expect("CAP")
            try await irc.send("NICK pia")
            try await irc.send("REGISTER * * short")
            #expect(try await irc.next().params.prefix(3) == ["REGISTER", "WEAK_PASSWORD", "pia"])
            try await irc.send("REGISTER * * password1")
            #expect(try await irc.next().params == ["SUCCESS", "pia", "Account created"])
            #expect(try await irc.next().command == "900")
            try await irc.send("USER pia 0 * :Pia")
            try await irc.send("CAP END")
            _ = try await irc.expect("001")
            // The account works from the line door too.
            _ = try await server.user("pia", password: "password1", register: false)
            let again = try await IRCTestClient.connect(server)
            try await again.send("NICK other")
            try await again.send("REGISTER pia * password2")
            #expect(try await again.next().params.prefix(3) == ["REGISTER", "ACCOUNT_EXISTS", "pia"])
        }
    }

    @Test func silentClientsArePingedThenCutOffAndUnregisteredOnesTimeOut() async throws {
        try await withServer({ $0.irc.pingInterval = .seconds(1); $0.irc.registrationTimeout = .seconds(1) }) { server in
            let answering = try await IRCTestClient.connect(server)
            try await answering.register("ana")
            let silent = try await IRCTestClient.connect(server)
            try await silent.register("sil")
            let lurker = try await IRCTestClient.connect(server)
            try await lurker.send("NICK lurk")

            // A registered client is pinged after a quiet interval; answering keeps it connected, and
            // it is pinged again after the next quiet interval.
            for _ in 1...2 {
                let ping = try await answering.expect("PING")
                try await answering.send("PONG :\(ping.params.last ?? "")")
            }
            try await answering.send("PING :still-here")
            #expect(try await answering.expect("PONG").params.last == "still-here")
            // One that does not answer is cut off after a second interval.
            _ = try await silent.expect("PING")
            #expect(try await silent.expect("ERROR").params.last?.contains("Ping timeout: 1 second") == true)
            // A connection that never finished registering is closed.
            #expect(try await lurker.expect("ERROR").params.last?.contains("Registration timed out") == true)
        }
    }

    @Test func nickServRegisterIdentifyLogoutAndTheGracePeriod() async throws {
        try await withServer({ $0.irc.nickGracePeriod = .milliseconds(300) }) { server in
            let quinn = try await IRCTestClient.connect(server)
            try await quinn.register("quinn")
            try await quinn.send("PRIVMSG NickServ :REGISTER password1")
            #expect(try await quinn.expect("NOTICE").params.last == "Account quinn registered; you are now logged in.")
            try await quinn.send("PRIVMSG NickServ :LOGOUT")
            #expect(try await quinn.expect("NICK").params.first?.hasPrefix("guest-") == true)
            #expect(try await quinn.expect("NOTICE").params.last?.hasPrefix("You are now logged out") == true)
            try await quinn.send("PRIVMSG NickServ :IDENTIFY quinn password1")
            // An IRC user keeps its nick when it logs in.
            #expect(try await quinn.next().command == "900")
            #expect(try await quinn.next().params.last == "You are now identified as quinn.")
            try await quinn.send("NICK quinn")
            #expect(try await quinn.expect("NICK").params == ["quinn"])
            try await quinn.send("QUIT")
            _ = try await quinn.expect("ERROR")

            // A guest may take the registered nick for the grace period, then is renamed.
            let squatter = try await IRCTestClient.connect(server)
            try await squatter.register("quinn")
            #expect(try await squatter.expect("NOTICE").params.last?.contains("Identify with /msg NickServ IDENTIFY") == true)
            let renamed = try await squatter.expect("NICK")
            #expect(renamed.source == "quinn!quinn@127.0.0.1" && renamed.params.first?.hasPrefix("guest-") == true)
            // The owner logging in takes the name back from a guest at once.
            let squatter2 = try await IRCTestClient.connect(server)
            try await squatter2.register("quinn")
            _ = try await server.user("quinn", password: "password1", register: false)
            #expect(try await squatter2.expect("NICK").params.first?.hasPrefix("guest-") == true)
        }
    }
}

@Suite(.timeLimit(.minutes(2))) struct IRCOperatorTests {
    @Test func operKillAndKickAnywhere() async throws {
        try await withServer({ $0.irc.operators = ["root": "hunter22"] }) { server in
            let boss = try await IRCTestClient.connect(server)
            try await boss.register("boss")
            let pest = try await IRCTestClient.connect(server)
            try await pest.register("pest")
            try await pest.send("JOIN #den")
            _ = try await pest.expect("366")
            try await boss.send("KILL pest :no")
            #expect(try await boss.next().command == "481")
            try await boss.send("OPER root wrong")
            #expect(try await boss.next().command == "464")
            try await boss.send("OPER nobody hunter22")
            #expect(try await boss.next().command == "491")
            try await boss.send("OPER root hunter22")
            #expect(try await boss.next().command == "381")
            try await boss.send("WHOIS boss")
            #expect(try await boss.expect("313").params == ["boss", "boss", "is an IRC operator"])
            // Not in #den and not its operator, but a server operator may kick there.
            try await boss.send("KICK #den pest :out")
            #expect(try await pest.expect("KICK").params == ["#den", "pest", "out"])
            try await boss.send("KILL pest :spamming")
            #expect(try await pest.expect("ERROR").params.first?.contains("Killed (boss (spamming))") == true)
            try await pest.connection.waitForClose()
            // LUSERS counts the operator for a newcomer, and stops counting it once it leaves.
            let newcomer = try await IRCTestClient.connect(server)
            #expect(try await newcomer.register("newcomer").first { $0.command == "252" }?.params.dropFirst().first == "1")
            await boss.close()
            let deadline = ContinuousClock.now + .seconds(10)
            while server.server.hub.online().contains(where: { $0.name == "boss" }) && ContinuousClock.now < deadline {
                try await Task.sleep(for: .milliseconds(10))
            }
            try await newcomer.send("LUSERS")
            #expect(try await newcomer.expect("252").params.dropFirst().first == "0")
        }
    }

    @Test func userNeedsARealNameAndPasswordsFollowThePolicy() async throws {
        try await withServer({ $0.minimumPasswordLength = 12 }) { server in
            let irc = try await IRCTestClient.connect(server)
            try await irc.send("NICK rae")
            try await irc.send("USER rae 0 * :")
            #expect(try await irc.next().params == ["rae", "USER", "Not enough parameters"])
            let line = try await server.client()
            #expect(try await line.command("/register rae password1") == "ERR bad-password A password must be at least 12 characters long.")
        }
    }
}

@Suite(.timeLimit(.minutes(2))) struct IRCv3NotifyTests {
    @Test func extendedJoinAccountTagAwayAndAccountNotify() async throws {
        try await withServer { server in
            _ = try await server.user("sam", password: "password1")
            let watcher = try await IRCTestClient.connect(server)
            try await watcher.send("CAP REQ :extended-join account-tag away-notify account-notify")
            try await watcher.send("NICK wat")
            try await watcher.send("USER wat 0 * :Watcher")
            try await watcher.send("CAP END")
            _ = try await watcher.readWelcome()
            try await watcher.send("JOIN #news")
            _ = try await watcher.expect("366")
            let sam = try await IRCTestClient.connect(server)
            try await sam.register("xx", pass: "sam:password1")
            try await sam.send("JOIN #news")
            let join = try await watcher.expect("JOIN")
            #expect(join.source == "xx!xx@127.0.0.1" && join.params == ["#news", "sam", "The real xx"])
            #expect(join.tag("account")?.value == "sam")
            try await sam.send("AWAY :lunch")
            #expect(try await watcher.expect("AWAY").serialized() == "@account=sam :xx!xx@127.0.0.1 AWAY lunch")
            try await sam.send("AWAY")
            #expect(try await watcher.expect("AWAY").params == [])
            try await sam.send("PRIVMSG NickServ :LOGOUT")
            let account = try await watcher.expect("ACCOUNT")
            #expect(account.params == ["*"])
        }
    }
}

@Suite(.timeLimit(.minutes(2))) struct IRCMessageTagsTests {
    @Test func messageIDsAndClientTagsReachTaggedClientsOnly() async throws {
        try await withServer { server in
            let tagged = try await IRCTestClient.connect(server)
            try await tagged.send("CAP REQ :message-tags echo-message")
            try await tagged.send("NICK tam")
            try await tagged.send("USER tam 0 * :Tam")
            try await tagged.send("CAP END")
            _ = try await tagged.readWelcome()
            let plain = try await IRCTestClient.connect(server)
            try await plain.register("pat")
            for client in [tagged, plain] {
                try await client.send("JOIN #t")
                _ = try await client.expect("366")
            }
            try await tagged.send("@+draft/react=👍;+x=y TAGMSG #t")
            let echo = try await tagged.expect("TAGMSG")
            #expect(echo.tag("+draft/react")?.value == "👍" && echo.tag("msgid") != nil)
            try await tagged.send("@+x=1 PRIVMSG #t :hello")
            let message = try await plain.expect("PRIVMSG")
            #expect(message.tags.isEmpty && message.params == ["#t", "hello"])
            let own = try await tagged.expect("PRIVMSG")
            #expect(own.tag("+x")?.value == "1")
            #expect(own.tag("msgid")?.value != echo.tag("msgid")?.value)
        }
    }
}

@Suite(.timeLimit(.minutes(2))) struct IRCLabeledResponseTests {
    @Test func labelsOnSingleRepliesBatchesAndAcks() async throws {
        try await withServer { server in
            let lab = try await IRCTestClient.connect(server)
            try await lab.send("CAP REQ :labeled-response batch echo-message")
            try await lab.send("NICK lab")
            try await lab.send("USER lab 0 * :Lab")
            try await lab.send("CAP END")
            _ = try await lab.readWelcome()
            try await lab.send("@label=p1 PING :tok")
            #expect(try await lab.next().serialized() == "@label=p1 :parley.test PONG parley.test tok")
            try await lab.send("@label=a1 PONG :x")
            #expect(try await lab.next().serialized() == "@label=a1 :parley.test ACK")
            try await lab.send("JOIN #l")
            _ = try await lab.expect("366")
            try await lab.send("@label=m1 PRIVMSG #l :hi")
            let echo = try await lab.next()
            #expect(echo.tag("label")?.value == "m1" && echo.command == "PRIVMSG" && echo.params == ["#l", "hi"])
            try await lab.send("@label=w1 WHOIS lab")
            let start = try await lab.next()
            #expect(start.command == "BATCH" && start.tag("label")?.value == "w1" && start.params.last == "labeled-response")
            let id = String(start.params[0].dropFirst())
            var inside: [IRCMessage] = []
            while true {
                let message = try await lab.next()
                if message.command == "BATCH" {
                    #expect(message.params == ["-" + id])
                    break
                }
                #expect(message.tag("batch")?.value == id)
                inside.append(message)
            }
            #expect(inside.first?.command == "311" && inside.last?.command == "318")
        }
    }
}

@Suite(.timeLimit(.minutes(2))) struct IRCVisibilityTests {
    @Test func whoxSecretChannelsAndInvisibleUsers() async throws {
        try await withServer { server in
            let eve = try await IRCTestClient.connect(server)
            try await eve.register("eve")
            let sid = try await IRCTestClient.connect(server)
            try await sid.register("sid")
            try await sid.send("WHO eve %tna,42")
            #expect(try await sid.next().params == ["sid", "42", "eve", "0"])
            #expect(try await sid.next().command == "315")
            try await eve.send("MODE eve +i")
            #expect(try await eve.next().serialized() == ":eve MODE eve +i")
            try await sid.send("WHO ev*")
            #expect(try await sid.next().command == "315")
            try await sid.send("WHO eve")
            #expect(try await sid.next().command == "352")
            try await eve.send("JOIN #hideout")
            _ = try await eve.expect("366")
            try await eve.send("MODE #hideout +s")
            _ = try await eve.expect("MODE")
            try await sid.send("LIST")
            var listed: [String] = []
            while true {
                let reply = try await sid.next()
                if reply.command == "323" { break }
                if reply.command == "322" { listed.append(reply.params[1]) }
            }
            #expect(!listed.contains("#hideout"))
            try await eve.send("LIST")
            #expect(try await eve.expect("322").params[1] == "#hideout")
            _ = try await eve.expect("323")
            try await sid.send("NAMES #hideout")
            #expect(try await sid.next().command == "366")
            try await eve.send("NAMES #hideout")
            #expect(try await eve.next().params == ["eve", "@", "#hideout", "@eve"])
            let line = try await server.client()
            #expect(try await line.listing("/rooms").contains { $0.hasPrefix("ROOM #hideout") } == false)
        }
    }
}

@Suite(.timeLimit(.minutes(2))) struct IRCExceptionListTests {
    @Test func banAndInviteExceptions() async throws {
        try await withServer { server in
            let op = try await IRCTestClient.connect(server)
            try await op.register("ops")
            let guest = try await IRCTestClient.connect(server)
            try await guest.register("gus")
            try await op.send("JOIN #x")
            _ = try await op.expect("366")
            try await op.send("MODE #x +ib *!*@* ")
            _ = try await op.expect("MODE")
            try await guest.send("JOIN #x")
            #expect(try await guest.next().command == "474")
            try await op.send("MODE #x +eI gus!*@* gus!*@*")
            #expect(try await op.expect("MODE").params == ["#x", "+eI", "gus!*@*", "gus!*@*"])
            try await op.send("MODE #x +e")
            #expect(try await op.next().params == ["ops", "#x", "gus!*@*"])
            #expect(try await op.next().command == "349")
            try await guest.send("JOIN #x")
            #expect(try await guest.next().serialized() == ":gus!gus@127.0.0.1 JOIN #x")
        }
    }
}

@Suite(.timeLimit(.minutes(2))) struct IRCListAndPasswordTests {
    @Test func listFiltersByMaskAndUserCount() async throws {
        try await withServer { server in
            let una = try await IRCTestClient.connect(server)
            try await una.register("una")
            for room in ["#chan1", "#chan2", "#other"] {
                try await una.send("JOIN \(room)")
                _ = try await una.expect("366")
            }
            func listed(_ filter: String) async throws -> [String] {
                try await una.send("LIST \(filter)")
                var rooms: [String] = []
                while true {
                    let reply = try await una.next()
                    if reply.command == "323" { return rooms.sorted() }
                    if reply.command == "322" { rooms.append(reply.params[1]) }
                }
            }
            #expect(try await listed("#ch*") == ["#chan1", "#chan2"])
            #expect(try await listed("!#ch*,<2") == ["#other"])
            #expect(try await listed(">0,*2") == ["#chan2"])
            #expect(try await listed(">1") == [])
        }
    }

    @Test func aServerPasswordIsRequiredWhenSet() async throws {
        try await withServer({ $0.irc.serverPassword = "letmein" }) { server in
            let wrong = try await IRCTestClient.connect(server)
            try await wrong.send("PASS nope")
            try await wrong.send("NICK wil")
            try await wrong.send("USER wil 0 * :W")
            #expect(try await wrong.next().command == "464")
            #expect(try await wrong.next().command == "ERROR")
            let right = try await IRCTestClient.connect(server)
            #expect(try await right.register("wil", pass: "letmein").first?.command == "001")
        }
    }
}

@Suite(.timeLimit(.minutes(2))) struct IRCInformationTests {
    @Test func motdVersionTimeNickChangeUserhostAndLabeledJoin() async throws {
        try await withServer({ $0.irc.motd = ["Be kind.", "Have fun."] }) { server in
            let ann = try await IRCTestClient.connect(server)
            let burst = try await ann.register("ann")
            #expect(burst.filter { $0.command == "372" }.map { $0.params.last } == ["- Be kind.", "- Have fun."])
            #expect(burst.last?.command == "376")
            try await ann.send("VERSION")
            #expect(try await ann.next().params.prefix(3) == ["ann", "parley-0.1", "parley.test"])
            _ = try await ann.expect("005")
            try await ann.send("TIME")
            let time = try await ann.expect("391")
            #expect(time.params[1] == "parley.test" && time.params[2].hasSuffix("Z"))
            let bo = try await IRCTestClient.connect(server)
            try await bo.register("bo")
            try await ann.send("NICK bo")
            #expect(try await ann.next().params == ["ann", "bo", "Nickname is already in use"])
            try await ann.send("NICK annie")
            #expect(try await ann.next().serialized() == ":ann!ann@127.0.0.1 NICK annie")
            try await bo.send("USERHOST annie nobody")
            #expect(try await bo.next().params == ["bo", "annie=+ann@127.0.0.1"])
            try await ann.send("CAP REQ :labeled-response batch")
            _ = try await ann.expect("CAP")
            try await ann.send("@label=j1 JOIN #lj")
            let start = try await ann.next()
            #expect(start.command == "BATCH" && start.tag("label")?.value == "j1")
            #expect(try await ann.next().command == "JOIN")
            #expect(try await ann.next().command == "353")
            #expect(try await ann.next().command == "366")
            #expect(try await ann.next().command == "BATCH")
        }
    }
}
