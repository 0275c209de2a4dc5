import Foundation
import GGUF

/// The safetensors format: u64 header length, a JSON header `{name: {dtype, shape, data_offsets}}`, then the
/// data. The header is treated as hostile: sizes, offsets, dtypes and overlapping ranges are all checked.
public enum SafeTensors {
    public struct Tensor {
        public var name: String
        public var dtype: String
        public var shape: [Int]
        public var range: Range<Int>
    }

    static let elementSizes = ["F32": 4, "F16": 2, "BF16": 2, "F64": 8, "I32": 4, "I64": 8, "I8": 1, "U8": 1, "I16": 2, "BOOL": 1]

    /// Parses the header of `bytes` (the whole file).
    public static func parse(_ bytes: [UInt8], path: String) throws -> (tensors: [Tensor], metadata: [String: String], dataStart: Int) {
        guard bytes.count >= 8 else { throw LoRAError.format(path: path, reason: "too short for a safetensors file") }
        let n = bytes.withUnsafeBytes { UInt64(littleEndian: $0.loadUnaligned(as: UInt64.self)) }
        guard n >= 2, n <= UInt64(bytes.count - 8), n <= 100_000_000 else {
            throw LoRAError.format(path: path, reason: "header length \(n) does not fit the file (\(bytes.count) bytes)")
        }
        let dataStart = 8 + Int(n)
        guard let json = try? JSONSerialization.jsonObject(with: Data(bytes[8..<dataStart])) as? [String: Any] else {
            throw LoRAError.format(path: path, reason: "the header is not a JSON object")
        }
        let dataSize = bytes.count - dataStart
        var tensors: [Tensor] = []
        var metadata: [String: String] = [:]
        for (name, value) in json {
            if name == "__metadata__" {
                for (k, v) in value as? [String: Any] ?? [:] { metadata[k] = v as? String }
                continue
            }
            guard let info = value as? [String: Any], let dtype = info["dtype"] as? String,
                  let shape = info["shape"] as? [Int], let offsets = info["data_offsets"] as? [Int], offsets.count == 2 else {
                throw LoRAError.format(path: path, reason: "tensor '\(name)' has no valid dtype, shape and data_offsets")
            }
            guard let size = elementSizes[dtype] else { throw LoRAError.format(path: path, reason: "tensor '\(name)' has unsupported dtype \(dtype)") }
            guard shape.allSatisfy({ $0 >= 0 && $0 < 1 << 40 }), shape.count <= 8 else {
                throw LoRAError.format(path: path, reason: "tensor '\(name)' has an invalid shape \(shape)")
            }
            var count = 1
            for d in shape {
                let (p, o) = count.multipliedReportingOverflow(by: d)
                guard !o else { throw LoRAError.format(path: path, reason: "tensor '\(name)': shape \(shape) overflows") }
                count = p
            }
            let (start, end) = (offsets[0], offsets[1])
            guard start >= 0, end >= start, end <= dataSize, end - start == count * size else {
                throw LoRAError.format(path: path, reason: "tensor '\(name)': data_offsets \(offsets) do not match \(dtype) \(shape) inside \(dataSize) data bytes")
            }
            tensors.append(Tensor(name: name, dtype: dtype, shape: shape, range: start..<end))
        }
        let sorted = tensors.sorted { $0.range.lowerBound < $1.range.lowerBound }
        for (a, b) in zip(sorted, sorted.dropFirst()) where a.range.upperBound > b.range.lowerBound {
            throw LoRAError.format(path: path, reason: "tensors '\(a.name)' and '\(b.name)' overlap")
        }
        return (tensors, metadata, dataStart)
    }

    /// A floating-point tensor as Float.
    public static func floats(_ t: Tensor, in bytes: [UInt8], dataStart: Int, path: String) throws -> [Float] {
        let count = t.range.count / (elementSizes[t.dtype] ?? 1)
        let values = bytes.withUnsafeBytes { raw -> [Float]? in
            let base = raw.baseAddress! + dataStart + t.range.lowerBound
            switch t.dtype {
            case "F32": return (0..<count).map { Float(bitPattern: base.loadUnaligned(fromByteOffset: 4 * $0, as: UInt32.self)) }
            case "F16": return (0..<count).map { HalfPrecision.floatFromHalfBits(base.loadUnaligned(fromByteOffset: 2 * $0, as: UInt16.self)) }
            case "BF16": return (0..<count).map { HalfPrecision.floatFromBFloat16Bits(base.loadUnaligned(fromByteOffset: 2 * $0, as: UInt16.self)) }
            case "F64": return (0..<count).map { Float(Double(bitPattern: base.loadUnaligned(fromByteOffset: 8 * $0, as: UInt64.self))) }
            default: return nil
            }
        }
        guard let values else { throw LoRAError.format(path: path, reason: "tensor '\(t.name)' is \(t.dtype), not floating point") }
        return values
    }

    /// Writes F32 tensors (in the given order) with an optional `__metadata__`.
    public static func write(_ tensors: [(name: String, shape: [Int], values: [Float])], metadata: [String: String], to path: String) throws {
        var header: [String: Any] = [:]
        if !metadata.isEmpty { header["__metadata__"] = metadata }
        var offset = 0
        for t in tensors {
            header[t.name] = ["dtype": "F32", "shape": t.shape, "data_offsets": [offset, offset + 4 * t.values.count]]
            offset += 4 * t.values.count
        }
        var json = try JSONSerialization.data(withJSONObject: header, options: [.sortedKeys])
        while (8 + json.count) % 8 != 0 { json.append(0x20) }
        var out = [UInt8]()
        out.reserveCapacity(8 + json.count + offset)
        withUnsafeBytes(of: UInt64(json.count).littleEndian) { out += $0 }
        out += json
        for t in tensors { for v in t.values { withUnsafeBytes(of: v.bitPattern.littleEndian) { out += $0 } } }
        try AtomicFile.write(out, to: path)
    }
}
