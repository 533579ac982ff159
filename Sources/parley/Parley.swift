import ArgumentParser
import Foundation

@main
struct Parley: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "parley",
        abstract: "A multi-client chat server, its terminal client and its load tester.",
        subcommands: [Serve.self, Chat.self, Load.self, Backup.self]
    )

    static func main() async {
        // A parent (a test runner, a supervisor) may have left SIGINT/SIGTERM blocked; threads inherit
        // the mask, so unblock before any thread starts or a clean shutdown could never be asked for.
        var shutdownSignals = sigset_t()
        sigemptyset(&shutdownSignals)
        sigaddset(&shutdownSignals, SIGINT)
        sigaddset(&shutdownSignals, SIGTERM)
        pthread_sigmask(SIG_UNBLOCK, &shutdownSignals, nil)
        do {
            var command = try parseAsRoot()
            if var asyncCommand = command as? any AsyncParsableCommand {
                try await asyncCommand.run()
            } else {
                try command.run()
            }
        } catch {
            exit(withError: error)
        }
    }
}
