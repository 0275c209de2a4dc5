import Foundation
import GGUF
import Llama
import LoRA
import TestSupport
import XCTest

final class MergeAndRobustnessTests: XCTestCase {
    func lorakit(_ args: [String]) throws -> (Int32, String, String) {
        let p = Process()
        let dir = URL(fileURLWithPath: CommandLine.arguments[0]).deletingLastPathComponent()
        var bin = dir.appendingPathComponent("lorakit").path
        if !FileManager.default.fileExists(atPath: bin) { bin = dir.deletingLastPathComponent().appendingPathComponent("lorakit").path }
        p.executableURL = URL(fileURLWithPath: bin)
        p.arguments = args
        let o = Pipe(), e = Pipe()
        p.standardOutput = o
        p.standardError = e
        try p.run()
        let out = o.fileHandleForReading.readDataToEndOfFile(), err = e.fileHandleForReading.readDataToEndOfFile()
        p.waitUntilExit()
        return (p.terminationStatus, String(decoding: out, as: UTF8.self), String(decoding: err, as: UTF8.self))
    }

    /// On a tiny F32 model: merged logits equal runtime logits, scale 0 is the base, 0.5 + 0.5 is the average.
    func testMergeEqualsRuntimeAdapters() throws {
        let dir = temporaryDirectory()
        var tiny = TinyLlama()
        tiny.addTinyTokenizer()
        tiny.tied = true
        try tiny.write(to: dir + "/base.gguf")
        let base = try LlamaModel<Float>(file: GGUFFile(path: dir + "/base.gguf"))
        func randomAdapter(_ seed: UInt64) throws -> LoRAAdapter<Float> {
            let a = try LoRAAdapter<Float>.initialized(layers: 2, shapes: { base.config.features(of: $0) }, targets: LoRATarget.allCases,
                                                       rank: { _ in 4 }, alpha: 8, rsLoRA: false, seed: seed)
            var rng = SplitMix64(seed: seed)
            for n in a.order { a[n]!.b = a[n]!.b.map { _ in rng.nextSigned() * 0.2 } }
            return a
        }
        var d = AdapterFile.Description(alpha: 8)
        d.heads = (4, 2)
        try AdapterFile.write(try randomAdapter(1), description: d, to: dir + "/a.gguf")
        try AdapterFile.write(try randomAdapter(2), description: d, to: dir + "/b.gguf")
        let tokens: [Int32] = [1, 5, 9, 33, 2, 60, 12]
        func logits(_ path: String, _ adapters: [(String, Float)]) throws -> [Float] {
            let m = try LlamaModel<Float>(file: GGUFFile(path: path))
            for (p, s) in adapters { try m.attach(try AdapterFile.read(path: p, as: Float.self).0, multiplier: s) }
            return try m.logits(tokens: tokens)
        }
        let runtime = try logits(dir + "/base.gguf", [(dir + "/a.gguf", 1)])
        var (status, _, err) = try lorakit(["merge", "-m", dir + "/base.gguf", "--lora", dir + "/a.gguf", "-o", dir + "/m.gguf", "--type", "f32"])
        XCTAssertEqual(status, 0, err)
        let merged = try logits(dir + "/m.gguf", [])
        XCTAssertNotNil(try GGUFFile(path: dir + "/m.gguf").tensor(named: "output.weight"), "the head adapter unties the head")
        XCTAssertLessThan(zip(runtime, merged).map { abs($0 - $1) }.max()!, 1e-4)
        (status, _, err) = try lorakit(["merge", "-m", dir + "/base.gguf", "--lora-scaled", dir + "/a.gguf", "0", "-o", dir + "/zero.gguf", "--type", "f32"])
        XCTAssertEqual(status, 0, err)
        XCTAssertTrue(try logits(dir + "/zero.gguf", []) == logits(dir + "/base.gguf", []), "scale 0 reproduces the base exactly")
        let half = try logits(dir + "/base.gguf", [(dir + "/a.gguf", 0.5), (dir + "/b.gguf", 0.5)])
        let a = runtime, b = try logits(dir + "/base.gguf", [(dir + "/b.gguf", 1)]), baseLogits = try logits(dir + "/base.gguf", [])
        // Logits are not linear in the weights, so compare merged weights: merge a and b at 0.5 each vs their average.
        (status, _, err) = try lorakit(["merge", "-m", dir + "/base.gguf", "--lora-scaled", dir + "/a.gguf", "0.5", "--lora-scaled", dir + "/b.gguf", "0.5",
                                        "-o", dir + "/ab.gguf", "--type", "f32"])
        XCTAssertEqual(status, 0, err)
        _ = try lorakit(["merge", "-m", dir + "/base.gguf", "--lora", dir + "/a.gguf", "-o", dir + "/ma.gguf", "--type", "f32"])
        _ = try lorakit(["merge", "-m", dir + "/base.gguf", "--lora", dir + "/b.gguf", "-o", dir + "/mb.gguf", "--type", "f32"])
        let ab = try GGUFFile(path: dir + "/ab.gguf"), ma = try GGUFFile(path: dir + "/ma.gguf"), mb = try GGUFFile(path: dir + "/mb.gguf")
        for t in ab.tensors where t.name.contains("attn_q") || t.name.contains("ffn_down") {
            let x = try ab.floats(of: t), y = try ma.floats(of: ma.requireTensor(t.name)), z = try mb.floats(of: mb.requireTensor(t.name))
            for i in stride(from: 0, to: x.count, by: 7) { XCTAssertEqual(x[i], (y[i] + z[i]) / 2, accuracy: 1e-5) }
        }
        XCTAssertLessThan(zip(half, try logits(dir + "/ab.gguf", [])).map { abs($0 - $1) }.max()!, 1e-4)
        _ = (a, b, baseLogits)
    }

    func testHostileAdapterFilesAreErrors() throws {
        let dir = temporaryDirectory()
        let adapter = LoRAAdapter<Float>()
        adapter.add(try LoRAPair(name: "blk.0.attn_q", rank: 2, inFeatures: 32, outFeatures: 32, scale: 1, a: [Float](repeating: 0.1, count: 64), b: [Float](repeating: 0.2, count: 64)))
        try AdapterFile.write(adapter, description: AdapterFile.Description(alpha: 2), to: dir + "/ok.gguf")
        let good = Array(FileManager.default.contents(atPath: dir + "/ok.gguf")!)
        var rng = SplitMix64(seed: 5)
        for i in 0..<300 {
            var bytes = good
            if i % 3 == 0 { bytes = Array(bytes.prefix(Int(rng.next() % UInt64(bytes.count)))) }
            else { for _ in 0..<4 { bytes[Int(rng.next() % 200)] = UInt8(truncatingIfNeeded: rng.next()) } }
            _ = FileManager.default.createFile(atPath: dir + "/bad.gguf", contents: Data(bytes))
            _ = try? AdapterFile.read(path: dir + "/bad.gguf", as: Float.self)  // must not crash
        }
        // Mismatched rank between A and B.
        var writer = GGUFWriter()
        writer.metadata.set("general.type", .string("adapter"))
        writer.metadata.set("adapter.type", .string("lora"))
        try writer.addTensor(name: "blk.0.attn_q.weight.lora_a", dimensions: [32, 2], values: [Float](repeating: 0, count: 64))
        try writer.addTensor(name: "blk.0.attn_q.weight.lora_b", dimensions: [3, 32], values: [Float](repeating: 0, count: 96))
        try writer.write(to: dir + "/rank.gguf")
        XCTAssertThrowsError(try AdapterFile.read(path: dir + "/rank.gguf", as: Float.self)) {
            XCTAssertTrue(String(describing: $0).contains("rank"), String(describing: $0))
        }
        // Safetensors with lying headers.
        func safetensors(_ header: String, data: Int) -> [UInt8] {
            var out: [UInt8] = []
            withUnsafeBytes(of: UInt64(header.utf8.count).littleEndian) { out += $0 }
            return out + Array(header.utf8) + [UInt8](repeating: 0, count: data)
        }
        let cases = [
            #"{"x": {"dtype": "F32", "shape": [4], "data_offsets": [0, 64]}}"#,
            #"{"x": {"dtype": "F32", "shape": [1000000000000], "data_offsets": [0, 16]}}"#,
            #"{"x": {"dtype": "Q9", "shape": [4], "data_offsets": [0, 16]}}"#,
            #"{"x": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}, "y": {"dtype": "F32", "shape": [2], "data_offsets": [8, 16]}}"#,
            #"not json"#,
        ]
        for h in cases { XCTAssertThrowsError(try SafeTensors.parse(safetensors(h, data: 16), path: "t")) }
        var huge: [UInt8] = []
        withUnsafeBytes(of: UInt64.max.littleEndian) { huge += $0 }
        XCTAssertThrowsError(try SafeTensors.parse(huge + [1, 2, 3], path: "t"))
        XCTAssertNoThrow(try SafeTensors.parse(safetensors(#"{"x": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}}"#, data: 16), path: "t"))
    }
}
