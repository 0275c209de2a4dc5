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
    static func open(_ path: String) throws -> GGUFFile {
        do { return try GGUFFile(path: path) } catch { throw CLIError(String(describing: error)) }
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
        var text = message + "\n"
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
