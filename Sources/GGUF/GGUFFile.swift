/// Where one tensor lives in a GGUF file and what it holds.
public struct TensorInfo: Sendable, Equatable {
    public let name: String
    /// ggml dimensions, fastest first (`ne`): a weight `W[out, in]` has `dimensions == [in, out]`.
    public let dimensions: [Int]
    public let type: TensorType
    /// Offset of the data from the start of the data section.
    public let offset: Int
    public let elementCount: Int
    public let byteCount: Int

    /// Elements in one row (`ne[0]`).
    public var rowLength: Int { dimensions.first ?? 1 }
    /// Number of rows (product of the other dimensions).
    public var rowCount: Int { rowLength == 0 ? 0 : elementCount / rowLength }
    /// Bytes in one row.
    public var rowBytes: Int { rowLength / type.blockSize * type.blockBytes }
}

/// A parsed, memory-mapped GGUF file (versions 2 and 3, little-endian).
///
/// Every count, length and offset is checked against the file before use: a damaged or hostile file gives a
/// `GGUFError`, never a crash or a huge allocation.
public final class GGUFFile: @unchecked Sendable {
    public static let magic: UInt32 = 0x4655_4747  // "GGUF" little-endian
    public static let defaultAlignment = 32
    /// Deepest nesting of arrays accepted (arrays of arrays of …).
    static let maxArrayDepth = 3

    public let path: String
    public let version: UInt32
    public let metadata: Metadata
    public let tensors: [TensorInfo]
    public let alignment: Int
    /// Absolute offset of the data section.
    public let dataOffset: Int
    public let fileBytes: FileBytes
    private let tensorIndex: [String: Int]

    public var fileSize: Int { fileBytes.bytes.count }

    /// How a file's bytes are held.
    public enum Storage: Sendable {
        /// Memory-mapped: nothing is read up front, pages load on first touch, and the OS may drop them under
        /// memory pressure. For inspecting, converting, merging and training (which reads each weight a few times a
        /// step, between products that take far longer).
        case mapped
        /// Read whole into memory of its own, in transparent huge pages where the OS offers them: generation, which
        /// streams every weight once per token, runs 12-15 % faster (`FileBytes(reading:)`).
        case inMemory
    }

    /// Opens and parses the file at `path`: memory-mapped by default (and then no tensor data is read), or read
    /// into memory.
    public convenience init(path: String, storage: Storage = .mapped) throws {
        switch storage {
        case .mapped: try self.init(bytes: FileBytes(mapping: path), name: path)
        case .inMemory: try self.init(bytes: FileBytes(reading: path), name: path)
        }
    }

    /// Parses GGUF bytes; `name` is used in error messages.
    public init(bytes: FileBytes, name: String) throws {
        path = name
        fileBytes = bytes
        var cursor = ByteCursor(bytes: bytes.bytes, path: name)

        let magic: UInt32 = try cursor.read("magic")
        guard magic == GGUFFile.magic else {
            let raw = withUnsafeBytes(of: magic) { Array($0) }
            let shown = raw.map { (0x20..<0x7f).contains($0) ? String(UnicodeScalar($0)) : "\\x" + hex2($0) }.joined()
            throw GGUFError.badMagic(path: name, found: "\"\(shown)\"")
        }
        let version: UInt32 = try cursor.read("version")
        if version & 0xFFFF == 0, version != 0 { throw GGUFError.bigEndian(path: name) }
        guard version == 2 || version == 3 else { throw GGUFError.unsupportedVersion(path: name, version: version) }
        self.version = version

        let tensorCount64: UInt64 = try cursor.read("tensor count")
        let keyCount64: UInt64 = try cursor.read("metadata key count")
        // Each key needs at least 8 (length) + 4 (type) + 1 bytes, each tensor info at least 8 + 4 + 8 + 4 + 8.
        guard keyCount64 <= UInt64(cursor.remaining / 13) else {
            throw GGUFError.invalid(path: name, what: "metadata key count \(keyCount64) is larger than the file can hold")
        }
        guard tensorCount64 <= UInt64(cursor.remaining / 32) else {
            throw GGUFError.invalid(path: name, what: "tensor count \(tensorCount64) is larger than the file can hold")
        }

        var metadata = Metadata(source: name)
        for index in 0..<Int(keyCount64) {
            let key = try cursor.readString("name of metadata key #\(index)")
            guard !metadata.contains(key) else { throw GGUFError.duplicateKey(path: name, key: key) }
            let rawType: UInt32 = try cursor.read("type of key '\(key)'")
            guard let type = MetadataValueType(rawValue: rawType) else {
                throw GGUFError.unknownValueType(path: name, key: key, rawType: rawType)
            }
            metadata.set(key, try cursor.readValue(type, key: key, depth: 0))
        }
        self.metadata = metadata

        var alignment = GGUFFile.defaultAlignment
        if let value = metadata["general.alignment"] {
            guard case let .uint32(a) = value, a > 0, a & (a - 1) == 0, a <= 1 << 20 else {
                throw GGUFError.invalid(path: name, what: "general.alignment must be a u32 power of two, found \(value.typeName) \(value)")
            }
            alignment = Int(a)
        }
        self.alignment = alignment

        struct RawTensor { var name: String; var dims: [Int]; var type: TensorType; var offset: Int }
        var raw: [RawTensor] = []
        raw.reserveCapacity(Int(tensorCount64))
        var index: [String: Int] = [:]
        for t in 0..<Int(tensorCount64) {
            let tensorName = try cursor.readString("name of tensor #\(t)")
            guard index[tensorName] == nil else { throw GGUFError.duplicateTensor(path: name, tensor: tensorName) }
            let nDims: UInt32 = try cursor.read("dimension count of tensor '\(tensorName)'")
            guard nDims >= 1, nDims <= 4 else {
                throw GGUFError.badTensor(path: name, tensor: tensorName, reason: "has \(nDims) dimensions (1 to 4 allowed)")
            }
            var dims: [Int] = []
            for d in 0..<Int(nDims) {
                let ne: UInt64 = try cursor.read("dimension \(d) of tensor '\(tensorName)'")
                guard ne <= UInt64(Int64.max) else {
                    throw GGUFError.badTensor(path: name, tensor: tensorName, reason: "dimension \(d) is \(ne), too large")
                }
                dims.append(Int(ne))
            }
            let rawType: UInt32 = try cursor.read("type of tensor '\(tensorName)'")
            guard let type = TensorType(rawValue: rawType) else {
                throw GGUFError.unknownTensorType(path: name, tensor: tensorName, rawType: rawType)
            }
            let offset: UInt64 = try cursor.read("offset of tensor '\(tensorName)'")
            guard offset <= UInt64(Int64.max) else {
                throw GGUFError.badTensor(path: name, tensor: tensorName, reason: "data offset \(offset) is past the end of the file")
            }
            guard Int(offset) % alignment == 0 else {
                throw GGUFError.badTensor(path: name, tensor: tensorName, reason: "data offset \(offset) is not a multiple of the alignment \(alignment)")
            }
            index[tensorName] = raw.count
            raw.append(RawTensor(name: tensorName, dims: dims, type: type, offset: Int(offset)))
        }

        let dataStart = cursor.position.roundedUp(to: alignment)
        self.dataOffset = dataStart
        let dataSize = max(0, bytes.bytes.count - dataStart)

        var infos: [TensorInfo] = []
        infos.reserveCapacity(raw.count)
        for r in raw {
            var count = 1
            for ne in r.dims {
                let (product, overflow) = count.multipliedReportingOverflow(by: ne)
                guard !overflow else {
                    throw GGUFError.badTensor(path: name, tensor: r.name, reason: "element count of shape \(r.dims) overflows")
                }
                count = product
            }
            guard r.dims[0] % r.type.blockSize == 0, let byteCount = r.type.byteCount(elements: count) else {
                throw GGUFError.badTensor(path: name, tensor: r.name, reason: "row length \(r.dims[0]) is not a multiple of the \(r.type) block size \(r.type.blockSize)")
            }
            let (end, overflow) = r.offset.addingReportingOverflow(byteCount)
            guard !overflow, end <= dataSize else {
                throw GGUFError.badTensor(path: name, tensor: r.name, reason: "data (\(byteCount) bytes at data offset \(r.offset)) runs past the end of the file (\(dataSize) data bytes)")
            }
            infos.append(TensorInfo(name: r.name, dimensions: r.dims, type: r.type, offset: r.offset,
                                    elementCount: count, byteCount: byteCount))
        }
        // Tensor data must not overlap: a writer bug or a crafted file would otherwise alias two tensors.
        let sorted = infos.filter { $0.byteCount > 0 }.sorted { $0.offset < $1.offset }
        for (a, b) in zip(sorted, sorted.dropFirst()) where a.offset + a.byteCount > b.offset {
            throw GGUFError.badTensor(path: name, tensor: b.name, reason: "data overlaps tensor '\(a.name)'")
        }
        self.tensors = infos
        self.tensorIndex = index
    }

    /// The tensor called `name`, or nil.
    public func tensor(named name: String) -> TensorInfo? {
        tensorIndex[name].map { tensors[$0] }
    }

    /// The tensor called `name`, or an error naming it and this file.
    public func requireTensor(_ name: String) throws -> TensorInfo {
        guard let info = tensor(named: name) else { throw GGUFError.missingTensor(path: path, tensor: name) }
        return info
    }

    /// The raw bytes of a tensor, inside the mapping (valid as long as this object lives).
    public func data(of tensor: TensorInfo) -> UnsafeRawBufferPointer {
        UnsafeRawBufferPointer(rebasing: fileBytes.bytes[(dataOffset + tensor.offset)..<(dataOffset + tensor.offset + tensor.byteCount)])
    }

    /// The whole tensor dequantized to Float (F32, F16, BF16 and every block type).
    public func floats(of tensor: TensorInfo) throws -> [Float] {
        guard tensor.type.isDequantizable else {
            throw GGUFError.badTensor(path: path, tensor: tensor.name, reason: "type \(tensor.type) cannot be converted to float")
        }
        var out = [Float](repeating: 0, count: tensor.elementCount)
        out.withUnsafeMutableBufferPointer { dst in
            Dequantize.fast(tensor.type, from: data(of: tensor), count: tensor.elementCount, into: dst.baseAddress!)
        }
        return out
    }

    /// The whole tensor as Int32 (tensors of type I32).
    public func int32s(of tensor: TensorInfo) throws -> [Int32] {
        guard tensor.type == .i32 else {
            throw GGUFError.badTensor(path: path, tensor: tensor.name, reason: "is \(tensor.type), expected I32")
        }
        let raw = data(of: tensor)
        return (0..<tensor.elementCount).map { raw.loadUnaligned(fromByteOffset: $0 * 4, as: Int32.self) }
    }

    /// Total parameter count (elements of all tensors).
    public var parameterCount: Int { tensors.reduce(0) { $0 + $1.elementCount } }
}

func hex2(_ b: UInt8) -> String {
    let digits = Array("0123456789abcdef")
    return String([digits[Int(b >> 4)], digits[Int(b & 15)]])
}

extension Int {
    func roundedUp(to alignment: Int) -> Int { (self + alignment - 1) / alignment * alignment }
}

/// A bounds-checked reader over the file bytes.
struct ByteCursor {
    let bytes: UnsafeRawBufferPointer
    let path: String
    var position = 0

    init(bytes: UnsafeRawBufferPointer, path: String) {
        self.bytes = bytes
        self.path = path
    }

    var remaining: Int { bytes.count - position }

    private func need(_ count: Int, _ what: @autoclosure () -> String) throws {
        guard count <= remaining else {
            throw GGUFError.truncated(path: path, what: what(), offset: position, needed: count, fileSize: bytes.count)
        }
    }

    mutating func read<T: FixedWidthInteger>(_ what: @autoclosure () -> String) throws -> T {
        try need(MemoryLayout<T>.size, what())
        let value = T(littleEndian: bytes.loadUnaligned(fromByteOffset: position, as: T.self))
        position += MemoryLayout<T>.size
        return value
    }

    mutating func readString(_ what: @autoclosure () -> String) throws -> String {
        let length: UInt64 = try read(what())
        guard length <= UInt64(remaining) else {
            throw GGUFError.truncated(path: path, what: what() + " (string of \(length) bytes)", offset: position,
                                      needed: Int(clamping: length), fileSize: bytes.count)
        }
        let n = Int(length)
        let s = String(decoding: UnsafeRawBufferPointer(rebasing: bytes[position..<(position + n)]), as: UTF8.self)
        position += n
        return s
    }

    mutating func readValue(_ type: MetadataValueType, key: String, depth: Int) throws -> MetadataValue {
        switch type {
        case .uint8: return .uint8(try read("value of '\(key)'"))
        case .int8: return .int8(try read("value of '\(key)'"))
        case .uint16: return .uint16(try read("value of '\(key)'"))
        case .int16: return .int16(try read("value of '\(key)'"))
        case .uint32: return .uint32(try read("value of '\(key)'"))
        case .int32: return .int32(try read("value of '\(key)'"))
        case .uint64: return .uint64(try read("value of '\(key)'"))
        case .int64: return .int64(try read("value of '\(key)'"))
        case .float32: return .float32(Float(bitPattern: try read("value of '\(key)'")))
        case .float64: return .float64(Double(bitPattern: try read("value of '\(key)'")))
        case .bool:
            let b: UInt8 = try read("value of '\(key)'")
            guard b <= 1 else { throw GGUFError.invalid(path: path, what: "metadata key '\(key)' has bool value \(b)") }
            return .bool(b == 1)
        case .string: return .string(try readString("value of '\(key)'"))
        case .array:
            let rawType: UInt32 = try read("element type of array '\(key)'")
            guard let elementType = MetadataValueType(rawValue: rawType) else {
                throw GGUFError.unknownValueType(path: path, key: key, rawType: rawType)
            }
            if elementType == .array && depth >= GGUFFile.maxArrayDepth {
                throw GGUFError.invalid(path: path, what: "metadata key '\(key)' nests arrays too deeply")
            }
            let count: UInt64 = try read("element count of array '\(key)'")
            guard count <= UInt64(remaining / elementType.minimumEncodedSize) else {
                throw GGUFError.invalid(path: path, what: "metadata key '\(key)': array count \(count) is larger than the file can hold")
            }
            var items: [MetadataValue] = []
            items.reserveCapacity(Int(count))
            for _ in 0..<Int(count) { items.append(try readValue(elementType, key: key, depth: depth + 1)) }
            return .array(elementType, items)
        }
    }
}
