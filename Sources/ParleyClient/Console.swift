#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif

/// Small, unbuffered terminal helpers shared by `parley chat` and `parley load`.
///
/// Everything is written with `write(2)` straight to the file descriptor, so output from several tasks
/// never sits in a stdio buffer (and nothing here touches the C globals `stdout`/`stderr`, which are
/// not concurrency-safe to reference in Swift 6).
enum Console {
    /// Writes `text` followed by a newline to standard output.
    static func out(_ text: String) {
        writeAll(STDOUT_FILENO, text + "\n")
    }

    /// Writes `text` followed by a newline to standard error.
    static func err(_ text: String) {
        writeAll(STDERR_FILENO, text + "\n")
    }

    /// Writes exactly `text` (no newline added) to standard output.
    static func rawOut(_ text: String) {
        writeAll(STDOUT_FILENO, text)
    }

    /// Writes exactly `text` (no newline added) to standard error.
    static func rawErr(_ text: String) {
        writeAll(STDERR_FILENO, text)
    }

    static func writeAll(_ fd: Int32, _ text: String) {
        var text = text
        text.withUTF8 { bytes in
            guard let base = bytes.baseAddress else { return }
            var offset = 0
            while offset < bytes.count {
                let written = write(fd, base + offset, bytes.count - offset)
                if written < 0 {
                    if errno == EINTR { continue }
                    return  // the terminal or pipe is gone; nothing sensible to do
                }
                offset += written
            }
        }
    }
}

/// Whether standard output is a terminal (`isatty(1)`); `parley load` shows its progress line only then.
public func isStandardOutputTerminal() -> Bool {
    isatty(STDOUT_FILENO) != 0
}

/// Whether standard input is a terminal (`isatty(0)`).
public func isStandardInputTerminal() -> Bool {
    isatty(STDIN_FILENO) != 0
}
