#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif

/// Read-only bytes of a GGUF file: a memory mapping of a file on disk, or a copy of bytes in memory (tests).
public final class FileBytes: @unchecked Sendable {
    public let bytes: UnsafeRawBufferPointer
    private let release: () -> Void

    /// Memory-maps the file at `path` read-only. Nothing is copied; pages load on first touch.
    public init(mapping path: String) throws {
        let fd = open(path, O_RDONLY)
        guard fd >= 0 else { throw GGUFError.cannotOpen(path: path, reason: String(cString: strerror(errno))) }
        defer { close(fd) }
        var info = stat()
        guard fstat(fd, &info) == 0 else {
            throw GGUFError.cannotOpen(path: path, reason: String(cString: strerror(errno)))
        }
        if (info.st_mode & S_IFMT) == S_IFDIR { throw GGUFError.cannotOpen(path: path, reason: "is a directory") }
        let size = Int(info.st_size)
        if size == 0 {
            bytes = UnsafeRawBufferPointer(start: nil, count: 0)
            release = {}
            return
        }
        guard let base = mmap(nil, size, PROT_READ, MAP_PRIVATE, fd, 0), base != MAP_FAILED else {
            throw GGUFError.cannotOpen(path: path, reason: "mmap failed: " + String(cString: strerror(errno)))
        }
        bytes = UnsafeRawBufferPointer(start: base, count: size)
        release = { munmap(base, size) }
    }

    /// Copies `data` into memory owned by this object.
    public init(copying data: [UInt8]) {
        let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: max(data.count, 1), alignment: 64)
        data.withUnsafeBytes { source in
            if let base = source.baseAddress { buffer.baseAddress!.copyMemory(from: base, byteCount: data.count) }
        }
        bytes = UnsafeRawBufferPointer(start: buffer.baseAddress, count: data.count)
        release = { buffer.deallocate() }
    }

    deinit { release() }
}
