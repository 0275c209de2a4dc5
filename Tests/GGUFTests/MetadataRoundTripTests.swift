import GGUF
import TestSupport
import XCTest

final class MetadataRoundTripTests: XCTestCase {
    /// One value of every metadata type, arrays of each, an array of strings, an empty and a nested array.
    static var everyType: [(String, MetadataValue)] {
        [
            ("t.u8", .uint8(250)), ("t.i8", .int8(-120)), ("t.u16", .uint16(65000)), ("t.i16", .int16(-32000)),
            ("t.u32", .uint32(4_000_000_000)), ("t.i32", .int32(-2_000_000_000)),
            ("t.u64", .uint64(18_000_000_000_000_000_000)), ("t.i64", .int64(-9_000_000_000_000_000_000)),
            ("t.f32", .float32(-1.5e-7)), ("t.f64", .float64(3.141592653589793)), ("t.bool", .bool(true)),
            ("t.string", .string("héllo ✓ 世界 \n\t")), ("t.empty_string", .string("")),
            ("a.u8", .array(.uint8, [.uint8(1), .uint8(255)])),
            ("a.i8", .array(.int8, [.int8(-1), .int8(127)])),
            ("a.u16", .array(.uint16, [.uint16(7)])), ("a.i16", .array(.int16, [.int16(-7)])),
            ("a.u32", .array(.uint32, [.uint32(1), .uint32(2), .uint32(3)])),
            ("a.i32", .array(.int32, [.int32(-5), .int32(5)])),
            ("a.u64", .array(.uint64, [.uint64(.max)])), ("a.i64", .array(.int64, [.int64(.min)])),
            ("a.f32", .array(.float32, [.float32(0.5), .float32(-0.0), .float32(.infinity)])),
            ("a.f64", .array(.float64, [.float64(1e300)])),
            ("a.bool", .array(.bool, [.bool(false), .bool(true)])),
            ("a.string", .array(.string, [.string("a"), .string(""), .string("<|im_start|>")])),
            ("a.empty", .array(.uint32, [])),
            ("a.nested", .array(.array, [.array(.int32, [.int32(1)]), .array(.string, [.string("x")])])),
        ]
    }

    func testEveryMetadataTypeRoundTrips() throws {
        var writer = GGUFWriter()
        for (k, v) in Self.everyType { writer.metadata.set(k, v) }
        let file = try GGUFFile(bytes: FileBytes(copying: writer.serialized()), name: "roundtrip")
        XCTAssertEqual(file.version, 3)
        XCTAssertEqual(file.metadata.keys, Self.everyType.map(\.0))
        for (k, v) in Self.everyType { XCTAssertEqual(file.metadata[k], v, k) }
        XCTAssertTrue(file.tensors.isEmpty)
    }

    func testTensorsRoundTripWithAlignment() throws {
        for alignment: UInt32 in [32, 64, 8] {
            var writer = GGUFWriter()
            writer.metadata.set("general.alignment", .uint32(alignment))
            writer.metadata.set("general.architecture", .string("llama"))
            let a: [Float] = (0..<96).map { Float($0) * 0.25 - 3 }
            try writer.addTensor(name: "a", dimensions: [32, 3], values: a)
            try writer.addTensor(name: "b", dimensions: [64], values: Array(a.prefix(64)), type: .q8_0)
            try writer.addTensor(name: "c", dimensions: [5], int32s: [1, -2, 3, -4, 5])
            try writer.addTensor(name: "d", dimensions: [32, 1, 1, 2], values: Array(a.prefix(64)), type: .f16)
            let bytes = writer.serialized()
            let file = try GGUFFile(bytes: FileBytes(copying: bytes), name: "t")
            XCTAssertEqual(file.alignment, Int(alignment))
            XCTAssertEqual(file.dataOffset % Int(alignment), 0)
            XCTAssertEqual(file.tensors.map(\.name), ["a", "b", "c", "d"])
            for (info, original) in zip(file.tensors, writer.tensors) {
                XCTAssertEqual(info.offset % Int(alignment), 0)
                XCTAssertEqual(info.dimensions, original.info.dimensions)
                XCTAssertEqual(info.type, original.info.type)
                XCTAssertEqual(Array(file.data(of: info)), original.bytes, info.name)
            }
            XCTAssertEqual(try file.floats(of: file.requireTensor("a")), a)
            XCTAssertEqual(try file.int32s(of: file.requireTensor("c")), [1, -2, 3, -4, 5])
            XCTAssertEqual(try file.metadata.string("general.architecture"), "llama")
        }
    }

    func testWriteToDiskAndReadBack() throws {
        let dir = temporaryDirectory()
        let path = dir + "/tiny.gguf"
        var model = TinyLlama()
        model.weightType = .q4_1
        try model.write(to: path)
        let file = try GGUFFile(path: path)
        XCTAssertEqual(file.tensors.count, model.tensorShapes.count)
        XCTAssertEqual(try file.metadata.uint32("llama.block_count"), 2)
        XCTAssertEqual(file.tensor(named: "blk.0.attn_k.weight")?.dimensions, [32, 16])
        XCTAssertEqual(file.tensor(named: "blk.1.ffn_up.weight")?.type, .q4_1)
        XCTAssertEqual(file.tensor(named: "output_norm.weight")?.type, .f32)
        // No temporary file is left behind.
        XCTAssertEqual(try FileManager.default.contentsOfDirectory(atPath: dir), ["tiny.gguf"])
    }

    func testTypedLookupErrorsNameKeyAndType() throws {
        var md = Metadata(source: "m.gguf")
        md.set("llama.block_count", .string("thirty"))
        md.set("small", .int32(-1))
        md.set("ok", .uint8(7))
        XCTAssertEqual(try md.uint32("ok"), 7, "any integer type that fits is accepted")
        XCTAssertThrowsError(try md.uint32("llama.block_count")) { error in
            let text = String(describing: error)
            XCTAssertTrue(text.contains("m.gguf") && text.contains("llama.block_count") && text.contains("u32"), text)
        }
        XCTAssertThrowsError(try md.uint32("small")) { XCTAssertTrue(String(describing: $0).contains("small")) }
        XCTAssertThrowsError(try md.float("missing.key")) {
            XCTAssertEqual(String(describing: $0), "m.gguf: metadata key 'missing.key' is missing")
        }
        XCTAssertNil(try md.floatIfPresent("missing.key"))
        XCTAssertThrowsError(try md.stringIfPresent("ok"))
    }

    func testWriterRejectsWrongSizes() {
        var writer = GGUFWriter()
        XCTAssertThrowsError(try writer.addTensor(name: "x", type: .q4_0, dimensions: [31], bytes: []))
        XCTAssertThrowsError(try writer.addTensor(name: "x", type: .f32, dimensions: [2], bytes: [0, 0, 0]))
        XCTAssertNoThrow(try writer.addTensor(name: "x", type: .f32, dimensions: [1], bytes: [0, 0, 0, 0]))
        XCTAssertThrowsError(try writer.addTensor(name: "x", type: .f32, dimensions: [1], bytes: [0, 0, 0, 0]))
    }
}
