import ArgumentParser
import ParleyClient
import ParleyUDP

/// `parley chat`: the interactive terminal client (the logic lives in `ParleyClient.runChat`).
struct Chat: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "chat",
        abstract: "Chat with a Parley server from the terminal (through its line door, or its UDP door with --udp).",
        discussion: """
            Lines you type are sent as they are (messages, or /commands such as /join #room, /msg NAME \
            TEXT, /help). /quit or the end of input (Ctrl-D) leaves.
            """
    )

    @Option(help: "The server's host.")
    var host = "127.0.0.1"

    @Option(help: "The port of the server's line door (or UDP door with --udp).")
    var port = 5555

    @OptionGroup var datagrams: UDPFlags

    @Option(help: "Log in as NAME (the password is asked for, or read from --password-file).")
    var user: String?

    @Option(help: "Read the password from the first line of FILE.", completion: .file())
    var passwordFile: String?

    @Flag(help: "Create the account --user instead of logging in.")
    var register = false

    func validate() throws {
        if user == nil && register {
            throw ValidationError("--register needs --user NAME.")
        }
        if user == nil && passwordFile != nil {
            throw ValidationError("--password-file needs --user NAME.")
        }
        guard (1...65535).contains(port) else {
            throw ValidationError("--port must be between 1 and 65535.")
        }
    }

    func run() async throws {
        var options = ChatOptions(host: host, port: port, user: user, passwordFile: passwordFile, register: register)
        options.transport = datagrams.transport()
        let status = await runChat(options)
        if status != 0 {
            throw ExitCode(status)
        }
    }
}

/// The client commands' choice of door: `--udp`, with `--loss` and `--seed` for a loss test.
struct UDPFlags: ParsableArguments {
    @Flag(help: "Use the server's UDP door: the same chat over datagrams with acknowledgements.")
    var udp = false

    @Option(help: "With --udp: the fraction of datagrams to drop on purpose in each direction, 0 to 1.")
    var loss = 0.0

    @Option(help: "With --udp: a seed that makes --loss repeatable.")
    var seed: UInt64?

    func validate() throws {
        guard (0...1).contains(loss) else { throw ValidationError("--loss must be from 0 to 1, for example 0.3; got \(loss).") }
        if !udp && (loss > 0 || seed != nil) { throw ValidationError("--loss and --seed go with --udp.") }
    }

    func transport(counters: UDPCounters? = nil) -> LineTransport {
        udp ? .udp(UDPClientOptions(loss: loss, seed: seed, counters: counters)) : .tcp
    }
}
