import GGUF
import TestSupport
import XCTest

/// Broken and hostile files must give errors, never crashes or huge allocations.
final class RobustnessTests: XCTestCase {
    /// A small valid file with metadata of several kinds and three tensors.
    func validFile() throws -> [UInt8] {
        var writer = GGUFWriter()
        writer.metadata.set("general.architecture", .string("llama"))
        writer.metadata.set("llama.block_count", .uint32(2))
        writer.metadata.set("tokenizer.ggml.tokens", .array(.string, [.string("a"), .string("bb"), .string("ccc")]))
        writer.metadata.set("tokenizer.ggml.scores", .array(.float32, [.float32(0), .float32(-1), .float32(-2)]))
        try writer.addTensor(name: "w", dimensions: [32, 2], values: (0..<64).map(Float.init), type: .q8_0)
        try writer.addTensor(name: "n", dimensions: [4], values: [1, 2, 3, 4])
        try writer.addTensor(name: "i", dimensions: [2], int32s: [7, 8])
        return writer.serialized()
    }

    func parse(_ bytes: [UInt8]) -> Result<GGUFFile, Error> {
        Result { try GGUFFile(bytes: FileBytes(copying: bytes), name: "broken.gguf") }
    }

    func testValidFileParses() throws {
        let file = try parse(validFile()).get()
        XCTAssertEqual(file.tensors.count, 3)
    }

    func testEveryTruncationIsAnError() throws {
        let bytes = try validFile()
        // Tensor data ends exactly at the last tensor; every shorter prefix must fail.
        let file = try parse(bytes).get()
        let lastEnd = file.tensors.map { file.dataOffset + $0.offset + $0.byteCount }.max()!
        for length in 0..<lastEnd {
            if case .success = parse(Array(bytes.prefix(length))) { XCTFail("truncated to \(length) bytes parsed") }
        }
    }

    func testTruncationErrorsAreOneLineAndNameTheFile() throws {
        let bytes = try validFile()
        for length in [0, 3, 10, 30, 100] {
            guard case let .failure(error) = parse(Array(bytes.prefix(length))) else { XCTFail(); continue }
            let text = String(describing: error)
            XCTAssertTrue(text.hasPrefix("broken.gguf: "), text)
            XCTAssertFalse(text.contains("\n"), text)
        }
    }

    /// Flip, zero and max every byte of the header region: each result is an error or a well-formed file.
    func testCorruptedHeaderBytesNeverCrash() throws {
        let bytes = try validFile()
        let file = try parse(bytes).get()
        for position in 0..<file.dataOffset {
            for replacement in [bytes[position] ^ 0xFF, 0, 0xFF, bytes[position] ^ 0x01, 0x80] {
                var broken = bytes
                broken[position] = replacement
                if case let .success(parsed) = parse(broken) {
                    // A file that still parses must keep every tensor inside the file.
                    for t in parsed.tensors {
                        XCTAssertLessThanOrEqual(parsed.dataOffset + t.offset + t.byteCount, broken.count)
                    }
                }
            }
        }
    }

    func overwrite<T: FixedWidthInteger>(_ bytes: inout [UInt8], at offset: Int, with value: T) {
        withUnsafeBytes(of: value.littleEndian) { for (i, b) in $0.enumerated() { bytes[offset + i] = b } }
    }

    func testHugeCountsAndOffsetsAreErrors() throws {
        let bytes = try validFile()
        for huge: UInt64 in [.max, UInt64(Int64.max), 1 << 40, 1 << 32, 100_000] {
            var b = bytes
            overwrite(&b, at: 8, with: huge)  // tensor count
            XCTAssertThrowsError(try parse(b).get(), "tensor count \(huge)")
            b = bytes
            overwrite(&b, at: 16, with: huge)  // key count
            XCTAssertThrowsError(try parse(b).get(), "key count \(huge)")
            b = bytes
            overwrite(&b, at: 24, with: huge)  // length of the first key's name
            XCTAssertThrowsError(try parse(b).get(), "string length \(huge)")
        }
        // Find the tokens array count and the first tensor's offset and dimension by searching the header.
        let file = try parse(bytes).get()
        let header = Array(bytes.prefix(file.dataOffset))
        let tokensKey = Array("tokenizer.ggml.tokens".utf8)
        let keyAt = (0...(header.count - tokensKey.count)).first { Array(header[$0..<($0 + tokensKey.count)]) == tokensKey }!
        let countAt = keyAt + tokensKey.count + 4 + 4
        for huge: UInt64 in [.max, 1 << 61, 1 << 33] {
            var b = bytes
            overwrite(&b, at: countAt, with: huge)
            XCTAssertThrowsError(try parse(b).get(), "array count \(huge)")
        }
        let nameW = [UInt8(1), 0, 0, 0, 0, 0, 0, 0, UInt8(ascii: "w")]
        let wAt = (0...(header.count - nameW.count)).first { Array(header[$0..<($0 + nameW.count)]) == nameW }! + nameW.count
        // name, n_dims (u32), ne0, ne1 (u64), type (u32), offset (u64)
        for (field, value) in [(wAt, UInt64(5)), (wAt + 4, UInt64.max), (wAt + 4, 1 << 62), (wAt + 12, 1 << 40),
                               (wAt + 24, 1 << 40), (wAt + 24, 7), (wAt + 24, UInt64.max)] {
            var b = bytes
            if field == wAt { overwrite(&b, at: field, with: UInt32(value)) } else { overwrite(&b, at: field, with: value) }
            XCTAssertThrowsError(try parse(b).get(), "tensor field at \(field) = \(value)")
        }
        var b = bytes
        overwrite(&b, at: wAt + 20, with: UInt32(99))  // unknown type
        XCTAssertThrowsError(try parse(b).get()) { XCTAssertTrue(String(describing: $0).contains("'w'")) }
    }

    func testBadMagicVersionAndAlignment() throws {
        var b = try validFile()
        b[0] = UInt8(ascii: "X")
        XCTAssertThrowsError(try parse(b).get()) { XCTAssertTrue(String(describing: $0).contains("not a GGUF file")) }
        b = try validFile()
        overwrite(&b, at: 4, with: UInt32(1))
        XCTAssertThrowsError(try parse(b).get()) { XCTAssertTrue(String(describing: $0).contains("version 1")) }
        var writer = GGUFWriter()
        writer.metadata.set("general.alignment", .uint32(3))
        XCTAssertThrowsError(try parse(writer.serialized()).get()) { XCTAssertTrue(String(describing: $0).contains("alignment")) }
    }

    func testRandomGarbageNeverCrashes() {
        var rng = SplitMix64(seed: 7)
        for n in 0..<2000 {
            var bytes = (0..<(n % 200)).map { _ in UInt8(truncatingIfNeeded: rng.next()) }
            if n % 2 == 0, bytes.count >= 8 { bytes.replaceSubrange(0..<8, with: [0x47, 0x47, 0x55, 0x46, 3, 0, 0, 0]) }
            _ = parse(bytes)
        }
    }
}
