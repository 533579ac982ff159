import Testing
@testable import ParleyServer

@Suite struct PasswordHashingTests {
    @Test func sha256MatchesTheStandardVectors() {
        #expect(SHA256.hex([]) == "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855")
        #expect(SHA256.hex(Array("abc".utf8)) == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad")
        #expect(SHA256.hex(Array("abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq".utf8))
                == "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1")
        #expect(SHA256.hex(Array(repeating: UInt8(ascii: "a"), count: 1000)).hasPrefix("41edece42d63e8d9"))
    }

    @Test func everyByteOfALongPasswordCounts() async throws {
        try await withServer { server in
            let long = String(repeating: "bar", count: 100)
            _ = try await server.user("lena", password: long)
            _ = try await server.user("lena", password: long, register: false)
            let other = try await server.client()
            #expect(try await other.command("/login lena \(long.dropLast())x").hasPrefix("ERR login-failed"))
        }
    }
}
