import ParleyClient
import ParleyServer
import Testing

@Suite struct ListenAddressTests {
    @Test func parsesHostsAndPorts() throws {
        #expect(try ListenAddress(parsing: "line://127.0.0.1:5555") == ListenAddress(scheme: .line, host: "127.0.0.1", port: 5555))
        #expect(try ListenAddress(parsing: "LINE://[::1]:0") == ListenAddress(scheme: .line, host: "::1", port: 0))
        #expect(try ListenAddress(parsing: "line://0.0.0.0:7000").description == "line://0.0.0.0:7000")
        #expect(ListenAddress(scheme: .line, host: "::", port: 1).description == "line://[::]:1")
        #expect(try ListenAddress(parsing: "udp://127.0.0.1:5555") == ListenAddress(scheme: .udp, host: "127.0.0.1", port: 5555))
        #expect(ListenAddress.defaults.map(\.description) == ["line://127.0.0.1:5555", "irc://127.0.0.1:6667", "udp://127.0.0.1:5555"])
    }

    @Test(arguments: [
        ("127.0.0.1:5555", "no scheme"),
        ("gopher://127.0.0.1:70", "unknown scheme \"gopher\""),
        ("line://127.0.0.1", "missing port"),
        ("line://127.0.0.1:99999", "the port must be a number from 0 to 65535"),
        ("line://::1:5", "an IPv6 address must be in brackets"),
        ("line://[::1:5", "missing ']'"),
        ("line://:5", "missing host"),
    ])
    func rejectsWhatItCannotUse(_ text: String, _ why: String) {
        #expect {
            _ = try ListenAddress(parsing: text)
        } throws: { error in
            "\(error)".contains(why) && "\(error)".contains("for example line://127.0.0.1:5555")
        }
    }

    @Test func servesOnIPv6Loopback() async throws {
        try await withServer({ $0.listeners = [ListenAddress(scheme: .line, host: "::1", port: 0)] }) { server in
            let client = try await LineClient.connect(host: "::1", port: server.port)
            #expect(try await client.nextLine().hasPrefix("WELCOME "))
        }
    }

    @Test func servesUDPOnIPv6Loopback() async throws {
        try await withServer({ $0.listeners = [ListenAddress(scheme: .udp, host: "::1", port: 0)] }) { server in
            let client = try await LineClient.connect(host: "::1", port: server.port, transport: .udp(UDPClientOptions()))
            #expect(try await client.nextLine().hasPrefix("WELCOME "))
            #expect(server.server.hub.online().first?.address.hasPrefix("[::1]:") == true)
            await client.close()
        }
    }
}
