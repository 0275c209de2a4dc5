#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif

/// Read-only bytes of a GGUF file: a memory mapping of a file on disk, the file read into memory, or a copy of bytes
/// in memory (tests).
public final class FileBytes: @unchecked Sendable {
    public let bytes: UnsafeRawBufferPointer
    private let release: () -> Void

    /// Memory-maps the file at `path` read-only. Nothing is copied; pages load on first touch.
    public convenience init(mapping path: String) throws {
        try self.init(held: FileBytes.whole(path) { fd, size in
            guard let base = mmap(nil, size, PROT_READ, MAP_PRIVATE, fd, 0), base != MAP_FAILED else {
                throw GGUFError.cannotOpen(path: path, reason: "mmap failed: " + String(cString: strerror(errno)))
            }
            return (UnsafeRawBufferPointer(start: base, count: size), { munmap(base, size) })
        })
    }

    /// Reads the whole file at `path` into anonymous memory of its own, which on Linux is advised to the kernel for
    /// transparent huge pages (2 MiB). Generation streams every weight from memory once per token; through 2 MiB
    /// pages it needs a few hundred TLB entries instead of tens of thousands and crosses no 4 KiB boundary, where the
    /// CPU's prefetchers stop: 12-15 % more tokens/s than on a mapping of the file (BENCHMARKS.md). The cost: the
    /// read up front, and memory the OS cannot drop and read back under pressure, as it can a mapping's pages.
    public convenience init(reading path: String) throws {
        try self.init(held: FileBytes.whole(path) { fd, size in
            // Anonymous pages, one huge page more than needed so that the data can start on a 2 MiB boundary.
            let hugePage = 2 << 20
            let reserved = size + hugePage
            guard let region = mmap(nil, reserved, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0),
                  region != MAP_FAILED else {
                throw GGUFError.cannotOpen(path: path, reason: "cannot allocate \(size) bytes: " + String(cString: strerror(errno)))
            }
            let start = region + (hugePage - Int(bitPattern: region) % hugePage) % hugePage
            #if os(Linux)
            _ = madvise(start, (size + hugePage - 1) / hugePage * hugePage, MADV_HUGEPAGE)
            #endif
            var done = 0
            while done < size {
                let got = pread(fd, start + done, min(size - done, 64 << 20), off_t(done))
                if got < 0 && errno == EINTR { continue }
                guard got > 0 else {
                    let reason = got < 0 ? String(cString: strerror(errno)) : "the file ended after \(done) of \(size) bytes"
                    munmap(region, reserved)
                    throw GGUFError.cannotOpen(path: path, reason: "read failed: " + reason)
                }
                done += got
            }
            return (UnsafeRawBufferPointer(start: start, count: size), { munmap(region, reserved) })
        })
    }

    private init(held: (bytes: UnsafeRawBufferPointer, release: () -> Void)) {
        bytes = held.bytes
        release = held.release
    }

    /// Opens the file at `path` and hands its descriptor and size to `hold` (not called for an empty file); a
    /// directory or a failure is an error naming the file.
    private static func whole(_ path: String, _ hold: (Int32, Int) throws -> (UnsafeRawBufferPointer, () -> Void))
        throws -> (bytes: UnsafeRawBufferPointer, release: () -> Void) {
        let fd = open(path, O_RDONLY)
        guard fd >= 0 else { throw GGUFError.cannotOpen(path: path, reason: String(cString: strerror(errno))) }
        defer { close(fd) }
        var info = stat()
        guard fstat(fd, &info) == 0 else {
            throw GGUFError.cannotOpen(path: path, reason: String(cString: strerror(errno)))
        }
        if (info.st_mode & S_IFMT) == S_IFDIR { throw GGUFError.cannotOpen(path: path, reason: "is a directory") }
        let size = Int(info.st_size)
        if size == 0 { return (UnsafeRawBufferPointer(start: nil, count: 0), {}) }
        return try hold(fd, size)
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
