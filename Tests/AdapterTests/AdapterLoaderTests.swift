import Foundation
import GGUF
import Llama
import LoRA
import TestSupport
import XCTest

/// One loader for every adapter format; what it finds is the same adapter whichever format holds it.
final class AdapterLoaderTests: XCTestCase {
    func testEveryFormatLoadsAndSaysWhatItIs() throws {
        let dir = temporaryDirectory()
        let adapter = LoRAAdapter<Float>()
        var rng = SplitMix64(seed: 3)
        for name in ["blk.0.attn_q", "blk.0.attn_k", "blk.1.ffn_down"] {
            let (inF, outF) = name.hasSuffix("ffn_down") ? (64, 32) : (32, name.hasSuffix("attn_k") ? 16 : 32)
            adapter.add(try LoRAPair(name: name, rank: 2, inFeatures: inF, outFeatures: outF, scale: 4,
                                     a: (0..<(2 * inF)).map { _ in rng.nextSigned() }, b: (0..<(2 * outF)).map { _ in rng.nextSigned() }))
        }
        var d = AdapterFile.Description(alpha: 8)
        d.heads = (4, 2)
        try AdapterFile.write(adapter, description: d, to: dir + "/a.gguf")
        let gguf = try AdapterLoader.load(dir + "/a.gguf")
        XCTAssertEqual(gguf.format, .gguf)
        XCTAssertEqual(gguf.heads?.heads, 4)
        XCTAssertTrue(gguf.summary.contains("3 tensors, rank 2, alpha 8.0"), gguf.summary)

        _ = try AdapterConversion.toPEFT(gguf, to: dir + "/peft")
        XCTAssertThrowsError(try AdapterLoader.load(dir + "/peft")) { XCTAssertTrue("\($0)".contains("head counts"), "\($0)") }
        let peft = try AdapterLoader.load(dir + "/peft", heads: PEFT.Heads(heads: 4, kvHeads: 2))
        XCTAssertEqual(peft.format, .peft)
        for name in adapter.order {
            let x = gguf.adapter[name]!, y = peft.adapter[name]!
            XCTAssertEqual(x.scale, y.scale)
            XCTAssertEqual(x.a, y.a)
            XCTAssertEqual(x.b, y.b, "Q/K rows come back in GGUF order")
        }
        XCTAssertThrowsError(try AdapterLoader.load(dir + "/missing.gguf")) { XCTAssertTrue("\($0)".contains("no such file")) }
        try Data("not an adapter".utf8).write(to: URL(fileURLWithPath: dir + "/junk.bin"))
        XCTAssertThrowsError(try AdapterLoader.load(dir + "/junk.bin"))
    }

    /// The 2023 finetune's file loads through the same loader, with its norm deltas.
    func testSeedFileLoads() throws {
        let loaded = try AdapterLoader.load(try TestData.shared("testdata/seed/seed-lora-smollm2-shakespeare-12.bin"))
        XCTAssertEqual(loaded.format, .seed)
        XCTAssertFalse(loaded.normDeltas.isEmpty)
        XCTAssertTrue(loaded.adapter.order.allSatisfy { loaded.adapter[$0]!.scale == 1 })
    }

    /// Head counts that cannot split the Q/K rows are an error before anything is written, not a trap.
    func testImpossibleHeadCountsAreAnError() throws {
        let dir = temporaryDirectory()
        let adapter = LoRAAdapter<Float>()
        adapter.add(try LoRAPair(name: "blk.0.attn_q", rank: 2, inFeatures: 32, outFeatures: 32, scale: 1,
                                 a: [Float](repeating: 0.1, count: 64), b: [Float](repeating: 0.2, count: 64)))
        for heads in [(0, 0), (7, 7), (32, 32)] {
            var d = AdapterFile.Description(alpha: 2)
            d.heads = heads
            try AdapterFile.write(adapter, description: d, to: dir + "/a.gguf")
            let loaded = try AdapterLoader.load(dir + "/a.gguf")
            XCTAssertThrowsError(try AdapterConversion.toPEFT(loaded, to: dir + "/out-\(heads.0)")) {
                XCTAssertTrue("\($0)".contains("cannot be split"), "\($0)")
            }
            XCTAssertFalse(FileManager.default.fileExists(atPath: dir + "/out-\(heads.0)"), "nothing left behind")
        }
    }
}
