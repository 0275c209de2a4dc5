#if canImport(Glibc)
import Glibc
private let systemWrite = Glibc.write
#elseif canImport(Musl)
import Musl
private let systemWrite = Musl.write
#elseif canImport(Darwin)
import Darwin
private let systemWrite = Darwin.write
#endif

/// Builds a GGUF file (version 3): metadata in insertion order, then tensor infos, then tensor data, each tensor
/// padded to the alignment. Files are written to a temporary name and renamed, so a crash never leaves a
/// half-written file over a good one.
public struct GGUFWriter {
    public var metadata: Metadata
    public private(set) var tensors: [(info: TensorInfo, bytes: [UInt8])] = []
    private var names: Set<String> = []
    private var nextOffset = 0

    public init(metadata: Metadata = Metadata()) {
        self.metadata = metadata
    }

    /// `general.alignment` when set, else 32.
    public var alignment: Int {
        if case let .uint32(a)? = metadata["general.alignment"], a > 0, a & (a - 1) == 0 { return Int(a) }
        return GGUFFile.defaultAlignment
    }

    /// Adds a tensor of `type` with ggml dimensions `dimensions` (fastest first) and its encoded bytes.
    public mutating func addTensor(name: String, type: TensorType, dimensions: [Int], bytes: [UInt8]) throws {
        guard !names.contains(name) else { throw GGUFError.duplicateTensor(path: "<writer>", tensor: name) }
        guard (1...4).contains(dimensions.count), dimensions.allSatisfy({ $0 >= 0 }) else {
            throw GGUFError.badTensor(path: "<writer>", tensor: name, reason: "shape \(dimensions) is not 1 to 4 non-negative dimensions")
        }
        let count = dimensions.reduce(1, *)
        guard dimensions[0] % type.blockSize == 0, let expected = type.byteCount(elements: count), expected == bytes.count else {
            throw GGUFError.badTensor(path: "<writer>", tensor: name, reason: "\(bytes.count) bytes do not hold a \(type) tensor of shape \(dimensions)")
        }
        let offset = nextOffset.roundedUp(to: alignment)
        let info = TensorInfo(name: name, dimensions: dimensions, type: type, offset: offset,
                              elementCount: count, byteCount: bytes.count)
        tensors.append((info, bytes))
        names.insert(name)
        nextOffset = offset + bytes.count
    }

    /// Adds a tensor from Float values, encoded as `type` (F32 by default).
    public mutating func addTensor(name: String, dimensions: [Int], values: [Float], type: TensorType = .f32) throws {
        try addTensor(name: name, type: type, dimensions: dimensions, bytes: try Quantize.quantize(values, to: type))
    }

    /// Adds an I32 tensor.
    public mutating func addTensor(name: String, dimensions: [Int], int32s: [Int32]) throws {
        var bytes = [UInt8]()
        bytes.reserveCapacity(int32s.count * 4)
        for v in int32s { withUnsafeBytes(of: v.littleEndian) { bytes.append(contentsOf: $0) } }
        try addTensor(name: name, type: .i32, dimensions: dimensions, bytes: bytes)
    }

    /// The whole file as bytes.
    public func serialized() -> [UInt8] {
        var out = ByteSink()
        writeHeader(into: &out)
        out.pad(to: alignment)
        let dataStart = out.bytes.count
        for (info, bytes) in tensors {
            out.bytes.append(contentsOf: [UInt8](repeating: 0, count: dataStart + info.offset - out.bytes.count))
            out.bytes.append(contentsOf: bytes)
        }
        if !tensors.isEmpty { out.pad(to: alignment) }
        return out.bytes
    }

    /// Writes the file to `path` through a temporary file in the same directory, then renames it into place.
    public func write(to path: String) throws {
        try AtomicFile.write(serialized(), to: path)
    }

    private func writeHeader(into out: inout ByteSink) {
        out.append(GGUFFile.magic)
        out.append(UInt32(3))
        out.append(UInt64(tensors.count))
        out.append(UInt64(metadata.count))
        for (key, value) in metadata.entries {
            out.appendString(key)
            out.append(value.type.rawValue)
            out.appendValue(value)
        }
        for (info, _) in tensors {
            out.appendString(info.name)
            out.append(UInt32(info.dimensions.count))
            for d in info.dimensions { out.append(UInt64(d)) }
            out.append(info.type.rawValue)
            out.append(UInt64(info.offset))
        }
    }
}

/// Little-endian byte accumulation.
struct ByteSink {
    var bytes: [UInt8] = []

    mutating func append<T: FixedWidthInteger>(_ v: T) {
        withUnsafeBytes(of: v.littleEndian) { bytes.append(contentsOf: $0) }
    }

    mutating func appendString(_ s: String) {
        let utf8 = Array(s.utf8)
        append(UInt64(utf8.count))
        bytes.append(contentsOf: utf8)
    }

    mutating func pad(to alignment: Int) {
        let target = bytes.count.roundedUp(to: alignment)
        bytes.append(contentsOf: [UInt8](repeating: 0, count: target - bytes.count))
    }

    mutating func appendValue(_ value: MetadataValue) {
        switch value {
        case let .uint8(v): append(v)
        case let .int8(v): append(v)
        case let .uint16(v): append(v)
        case let .int16(v): append(v)
        case let .uint32(v): append(v)
        case let .int32(v): append(v)
        case let .uint64(v): append(v)
        case let .int64(v): append(v)
        case let .float32(v): append(v.bitPattern)
        case let .float64(v): append(v.bitPattern)
        case let .bool(v): append(UInt8(v ? 1 : 0))
        case let .string(s): appendString(s)
        case let .array(elementType, items):
            append(elementType.rawValue)
            append(UInt64(items.count))
            for item in items { appendValue(item) }
        }
    }
}

/// Writes files through a temporary name and a rename, so readers never see a partial file.
public enum AtomicFile {
    public static func write(_ bytes: [UInt8], to path: String) throws {
        // Renaming over a device or a directory would replace it with a regular file.
        if OutputGuard.isRegular(path) == false {
            throw GGUFError.writeFailed(path: path, reason: "exists and is not a regular file")
        }
        removeStaleTemporaries(of: path)
        let temporary = path + ".tmp-\(getpid())"
        let fd = open(temporary, O_WRONLY | O_CREAT | O_TRUNC, 0o644)
        guard fd >= 0 else { throw GGUFError.writeFailed(path: path, reason: String(cString: strerror(errno))) }
        var written = 0
        let ok: Bool = bytes.withUnsafeBytes { raw in
            while written < raw.count {
                let n = systemWrite(fd, raw.baseAddress! + written, raw.count - written)
                if n <= 0 { if errno == EINTR { continue }; return false }
                written += n
            }
            return true
        }
        let reason = String(cString: strerror(errno))
        if !ok || fsync(fd) != 0 {
            close(fd)
            unlink(temporary)
            throw GGUFError.writeFailed(path: path, reason: reason)
        }
        close(fd)
        guard rename(temporary, path) == 0 else {
            let reason = String(cString: strerror(errno))
            unlink(temporary)
            throw GGUFError.writeFailed(path: path, reason: reason)
        }
    }

    /// Removes `path.tmp-PID` files left by writers that were killed (their process no longer exists).
    static func removeStaleTemporaries(of path: String) {
        let folder = OutputGuard.folder(of: path)
        let prefix = String(path.split(separator: "/").last ?? "") + ".tmp-"
        guard let dir = opendir(folder) else { return }
        defer { closedir(dir) }
        while let entry = readdir(dir) {
            let name = withUnsafeBytes(of: entry.pointee.d_name) { String(decoding: $0.prefix { $0 != 0 }, as: UTF8.self) }
            guard name.hasPrefix(prefix), let pid = Int32(name.dropFirst(prefix.count)), pid != getpid() else { continue }
            if kill(pid, 0) != 0 && errno == ESRCH { unlink(folder + "/" + name) }
        }
    }
}
