import ArgumentParser
import GGUF
#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// Shared helpers for the subcommands: opening files with one-line errors.
enum CLI {
    /// Opens a GGUF file; failures become `error: …` and exit status 1.
    static func open(_ path: String, storage: GGUFFile.Storage = .mapped) throws -> GGUFFile {
        do { return try GGUFFile(path: path, storage: storage) } catch { throw CLIError(String(describing: error)) }
    }
}

extension CLI {
    /// `text` with control characters (terminal escapes, NUL bytes from a hostile file) written as `\u{1B}`, so that
    /// what a file says can neither drive the terminal nor hide itself; newlines are kept unless `oneLine`.
    static func printable(_ text: String, oneLine: Bool = true) -> String {
        var out = ""
        for scalar in text.unicodeScalars {
            let v = scalar.value
            if (v < 0x20 && !(v == 0x0A && !oneLine) && v != 0x09) || (0x7F...0x9F).contains(v) {
                out += "\\u{" + String(v, radix: 16, uppercase: true) + "}"
            } else {
                out.unicodeScalars.append(scalar)
            }
        }
        return out
    }
}

/// An error the CLI prints as `error: <message>` before exiting with status 1.
struct CLIError: Error, CustomStringConvertible {
    let description: String
    init(_ message: String) { description = message }
}

extension CLI {
    /// Prints `error: message` on standard error and exits with status 1.
    static func fail(_ message: String) -> Never {
        printError("error: " + message)
        exit(1)
    }

    static func printError(_ message: String) {
        var text = printable(message) + "\n"
        fflush(stdout)  // what was printed before comes first where both streams go to one place (`2>&1`)
        text.withUTF8 { _ = fwrite($0.baseAddress, 1, $0.count, stderr) }
    }
}

extension CLI {
    static var coreCount: Int { max(1, Int(sysconf(Int32(_SC_NPROCESSORS_ONLN)))) }
}

import Kernels

extension BLAS {
    static func setThreadsIfGiven(_ n: Int?) { setThreads(n ?? CLI.coreCount) }
}
