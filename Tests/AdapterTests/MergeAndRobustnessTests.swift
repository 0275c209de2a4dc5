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

    /// The command maps options onto `Merger` (whose arithmetic LibraryAlgorithmTests checks): merged logits equal
    /// runtime logits, and a bad --type is a usage error.
    func testMergeCommand() throws {
        let dir = temporaryDirectory()
        var tiny = TinyLlama()
        tiny.addTinyTokenizer()
        tiny.tied = true
        try tiny.write(to: dir + "/base.gguf")
        let base = try LlamaModel<Float>(file: GGUFFile(path: dir + "/base.gguf"))
        let a = try LoRAAdapter<Float>.initialized(layers: 2, shapes: { base.config.features(of: $0) }, targets: LoRATarget.allCases,
                                                   rank: { _ in 4 }, alpha: 8, rsLoRA: false, seed: 1)
        var rng = SplitMix64(seed: 1)
        for n in a.order { a[n]!.b = a[n]!.b.map { _ in rng.nextSigned() * 0.2 } }
        var d = AdapterFile.Description(alpha: 8)
        d.heads = (4, 2)
        try AdapterFile.write(a, description: d, to: dir + "/a.gguf")
        let tokens: [Int32] = [1, 5, 9, 33, 2, 60, 12]
        try base.attach(try AdapterLoader.load(dir + "/a.gguf").adapter)
        let runtime = try base.logits(tokens: tokens)
        let (status, out, err) = try lorakit(["merge", "-m", dir + "/base.gguf", "--lora", dir + "/a.gguf", "-o", dir + "/m.gguf", "--type", "f32"])
        XCTAssertEqual(status, 0, err)
        XCTAssertTrue(out.contains("merged 16 tensors from 1 adapter(s)"), out)
        let merged = try LlamaModel<Float>(file: GGUFFile(path: dir + "/m.gguf")).logits(tokens: tokens)
        XCTAssertLessThan(zip(runtime, merged).map { abs($0 - $1) }.max()!, 1e-4)
        let (bad, _, badErr) = try lorakit(["merge", "-m", dir + "/base.gguf", "--lora", dir + "/a.gguf", "-o", dir + "/x.gguf", "--type", "q8_k"])
        XCTAssertEqual(bad, 64, badErr)
        // A K-quant asked for rows of 32: written as llama-quantize's fallback, each tensor said in one line.
        let (k, _, kErr) = try lorakit(["merge", "-m", dir + "/base.gguf", "--lora", dir + "/a.gguf", "-o", dir + "/k.gguf", "--type", "q4_k"])
        XCTAssertEqual(k, 0, kErr)
        XCTAssertTrue(kErr.contains("warning: 14 tensors (token_embd.weight, …): rows of 32 are not whole Q4_K blocks of 256; wrote Q5_0\nwarning: 2 tensors (blk.0.ffn_down.weight, …): rows of 64 are not whole Q4_K blocks of 256; wrote Q5_0\n"), kErr)
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
