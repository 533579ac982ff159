import Testing
@testable import ParleyLine
import ParleyCore

@Suite struct LineParserTests {
    func parse(_ line: String) -> LineCommand? {
        guard case .success(let command) = LineParser.parse(line) else { return nil }
        return command
    }

    func failure(_ line: String) -> LineParseError? {
        guard case .failure(let error) = LineParser.parse(line) else { return nil }
        return error
    }

    @Test func plainTextIsAMessage() {
        #expect(parse("hello there") == .say("hello there"))
        #expect(parse("  spaced  ") == .say("  spaced  "))
    }

    @Test func blankLinesAreNothing() {
        #expect(LineParser.parse("") == .success(nil))
        #expect(LineParser.parse("   ") == .success(nil))
    }

    @Test func everyCommandParses() {
        #expect(parse("/help") == .help)
        #expect(parse("/register alice secret123") == .register(name: "alice", password: "secret123"))
        #expect(parse("/LOGIN alice secret123") == .login(name: "alice", password: "secret123"))
        #expect(parse("/logout") == .logout)
        #expect(parse("/nick zed") == .nick("zed"))
        #expect(parse("/join #dev") == .join("#dev"))
        #expect(parse("/leave") == .leave(nil))
        #expect(parse("/leave #dev") == .leave("#dev"))
        #expect(parse("/rooms") == .rooms)
        #expect(parse("/who") == .who(nil))
        #expect(parse("/who #dev") == .who("#dev"))
        #expect(parse("/list") == .list)
        #expect(parse("/msg bob hi  there ") == .msg(to: "bob", text: "hi  there"))
        #expect(parse("/me waves") == .me("waves"))
        #expect(parse("/say /not a command") == .say("/not a command"))
        #expect(parse("/quit") == .quit(nil))
        #expect(parse("/quit see you") == .quit("see you"))
        #expect(parse("/ping") == .ping(nil))
        #expect(parse("/PING 42") == .ping("42"))
        #expect(failure("/ping a b") == .usage(command: "ping", form: "/ping [TOKEN]"))
    }

    @Test func byeAndExitQuit() {
        #expect(parse("bye") == .quit(nil))
        #expect(parse("EXIT") == .quit(nil))
        #expect(parse("bye everyone") == .say("bye everyone"))
        #expect(parse(" \tBye  ") == .quit(nil))
        #expect(parse("byé") == .say("byé"))
    }

    /// Spaces and tabs around a command go, whatever the text next to them is written in.
    @Test func commandsAreTrimmedAroundAnyText() {
        #expect(parse("\t/me  waves à Zoë\t ") == .me("waves à Zoë"))
        #expect(parse("  /msg bob 日本  ") == .msg(to: "bob", text: "日本"))
        #expect(parse("/say é") == .say("é"))
    }

    @Test func wrongArgumentsGiveTheUsage() {
        #expect(failure("/register alice") == .usage(command: "register", form: "/register NAME PASSWORD"))
        #expect(failure("/join") == .usage(command: "join", form: "/join #room"))
        #expect(failure("/msg bob") == .usage(command: "msg", form: "/msg NAME TEXT"))
        #expect(failure("/me") == .usage(command: "me", form: "/me ACTION"))
        #expect(failure("/logout now") == .usage(command: "logout", form: "/logout"))
    }

    @Test func unknownCommand() {
        #expect(failure("/dance wildly") == .unknownCommand("dance"))
    }

    @Test func everyErrorHasACodeAndAnInstruction() {
        let line = LineReply.error(LineParseError.unknownCommand("x"))
        #expect(line == "ERR unknown-command Unknown command /x. Type /help for the list of commands.")
        #expect(LineReply.error(HubError.noSuchUser("bob")) == "ERR no-such-user Nobody called bob is online. Type /list to see who is.")
        #expect(LineReply.error(HubError.loginRequired).hasPrefix("ERR login-required "))
    }
}
