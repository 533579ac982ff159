import Foundation
import NIOCore
import Testing
@testable import ParleyLine
import ParleyCore

@Suite struct LineFormatTests {
    let alice = Speaker(name: "alice", user: "alice", host: "127.0.0.1", account: "alice")
    let bob = Speaker(name: "bob", user: "b", host: "::1", account: nil)

    func render(_ event: HubEvent) -> String {
        String(buffer: LineFormat.shared.render(event) ?? ByteBuffer())
    }

    @Test func chatLinesCarryRoomAndSender() {
        let message = RoomMessage(room: "#dev", sender: alice, text: "hi: there", kind: .say, sequence: 1, time: Date())
        #expect(render(.message(message)) == "MSG #dev alice: hi: there\n")
        let action = RoomMessage(room: "#dev", sender: alice, text: "waves", kind: .action, sequence: 2, time: Date())
        #expect(render(.message(action)) == "ACTION #dev alice waves\n")
        let notice = RoomMessage(room: "#dev", sender: alice, text: "fyi", kind: .notice, sequence: 3, time: Date())
        #expect(render(.message(notice)) == "MSG #dev alice: fyi\n")
        // Written straight into the buffer, the line reads as the text form does, in any script.
        let zoe = Speaker(name: "Zoë", user: "z", host: "::1", account: nil)
        for kind in [MessageKind.say, .action, .notice] {
            let message = RoomMessage(room: "#café", sender: zoe, text: "日本語 ok", kind: kind, sequence: 4, time: Date())
            #expect(render(.message(message)) == (LineFormat.text(of: .message(message)) ?? "") + "\n")
        }
        let typing = RoomMessage(room: "#dev", sender: alice, text: "", kind: .tagOnly, sequence: 5, time: Date())
        #expect(LineFormat.shared.render(.message(typing)) == nil)
    }

    @Test func directMessagesAndEchoes() {
        #expect(render(.direct(DirectMessage(from: alice, to: "bob", text: "psst", kind: .say, echo: false))) == "DM from alice: psst\n")
        #expect(render(.direct(DirectMessage(from: alice, to: "bob", text: "psst", kind: .say, echo: true))) == "DM to bob: psst\n")
    }

    @Test func membershipAndNotices() {
        #expect(render(.joined(room: "#dev", who: bob)) == "JOIN #dev bob\n")
        #expect(render(.parted(room: "#dev", who: bob, reason: nil)) == "PART #dev bob\n")
        #expect(render(.parted(room: "#dev", who: bob, reason: "lunch")) == "PART #dev bob lunch\n")
        #expect(render(.renamed(old: Speaker(name: "guest-1", user: "guest-1", host: "h", account: nil), new: "alice")) == "NICK guest-1 alice\n")
        #expect(render(.topicChanged(room: "#dev", by: alice, text: "ship it")) == "TOPIC #dev alice: ship it\n")
        #expect(render(.modesChanged(room: "#dev", by: alice, changes: [.init(true, .op, "bob"), .init(false, .moderated)])) == "MODE #dev alice +o-m bob\n")
        #expect(render(.kicked(room: "#dev", by: alice, target: "bob", reason: "spam")) == "KICK #dev alice bob spam\n")
        #expect(render(.invited(room: "#dev", by: alice, target: "bob")) == "INVITE #dev alice\n")
        #expect(render(.notice("maintenance at noon")) == "NOTICE server: maintenance at noon\n")
        #expect(render(.goodbye(.shutdown)).hasPrefix("BYE "))
        #expect(render(.goodbye(.kicked(reason: "spam"))) == "BYE You were disconnected by the server operator: spam\n")
    }

    @Test func listings() {
        #expect(LineReply.room(RoomInfo(name: "#lobby", memberCount: 3)) == "ROOM #lobby 3")
        #expect(LineReply.user("alice", rooms: ["#a", "#b"]) == "USER alice #a,#b")
        #expect(LineReply.user("alice", rooms: []) == "USER alice -")
        let help = LineReply.help()
        #expect(help.last?.hasPrefix("OK help") == true)
        #expect(help.count == LineParser.commands.count + 1)
    }
}
