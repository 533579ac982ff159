import NIOCore
import Testing
@testable import ParleyCore

@Suite struct LineFramerTests {
    func lines(_ chunks: [String], max: Int = 8192) -> [String] {
        var framer = LineFramer(maxLineLength: max)
        var out: [String] = []
        for chunk in chunks {
            framer.append(ByteBuffer(string: chunk))
            while let framed = framer.next() {
                switch framed {
                case .line(let bytes): out.append(String(buffer: bytes))
                case .tooLong: out.append("<too long>")
                }
            }
        }
        return out
    }

    @Test func splitsOnLFAndCRLF() {
        #expect(lines(["a\nb\r\nc\n"]) == ["a", "b", "c"])
    }

    @Test func bareCRIsNotALineEnd() {
        #expect(lines(["a\rb\n"]) == ["a\rb"])
    }

    @Test func joinsALineSplitAcrossReads() {
        #expect(lines(["hel", "lo wor", "ld\r", "\nnext\n"]) == ["hello world", "next"])
    }

    @Test func keepsAPartialLineUntilTheQuietPeriodEndsIt() {
        var framer = LineFramer()
        framer.append(ByteBuffer(string: "hi"))
        #expect(framer.next() == nil)
        #expect(framer.hasPartialLine)
        framer.terminatePartialLine()
        #expect(framer.next() == .line(ByteBuffer(string: "hi")))
        #expect(!framer.hasPartialLine)
    }

    @Test func lineOfExactlyTheLimitPasses() {
        let line = String(repeating: "x", count: 16)
        #expect(lines([line + "\r\n"], max: 16) == [line])
    }

    @Test func overLongLineIsReportedOnceAndTheNextLineSurvives() {
        let long = String(repeating: "x", count: 40)
        #expect(lines([long + "\nok\n"], max: 16) == ["<too long>", "ok"])
        // Arriving in pieces with no line ending: reported as soon as it passes the limit, once.
        #expect(lines(["xxxxxxxxxxxx", "xxxxxxxxxxxx", "xxxxxxxxxxxx", "xx\nok\n"], max: 16) == ["<too long>", "ok"])
    }

    @Test func quietPeriodAfterAnOverLongPartialStartsAFreshLine() {
        var framer = LineFramer(maxLineLength: 4)
        framer.append(ByteBuffer(string: "xxxxxxxxxx"))
        #expect(framer.next() == .tooLong)
        framer.terminatePartialLine()
        framer.append(ByteBuffer(string: "ok\n"))
        #expect(framer.next() == .line(ByteBuffer(string: "ok")))
    }

    @Test func theTailOfAnOverLongLineIsNotTakenAsALine() {
        var framer = LineFramer(maxLineLength: 4)
        framer.append(ByteBuffer(string: "xxxxxxxxxx"))
        #expect(framer.next() == .tooLong)
        framer.append(ByteBuffer(string: "tail"))
        #expect(framer.next() == nil)
        framer.terminatePartialLine()
        #expect(framer.next() == nil)
        framer.append(ByteBuffer(string: "ok\n"))
        #expect(framer.next() == .line(ByteBuffer(string: "ok")))
    }

    @Test func emptyLinesAreLines() {
        #expect(lines(["\n\r\n"]) == ["", ""])
    }
}
