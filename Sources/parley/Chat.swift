import ArgumentParser
import ParleyClient

/// `parley chat`: the interactive terminal client (the logic lives in `ParleyClient.runChat`).
struct Chat: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "chat",
        abstract: "Chat with a Parley server from the terminal (through its line door).",
        discussion: """
            Lines you type are sent as they are (messages, or /commands such as /join #room, /msg NAME \
            TEXT, /help). /quit or the end of input (Ctrl-D) leaves.
            """
    )

    @Option(help: "The server's host.")
    var host = "127.0.0.1"

    @Option(help: "The port of the server's line door.")
    var port = 5555

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
        let status = await runChat(
            ChatOptions(host: host, port: port, user: user, passwordFile: passwordFile, register: register)
        )
        if status != 0 {
            throw ExitCode(status)
        }
    }
}
