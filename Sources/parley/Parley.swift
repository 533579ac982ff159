import ArgumentParser

@main
struct Parley: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "parley",
        abstract: "A multi-client chat server, its terminal client and its load tester.",
        subcommands: [Serve.self, Chat.self, Load.self]
    )
}
