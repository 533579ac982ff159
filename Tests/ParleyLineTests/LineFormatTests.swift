import Foundation
import NIOCore
import Testing
@testable import ParleyLine
import ParleyCore

@Suite struct LineFormatTests {
    func render(_ event: HubEvent) -> String {
        String(buffer: LineFormat.shared.render(event) ?? ByteBuffer())
    }

    @Test func chatLinesCarryRoomAndSender() {
        let message = RoomMessage(room: "#dev", sender: "alice", text: "hi: there", kind: .say, sequence: 1, time: Date())
        #expect(render(.message(message)) == "MSG #dev alice: hi: there\n")
        let action = RoomMessage(room: "#dev", sender: "alice", text: "waves", kind: .action, sequence: 2, time: Date())
        #expect(render(.message(action)) == "ACTION #dev alice waves\n")
    }

    @Test func directMessagesAndEchoes() {
        #expect(render(.direct(from: "alice", to: "bob", text: "psst", echo: false)) == "DM from alice: psst\n")
        #expect(render(.direct(from: "alice", to: "bob", text: "psst", echo: true)) == "DM to bob: psst\n")
    }

    @Test func membershipAndNotices() {
        #expect(render(.joined(room: "#dev", name: "bob")) == "JOIN #dev bob\n")
        #expect(render(.parted(room: "#dev", name: "bob", reason: nil)) == "PART #dev bob\n")
        #expect(render(.parted(room: "#dev", name: "bob", reason: "lunch")) == "PART #dev bob lunch\n")
        #expect(render(.renamed(old: "guest-1", new: "alice")) == "NICK guest-1 alice\n")
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
