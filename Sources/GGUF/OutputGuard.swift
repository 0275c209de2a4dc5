#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif

/// The one check every command that writes runs before any long work: no output may be one of the inputs (the
/// same file by device and inode, whatever its name), two outputs may not be the same file, an output that exists
/// must be a regular file (or a directory where one is written), and its folder must be writable.
public enum OutputGuard {
    public struct File: Sendable {
        /// What the file is, for the error ("--lora-out", "the model").
        public var role: String
        public var path: String
        /// The output is a directory (a PEFT adapter); the files it would write inside are listed in `contents`.
        public var isDirectory = false
        public var contents: [String] = []
        public init(_ role: String, _ path: String, directory: Bool = false, contents: [String] = []) {
            self.role = role
            self.path = path
            isDirectory = directory
            self.contents = contents
        }
    }

    public enum Failure: Error, CustomStringConvertible, Equatable {
        case sameFile(output: String, path: String, input: String)
        case collision(String, String, path: String)
        case notRegular(role: String, path: String)
        case notWritable(role: String, path: String, reason: String)

        public var description: String {
            switch self {
            case let .sameFile(output, path, input): return "\(output) \(path) is \(input): refusing to overwrite it"
            case let .collision(a, b, path): return "\(a) and \(b) are the same file (\(path))"
            case let .notRegular(role, path): return "\(role) \(path) exists and is not a regular file"
            case let .notWritable(role, path, reason): return "\(role) \(path) cannot be written: \(reason)"
            }
        }
    }

    /// (device, inode) of an existing file, or nil.
    static func identity(_ path: String) -> (UInt64, UInt64)? {
        var s = stat()
        guard stat(path, &s) == 0 else { return nil }
        return (UInt64(s.st_dev), UInt64(s.st_ino))
    }

    static func isRegular(_ path: String) -> Bool? {
        var s = stat()
        guard stat(path, &s) == 0 else { return nil }
        return (s.st_mode & S_IFMT) == S_IFREG
    }

    static func isDirectory(_ path: String) -> Bool {
        var s = stat()
        return stat(path, &s) == 0 && (s.st_mode & S_IFMT) == S_IFDIR
    }

    /// The folder that will hold `path`.
    static func folder(of path: String) -> String {
        guard let slash = path.lastIndex(of: "/") else { return "." }
        let head = String(path[..<slash])
        return head.isEmpty ? "/" : head
    }

    public static func check(outputs: [File], inputs: [File]) throws {
        // Inputs and their files (a PEFT directory's two files, say).
        var inputIdentities: [(role: String, id: (UInt64, UInt64))] = []
        for input in inputs {
            for path in [input.path] + input.contents.map({ input.path + "/" + $0 }) {
                if let id = identity(path) { inputIdentities.append((input.role, id)) }
            }
        }
        var seen: [(role: String, path: String, id: (UInt64, UInt64)?)] = []
        for output in outputs {
            let written = output.isDirectory ? output.contents.map { output.path + "/" + $0 } : [output.path]
            if output.isDirectory, let regular = isRegular(output.path), regular {
                throw Failure.notRegular(role: output.role, path: output.path + " (a directory is needed)")
            }
            for path in written {
                if let regular = isRegular(path), !regular { throw Failure.notRegular(role: output.role, path: path) }
                let id = identity(path)
                if let id, let input = inputIdentities.first(where: { $0.id == id }) {
                    throw Failure.sameFile(output: output.role, path: path, input: input.role)
                }
                if let other = seen.first(where: { $0.path == path || ($0.id != nil && id != nil && $0.id! == id!) }) {
                    throw Failure.collision(other.role, output.role, path: path)
                }
                seen.append((output.role, path, id))
            }
            // New files must be creatable: in the output's folder, or in the directory written (made if missing).
            let folder = output.isDirectory && isDirectory(output.path) ? output.path : folder(of: output.path)
            guard isDirectory(folder) else {
                throw Failure.notWritable(role: output.role, path: output.path, reason: "the folder \(folder) does not exist")
            }
            // Root passes every permission check, so try: create (and remove) a probe file where writes will go.
            let probe = folder + "/.lorakit-probe-\(getpid())"
            let fd = open(probe, O_WRONLY | O_CREAT | O_EXCL, 0o600)
            guard fd >= 0 else {
                throw Failure.notWritable(role: output.role, path: output.path, reason: String(cString: strerror(errno)))
            }
            close(fd)
            unlink(probe)
        }
    }
}

/// Reads a whole file — a regular file, a pipe, `/dev/stdin` — with the system's reason when it cannot.
public enum FileReader {
    public struct Failure: Error, CustomStringConvertible {
        public var path: String
        public var reason: String
        public var description: String { "\(path): cannot read: \(reason)" }
    }

    public static func readAll(_ path: String) throws -> [UInt8] {
        let fd = open(path, O_RDONLY)
        guard fd >= 0 else { throw Failure(path: path, reason: String(cString: strerror(errno))) }
        defer { close(fd) }
        if OutputGuard.isDirectory(path) { throw Failure(path: path, reason: "it is a directory") }
        var bytes: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 1 << 16)
        while true {
            let n = chunk.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
            if n < 0 {
                if errno == EINTR { continue }
                throw Failure(path: path, reason: String(cString: strerror(errno)))
            }
            if n == 0 { return bytes }
            bytes += chunk[0..<n]
        }
    }
}
