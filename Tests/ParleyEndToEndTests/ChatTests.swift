import Foundation
import ParleyClient
import ParleyServer
import Testing

@Suite(.timeLimit(.minutes(2))) struct ChatTests {
    @Test func welcomeLineTellsHowToGetHelpAndLeave() async throws {
        try await withServer { server in
            let client = try await LineClient.connect(host: "127.0.0.1", port: server.port)
            let welcome = try await client.nextLine()
            #expect(welcome.hasPrefix("WELCOME guest-"))
            #expect(welcome.contains("/help") && welcome.contains("/quit"))
            #expect(try await client.nextLine().hasPrefix("JOIN #lobby guest-"))
            let help = try await client.listing("/help")
            #expect(help.contains { $0.hasPrefix("HELP /register NAME PASSWORD") })
            #expect(help.last?.hasPrefix("OK help") == true)
            try await client.send("bye")
            #expect(try await client.expect(prefix: "BYE ").contains("Goodbye"))
            try await client.waitForClose()
        }
    }

    @Test func roomMessagesReachEveryMemberWithTheSenderAndNotOtherRooms() async throws {
        try await withServer { server in
            let alice = try await server.user("alice")
            let bob = try await server.user("bob")
            let carol = try await server.user("carol")
            for client in [alice, bob] {
                #expect(try await client.command("/join #dev") == "OK join You are now talking in #dev.")
            }
            _ = try await alice.expect(prefix: "JOIN #dev bob")
            try await alice.send("hello dev")
            #expect(try await bob.expect(prefix: "MSG #dev") == "MSG #dev alice: hello dev")
            #expect(try await alice.expect(prefix: "MSG #dev") == "MSG #dev alice: hello dev")
            try await alice.send("/me waves")
            #expect(try await bob.expect(prefix: "ACTION ") == "ACTION #dev alice waves")
            // carol, in #lobby only, gets nothing from #dev: her next chat line is her own lobby message.
            try await carol.send("lobby only")
            #expect(try await carol.expect(prefix: "MSG ") == "MSG #lobby carol: lobby only")
            #expect(try await bob.listing("/who").sorted() == ["OK who 2 in #dev.", "USER alice #lobby,#dev", "USER bob #lobby,#dev"])
            let rooms = try await carol.listing("/rooms")
            #expect(rooms == ["ROOM #dev 2", "ROOM #lobby 3", "OK rooms 2 rooms."])
            #expect(try await bob.command("/leave") == "OK leave You left #dev. You are now talking in #lobby.")
            #expect(try await alice.expect(prefix: "PART ") == "PART #dev bob")
        }
    }

    @Test func directMessages() async throws {
        try await withServer { server in
            let alice = try await server.user("alice")
            let bob = try await server.user("bob")
            let bobAgain = try await server.user("bob", register: false)
            try await alice.send("/msg BOB psst, bob")
            #expect(try await bob.expect(prefix: "DM ") == "DM from alice: psst, bob")
            #expect(try await bobAgain.expect(prefix: "DM ") == "DM from alice: psst, bob")
            #expect(try await alice.expect(prefix: "DM ") == "DM to bob: psst, bob")
            #expect(try await alice.command("/msg nobody hi") == "ERR no-such-user Nobody called nobody is online. Type /list to see who is.")
            #expect(try await alice.command("/msg bob") == "ERR usage Usage: /msg NAME TEXT")
            let online = try await alice.listing("/list")
            #expect(online.filter { $0.hasPrefix("USER bob ") }.count == 2)
            #expect(online.last == "OK list 3 online.")
        }
    }

    @Test func guestsChatUnlessLoginIsRequired() async throws {
        try await withServer { server in
            let guest = try await server.client()
            try await guest.send("hi from a guest")
            #expect(try await guest.expect(prefix: "MSG ").hasSuffix(": hi from a guest"))
        }
        try await withServer({ $0.requireLogin = true }) { server in
            let guest = try await server.client()
            #expect(try await guest.command("hi") == "ERR login-required This server requires an account to chat: /register NAME PASSWORD or /login NAME PASSWORD.")
            #expect(try await guest.command("/msg x hi").hasPrefix("ERR login-required "))
            try await guest.register("dora", "password1")
            try await guest.send("now I can")
            #expect(try await guest.expect(prefix: "MSG ") == "MSG #lobby dora: now I can")
        }
    }

    @Test func registrationAndLoginErrors() async throws {
        try await withServer { server in
            let alice = try await server.user("alice")
            let other = try await server.client()
            #expect(try await other.command("/register ALICE password1") == "ERR name-taken The name ALICE is already taken; choose another.")
            #expect(try await other.command("/register a password1").hasPrefix("ERR bad-name A name must be 2 to 20"))
            #expect(try await other.command("/register 9lives password1").hasPrefix("ERR bad-name A name must start with a letter"))
            #expect(try await other.command("/register guest-9 password1").hasPrefix("ERR bad-name Names starting with \"guest\""))
            #expect(try await other.command("/register zed short").hasPrefix("ERR bad-password A password must be at least 8"))
            #expect(try await other.command("/login alice wrong-password") == "ERR login-failed Unknown account or wrong password. Check both, or /register a new account.")
            #expect(try await other.command("/login nobody password1").hasPrefix("ERR login-failed "))
            #expect(try await other.command("/logout") == "ERR not-logged-in You are not logged in.")
            #expect(try await other.command("/nick alice") == "ERR name-taken The name alice is already taken; choose another.")
            #expect(try await other.command("/nick zed") == "OK nick You are now called zed.")
            #expect(try await alice.command("/login alice password1") == "ERR already-logged-in You are already logged in as alice; /logout first.")
            let logout = try await alice.command("/logout")
            #expect(logout.hasPrefix("OK logout You are logged out and now called guest-"))
            #expect(try await alice.command("/login Alice password1") == "OK login You are now logged in as alice.")
        }
    }

    @Test func linesSentRightAfterLoginAreHandledAsTheNewUser() async throws {
        try await withServer { server in
            _ = try await server.user("alice")
            let client = try await server.client()
            try await client.sendRaw(Array("/login alice password1\nfirst words\n".utf8))
            _ = try await client.expect(prefix: "OK login")
            #expect(try await client.expect(prefix: "MSG ") == "MSG #lobby alice: first words")
        }
    }

    @Test func repeatedFailedLoginsAreSlowedDown() async throws {
        try await withServer { server in
            _ = try await server.user("alice")
            let attacker = try await server.client()
            for _ in 0..<2 { _ = try await attacker.command("/login alice wrong-guess") }
            // The clock starts before the 3rd failure, from which the waits are counted.
            let clock = ContinuousClock()
            let start = clock.now
            for _ in 0..<3 {
                #expect(try await attacker.command("/login alice wrong-guess").hasPrefix("ERR login-failed"))
            }
            // The 4th and 5th attempts wait 0.5 s and 1 s after the failure before them.
            #expect(clock.now - start >= .milliseconds(1500))
            #expect(server.server.hub.throttle.failures(for: "account:alice") == 5)
        }
    }

    @Test func aLineWithNoTerminatorIsAnsweredAfterTheQuietPeriod() async throws {
        try await withServer { server in
            let client = try await server.client()
            try await client.sendRaw(Array("hi there".utf8))
            #expect(try await client.expect(prefix: "MSG ").hasSuffix(": hi there"))
            // Split across writes within the quiet period: still one line.
            try await client.sendRaw(Array("/rooms".utf8))
            #expect(try await client.expect(prefix: "OK ") == "OK rooms 1 room.")
        }
    }

    @Test func badInputGetsErrorsAndEveryoneElseCarriesOn() async throws {
        try await withServer { server in
            let bystander = try await server.client()
            let bad = try await server.client()
            try await bad.send(String(repeating: "x", count: 9000))
            #expect(try await bad.expect(prefix: "ERR ").hasPrefix("ERR line-too-long Lines may be at most 8192 bytes"))
            try await bad.sendRaw([0xFF, 0xFE, 0x00, 0xC3, 0x28, 0x0A])
            #expect(try await bad.expect(prefix: "ERR ") == "ERR invalid-utf8 That line was not valid UTF-8 text and was ignored.")
            #expect(try await bad.command("/dance") == "ERR unknown-command Unknown command /dance. Type /help for the list of commands.")
            #expect(try await bad.command("/join lobby").hasPrefix("ERR bad-room "))
            // Binary garbage with line ends in it: each bad line answered, nothing crashes.
            var garbage: [UInt8] = []
            for i in 0..<4096 { garbage.append(UInt8(truncatingIfNeeded: i &* 131 &+ 7)) }
            try await bad.sendRaw(garbage + [0x0A])
            // A client that vanishes mid-line.
            let vanishing = try await server.client()
            try await vanishing.sendRaw(Array("half a li".utf8))
            await vanishing.close()
            try await bystander.send("still here")
            // The vanishing client's "half a li" may come first: a partial line is taken as a line
            // once the quiet period passes, and on a slow machine that can precede the close.
            _ = try await bystander.expect("the echo of still here") { $0.hasPrefix("MSG ") && $0.hasSuffix(": still here") }
            try await bad.send("me too")
            _ = try await bad.expect("the echo of me too") { $0.hasPrefix("MSG ") && $0.hasSuffix(": me too") }
        }
    }

    @Test func aFloodIsSlowedDownAndNothingIsLost() async throws {
        try await withServer({ $0.line.floodBurst = 20; $0.line.floodRate = 200 }) { server in
            let flooder = try await server.client()
            let listener = try await server.client()
            var burst = ""
            for i in 0..<100 { burst += "flood \(i)\n" }
            try await flooder.sendRaw(Array(burst.utf8))
            #expect(try await flooder.expect(prefix: "INFO ").contains("being delayed"))
            for i in 0..<100 {
                #expect(try await listener.expect(prefix: "MSG ").hasSuffix(": flood \(i)"))
            }
        }
    }

    /// A connection handles a turn's share of lines and waits for the loop's next turn for the rest.
    @Test func aBurstIsHandledWholeAndInOrderAcrossTurns() async throws {
        try await withServer({ $0.line.floodRate = 0 }) { server in
            let sender = try await server.client()
            let listener = try await server.client()
            var burst = ""
            for i in 0..<150 { burst += "burst \(i)\n" }
            try await sender.sendRaw(Array(burst.utf8))
            for i in 0..<150 {
                #expect(try await listener.expect(prefix: "MSG ").hasSuffix(": burst \(i)"))
            }
        }
    }

    @Test func aClientThatStopsReadingIsDisconnectedAndOthersContinue() async throws {
        try await withServer({ $0.outboundLimit = 64 * 1024; $0.line.floodRate = 0 }) { server in
            let slow = try await LineClient.connect(host: "127.0.0.1", port: server.port, receiveBufferSize: 4096)
            _ = try await slow.expect(prefix: "WELCOME ")
            let slowName = try await slow.expect(prefix: "JOIN #lobby ").split(separator: " ")[2]
            await slow.pauseReading()
            let sender = try await server.client()
            let other = try await server.client()
            let text = String(repeating: "z", count: 4000)
            var partLine: String?
            for i in 0..<2000 where partLine == nil {
                try await sender.send("\(i) \(text)")
                _ = try await sender.expect(prefix: "MSG ")
                // Everyone else keeps getting every message while the slow reader's queue fills.
                let line = try await other.expect("MSG or QUIT") { $0.hasPrefix("MSG ") || $0.hasPrefix("QUIT ") }
                if line.hasPrefix("QUIT ") {
                    partLine = line
                    _ = try await other.expect(prefix: "MSG ")
                }
            }
            if partLine == nil { partLine = try await other.expect(prefix: "QUIT ", timeout: .seconds(15)) }
            #expect(partLine == "QUIT \(slowName)")
            #expect(server.server.hub.members(of: "#lobby")?.contains { $0.name == slowName } == false)
            await slow.resumeReading()
            try await slow.waitForClose(timeout: .seconds(15))
        }
    }

    @Test func theMessageCounterIsExactUnderConcurrency() async throws {
        let clients = 10, messages = 100
        try await withServer { server in
            var connected: [LineClient] = []
            for _ in 0..<clients { connected.append(try await server.client()) }
            try await withThrowingTaskGroup(of: Void.self) { group in
                for (n, client) in connected.enumerated() {
                    group.addTask {
                        for m in 0..<messages { try await client.send("c\(n) m\(m)") }
                        // Every client sees every message, its own included.
                        for _ in 0..<(clients * messages) { _ = try await client.expect(prefix: "MSG ") }
                    }
                }
                try await group.waitForAll()
            }
            #expect(server.server.hub.counters.messagesRelayed.load(ordering: .relaxed) == clients * messages)
            let count = Console(hub: server.server.hub, log: server.server.log).execute("count")
            let log = try #require(server.server.log)
            // Every message was stored before it was published.
            let transactions = log.transactions.load(ordering: .relaxed)
            #expect(count == .output(["clients \(clients) rooms 1 messages \(clients * messages) deliveries \(server.server.hub.counters.deliveries.load(ordering: .relaxed)) connections-total \(clients) stored \(clients * messages) transactions \(transactions) pruned 0"]))
        }
    }

    @Test func everyMemberSeesTheSameOrder() async throws {
        try await withServer { server in
            var members: [LineClient] = []
            for _ in 0..<4 { members.append(try await server.client()) }
            try await withThrowingTaskGroup(of: Void.self) { group in
                for (n, client) in members.enumerated() {
                    group.addTask { for m in 0..<50 { try await client.send("o\(n)-\(m)") } }
                }
                try await group.waitForAll()
            }
            var orders: [[String]] = []
            for client in members {
                var order: [String] = []
                for _ in 0..<200 { order.append(try await client.expect(prefix: "MSG ")) }
                orders.append(order)
            }
            for order in orders.dropFirst() { #expect(order == orders[0]) }
        }
    }
}
