import Foundation
import GGUF
import Kernels
import Llama
import LoRA
import TestSupport
import XCTest

enum AdapterFixtures {
    static func model() throws -> String { try TestData.smolLM2() }
    static func shared(_ relative: String) throws -> String { try TestData.shared(relative) }
    static let smolHeads = PEFT.Heads(heads: 9, kvHeads: 3)
}

final class AdapterConversionTests: XCTestCase {
    func testPEFTAdapterConvertsAndRoundTrips() throws {
        let dir = try AdapterFixtures.shared("testdata/peft/smollm2-shakespeare-r8")
        let (adapter, alpha, rs, base) = try PEFT.read(directory: dir, heads: AdapterFixtures.smolHeads)
        XCTAssertEqual(alpha, 16)
        XCTAssertFalse(rs)
        XCTAssertEqual(base, "HuggingFaceTB/SmolLM2-135M-Instruct")
        XCTAssertEqual(adapter.order.count, 210)
        XCTAssertEqual(adapter["blk.0.attn_q"]!.scale, 2)
        let out = temporaryDirectory() + "/peft"
        try PEFT.write(adapter, alpha: alpha, rsLoRA: rs, baseModel: base, heads: AdapterFixtures.smolHeads, to: out)
        let originalBytes = Array(FileManager.default.contents(atPath: dir + "/adapter_model.safetensors")!)
        let writtenBytes = Array(FileManager.default.contents(atPath: out + "/adapter_model.safetensors")!)
        let original = try SafeTensors.parse(originalBytes, path: "original")
        let written = try SafeTensors.parse(writtenBytes, path: "written")
        XCTAssertEqual(Set(original.tensors.map(\.name)), Set(written.tensors.map(\.name)))
        for t in original.tensors {
            let w = written.tensors.first { $0.name == t.name }!
            XCTAssertEqual(w.shape, t.shape, t.name)
            let a = try SafeTensors.floats(t, in: originalBytes, dataStart: original.dataStart, path: "o")
            let b = try SafeTensors.floats(w, in: writtenBytes, dataStart: written.dataStart, path: "w")
            XCTAssertTrue(a == b, "\(t.name) differs after PEFT → GGUF order → PEFT")
        }
    }

    /// The PEFT adapter applied at run time changes the model clearly (and its Q/K rows are in GGUF order: a wrong
    /// permutation would make it hurt far more than 12 training steps of Shakespeare can help).
    func testPEFTAdapterChangesPerplexity() throws {
        let model = try LlamaModel<Float>(file: GGUFFile(path: try AdapterFixtures.model()))
        let ref = try GGUFFile(path: try AdapterFixtures.shared("testdata/reference/smollm2-base-logits-compact.gguf"))
        let ids = try ref.int32s(of: ref.requireTensor("input_ids"))
        let targets = Array(ids.dropFirst()) + [-1]
        let base = try model.loss(tokens: ids, targets: targets, batch: 1).sum / 63
        let (adapter, _, _, _) = try PEFT.read(directory: try AdapterFixtures.shared("testdata/peft/smollm2-shakespeare-r8"), heads: AdapterFixtures.smolHeads)
        try model.attach(adapter)
        let adapted = try model.loss(tokens: ids, targets: targets, batch: 1).sum / 63
        XCTAssertGreaterThan(abs(adapted - base), 0.01, "base \(base), adapted \(adapted)")
        XCTAssertLessThan(adapted, base, "trained on Shakespeare, it must lower the loss on Shakespeare (a wrong Q/K row order raises it)")
    }

    func testLlamaCppAdapterToPEFTAndBackIsBitExact() throws {
        let path = try AdapterFixtures.shared("testdata/reference/smollm2-lora-init.gguf")
        let (adapter, info) = try AdapterFile.read(path: path, as: Float.self)
        let dir = temporaryDirectory()
        try PEFT.write(adapter, alpha: info.alpha, rsLoRA: false, baseModel: nil, heads: AdapterFixtures.smolHeads, to: dir + "/peft")
        let (back, alpha, _, _) = try PEFT.read(directory: dir + "/peft", heads: AdapterFixtures.smolHeads)
        var d = AdapterFile.Description(alpha: alpha)
        d.heads = (9, 3)
        try AdapterFile.write(back, description: d, to: dir + "/back.gguf")
        let a = try GGUFFile(path: path), b = try GGUFFile(path: dir + "/back.gguf")
        XCTAssertEqual(try b.metadata.float("adapter.lora.alpha"), 16)
        XCTAssertEqual(a.tensors.count, b.tensors.count)
        for t in a.tensors {
            let u = try b.requireTensor(t.name)
            XCTAssertEqual(u.dimensions, t.dimensions, t.name)
            XCTAssertTrue(Array(a.data(of: t)) == Array(b.data(of: u)), "\(t.name) not bit-exact")
        }
    }

    func testFinetuneFilesConvertWithTheSeedMath() throws {
        let bin = try SeedAdapter.read(path: try AdapterFixtures.shared("testdata/seed/seed-lora-smollm2-shakespeare-12.bin"))
        let ckpt = try SeedAdapter.read(path: try AdapterFixtures.shared("testdata/seed/seed-checkpoint-smollm2-shakespeare-12.gguf"))
        XCTAssertEqual(bin.rank, 8)
        XCTAssertEqual(bin.headerAlpha, 16)
        XCTAssertEqual(bin.normDeltas.count, 61, "attn_norm and ffn_norm of 30 layers and output_norm")
        XCTAssertEqual(Set(bin.adapter.order), Set(ckpt.adapter.order))
        XCTAssertNotNil(bin.adapter["output"])
        XCTAssertNotNil(bin.adapter["token_embd"])
        // ΔW = B·A by hand from the raw ggla data: loraA ne [r, in] (data [in][r]), loraB ne [r, out] (data [out][r]).
        let raw = try AdapterFixtures.rawGGLA(try AdapterFixtures.shared("testdata/seed/seed-lora-smollm2-shakespeare-12.bin"))
        let (aDims, aData) = raw["blk.3.attn_v.weight.loraA"]!, (bDims, bData) = raw["blk.3.attn_v.weight.loraB"]!
        let r = aDims[0], inF = aDims[1], outF = bDims[1]
        let pair = bin.adapter["blk.3.attn_v"]!
        XCTAssertEqual(pair.scale, 1, "the finetune trained with ΔW = B·A")
        for (o, i) in [(0, 0), (5, 100), (191, 575), (77, 333)] {
            let seed = (0..<r).reduce(Float(0)) { $0 + bData[o * r + $1] * aData[i * r + $1] }
            let ours = (0..<r).reduce(Float(0)) { $0 + pair.b[o * pair.rank + $1] * pair.a[$1 * pair.inFeatures + i] }
            XCTAssertEqual(ours, seed, accuracy: 1e-6)
            XCTAssertEqual(pair.inFeatures, inF)
            XCTAssertEqual(pair.outFeatures, outF)
        }
        // token_embd: ΔE[v][e] = Σ b[v][j]·a[e][j] with a ne [r, embd], b ne [r, vocab].
        let (ea, eaData) = raw["token_embd.weight.loraA"]!, (_, ebData) = raw["token_embd.weight.loraB"]!
        let emb = bin.adapter["token_embd"]!
        let re = ea[0]
        for (v, e) in [(0, 0), (1234, 17), (49151, 575)] {
            let seed = (0..<re).reduce(Float(0)) { $0 + ebData[v * re + $1] * eaData[e * re + $1] }
            let ours = (0..<emb.rank).reduce(Float(0)) { $0 + emb.b[e * emb.rank + $1] * emb.a[$1 * emb.inFeatures + v] }
            XCTAssertEqual(ours, seed, accuracy: 1e-6)
        }
    }

    func testAdapterFileFormatDetails() throws {
        // Written adapters follow llama.cpp's layout: ne [in, r] / [r, out], token_embd flipped, alpha as f32.
        let adapter = LoRAAdapter<Float>()
        adapter.add(try LoRAPair(name: "blk.0.attn_q", rank: 2, inFeatures: 4, outFeatures: 6, scale: 8, a: (0..<8).map(Float.init), b: (0..<12).map(Float.init)))
        adapter.add(try LoRAPair(name: "token_embd", rank: 2, inFeatures: 10, outFeatures: 4, scale: 8, a: (0..<20).map(Float.init), b: (0..<8).map(Float.init)))
        let path = temporaryDirectory() + "/a.gguf"
        try AdapterFile.write(adapter, description: AdapterFile.Description(alpha: 16), to: path)
        let f = try GGUFFile(path: path)
        XCTAssertEqual(try f.metadata.string("general.type"), "adapter")
        XCTAssertEqual(try f.metadata.string("adapter.type"), "lora")
        XCTAssertEqual(f.metadata["adapter.lora.alpha"], .float32(16))
        XCTAssertEqual(f.tensor(named: "blk.0.attn_q.weight.lora_a")?.dimensions, [4, 2])
        XCTAssertEqual(f.tensor(named: "blk.0.attn_q.weight.lora_b")?.dimensions, [2, 6])
        XCTAssertEqual(f.tensor(named: "token_embd.weight.lora_a")?.dimensions, [2, 10])
        XCTAssertEqual(f.tensor(named: "token_embd.weight.lora_b")?.dimensions, [2, 4])
        let (back, _) = try AdapterFile.read(path: path, as: Float.self)
        XCTAssertEqual(back["token_embd"]!.a, adapter["token_embd"]!.a)
        XCTAssertEqual(back["blk.0.attn_q"]!.b, adapter["blk.0.attn_q"]!.b)
        // A per-tensor scale that alpha/r cannot express is folded into B.
        adapter["blk.0.attn_q"]!.scale = 2
        try AdapterFile.write(adapter, description: AdapterFile.Description(alpha: 16), to: path)
        let (folded, _) = try AdapterFile.read(path: path, as: Float.self)
        XCTAssertEqual(folded["blk.0.attn_q"]!.b[3] * folded["blk.0.attn_q"]!.scale, 2 * 3)
    }
}

extension AdapterFixtures {
    /// A minimal independent ggla reader for the test (name → (ne, data)).
    static func rawGGLA(_ path: String) throws -> [String: ([Int], [Float])] {
        let d = Array(FileManager.default.contents(atPath: path)!)
        func u32(_ o: Int) -> Int { Int(d[o]) | Int(d[o + 1]) << 8 | Int(d[o + 2]) << 16 | Int(d[o + 3]) << 24 }
        var c = 16, out: [String: ([Int], [Float])] = [:]
        while c < d.count {
            let n = u32(c), len = u32(c + 4)
            let dims = (0..<n).map { u32(c + 12 + 4 * $0) }
            c += 12 + 4 * n
            let name = String(decoding: d[c..<(c + len)], as: UTF8.self)
            c += len
            c = (c + 31) / 32 * 32
            let count = dims.reduce(1, *)
            out[name] = (dims, (0..<count).map { Float(bitPattern: UInt32(u32(c + 4 * $0))) })
            c += 4 * count
        }
        return out
    }
}

/// Phi-3's fused weights: LoRA on `attn_qkv` and the gate+up `ffn_up`, named as PEFT names them on Phi3ForCausalLM
/// (`self_attn.qkv_proj`, `mlp.gate_up_proj`), round trip bit-exact, and requests for Q/K/V or gate/up resolve to them.
final class FusedAdapterTests: XCTestCase {
    func testPhi3AdaptersUseTheFusedModuleNames() throws {
        var tiny = TinyLlama()
        tiny.architecture = "phi3"
        let path = temporaryDirectory() + "/phi3.gguf"
        try tiny.write(to: path)
        let model = try LlamaModel<Float>(file: GGUFFile(path: path))
        XCTAssertEqual(model.config.blockTargets, [.attnQKV, .attnOutput, .ffnUp, .ffnDown])
        XCTAssertEqual(model.config.resolve([.attnQ, .attnV]), [.attnQKV])
        XCTAssertEqual(model.config.resolve(LoRATarget.defaultTargets), [.attnQKV, .attnOutput, .ffnUp, .ffnDown])
        XCTAssertNil(model.config.features(of: .ffnGate))
        XCTAssertEqual(model.config.features(of: .ffnUp)!.out, 2 * tiny.feedForwardLength)
        let adapter = try LoRAAdapter<Float>.initialized(layers: model.config.layers, shapes: { model.config.features(of: $0) },
                                                         targets: model.config.blockTargets, rank: { _ in 2 }, alpha: 4,
                                                         rsLoRA: false, seed: 3)
        for name in adapter.order {  // B ≠ 0, so that the adapter changes the logits
            let pair = adapter[name]!
            pair.b = (0..<pair.b.count).map { Float(sin(Double($0) * 0.7)) * 0.3 }
        }
        try model.attach(adapter)
        let heads = PEFT.Heads(config: model.config)
        let dir = temporaryDirectory() + "/peft"
        try PEFT.write(adapter, alpha: 4, rsLoRA: false, baseModel: nil, heads: heads, to: dir)
        let bytes = Array(FileManager.default.contents(atPath: dir + "/adapter_model.safetensors")!)
        let names = Set(try SafeTensors.parse(bytes, path: "peft").tensors.map(\.name))
        XCTAssertTrue(names.contains("base_model.model.model.layers.1.self_attn.qkv_proj.lora_A.weight"), "\(names.sorted())")
        XCTAssertTrue(names.contains("base_model.model.model.layers.0.mlp.gate_up_proj.lora_B.weight"), "\(names.sorted())")
        XCTAssertFalse(names.contains { $0.contains("up_proj") && !$0.contains("gate_up_proj") })
        let config = String(decoding: FileManager.default.contents(atPath: dir + "/adapter_config.json")!, as: UTF8.self)
        XCTAssertTrue(config.contains("\"gate_up_proj\"") && config.contains("\"qkv_proj\""), config)
        let (back, _, _, _) = try PEFT.read(directory: dir, heads: heads)
        XCTAssertEqual(back.order.sorted(), adapter.order.sorted())
        for name in adapter.order {
            XCTAssertEqual(back[name]!.a, adapter[name]!.a, name)
            XCTAssertEqual(back[name]!.b, adapter[name]!.b, name)
        }
        // Merged into the base, the fused adapter gives the logits of the adapter applied at run time.
        let tokens: [Int32] = [3, 17, 42, 5, 60, 11]
        let applied = try model.logits(tokens: tokens)
        let merged = temporaryDirectory() + "/merged.gguf"
        _ = try Merger(outputType: .f32).merge(model: model, inputs: [.init(adapter: adapter)], to: merged)
        let plain = try LlamaModel<Float>(file: GGUFFile(path: merged)).logits(tokens: tokens)
        let base = try LlamaModel<Float>(file: GGUFFile(path: path)).logits(tokens: tokens)
        XCTAssertGreaterThan(zip(applied, base).map { abs($0 - $1) }.max()!, 0.01, "the adapter must change the logits")
        for (a, b) in zip(applied, plain) { XCTAssertEqual(a, b, accuracy: 1e-4) }
    }
}
