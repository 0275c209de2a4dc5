import ArgumentParser
import Foundation
import GGUF
import LoRA

/// Random-weight models in the shapes of the models users fine-tune (Llama 3.2 1B, Qwen2.5 1.5B, Llama 3.1 8B),
/// written with our own GGUF writer, for the scale benchmark (`scripts/bench-scale.sh`). Quantized blocks are random
/// bytes with their scales set so that weights are of the size trained models have (about 0.02); norms are 1.
struct MakeModelBench: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "make-model", abstract: "Write a random-weight GGUF model in the shape of a real one.")

    @Option(help: "llama-3.2-1b, qwen2.5-1.5b or llama-3.1-8b.") var shape: String
    @Option(help: "q4_k (Q6_K head, as Q4_K_M files) or q8_0.") var type = "q4_k"
    @Option(name: .shortAndLong) var output: String
    @Option(help: ArgumentHelp("Copy this model's tokenizer, its vocabulary padded with unused tokens to the shape's size, so that `lorakit train` runs on the random model.", valueName: "GGUF"))
    var tokenizerFrom: String?

    struct Shape {
        var architecture: String
        var layers, embedding, feedForward, heads, kvHeads, vocabulary: Int
        var tied: Bool
        var ropeBase: Float
    }

    static let shapes: [String: Shape] = [
        "llama-3.2-1b": Shape(architecture: "llama", layers: 16, embedding: 2048, feedForward: 8192, heads: 32, kvHeads: 8,
                              vocabulary: 128_256, tied: true, ropeBase: 500_000),
        "qwen2.5-1.5b": Shape(architecture: "qwen2", layers: 28, embedding: 1536, feedForward: 8960, heads: 12, kvHeads: 2,
                              vocabulary: 151_936, tied: true, ropeBase: 1_000_000),
        "llama-3.1-8b": Shape(architecture: "llama", layers: 32, embedding: 4096, feedForward: 14336, heads: 32, kvHeads: 8,
                              vocabulary: 128_256, tied: false, ropeBase: 500_000),
    ]

    /// The `tokenizer.*` keys of another model; tokens beyond its vocabulary are `<unused_N>` (type unused, never
    /// produced by the tokenizer), so text tokenizes as in that model and the ids fit the shape's head.
    static func copyTokenizer(from path: String, vocabulary: Int, into md: inout Metadata) throws {
        let source = try GGUFFile(path: path)
        for (key, value) in source.metadata.entries where key.hasPrefix("tokenizer.") {
            guard case let .array(type, items) = value, items.count < vocabulary,
                  key == "tokenizer.ggml.tokens" || key == "tokenizer.ggml.token_type" || key == "tokenizer.ggml.scores" else {
                md.set(key, value)
                continue
            }
            let padding: [MetadataValue] = (items.count..<vocabulary).map { i in
                switch key {
                case "tokenizer.ggml.tokens": return .string("<unused_\(i)>")
                case "tokenizer.ggml.token_type": return type == .uint32 ? .uint32(5) : .int32(5)
                default: return type == .float64 ? .float64(0) : .float32(0)
                }
            }
            md.set(key, .array(type, items + padding))
        }
    }

    func run() throws {
        guard let s = Self.shapes[shape] else {
            throw ValidationError("--shape: '\(shape)' is not one of \(Self.shapes.keys.sorted().joined(separator: ", "))")
        }
        guard type == "q4_k" || type == "q8_0" else { throw ValidationError("--type: '\(type)' is not q4_k or q8_0") }
        let a = s.architecture + "."
        var md = Metadata()
        md.set("general.architecture", .string(s.architecture))
        md.set("general.name", .string("random \(shape) \(type)"))
        for (key, value) in [("block_count", s.layers), ("context_length", 131_072), ("embedding_length", s.embedding),
                             ("feed_forward_length", s.feedForward), ("attention.head_count", s.heads),
                             ("attention.head_count_kv", s.kvHeads)] {
            md.set(a + key, .uint32(UInt32(value)))
        }
        md.set(a + "rope.freq_base", .float32(s.ropeBase))
        md.set(a + "attention.layer_norm_rms_epsilon", .float32(1e-5))
        if let path = tokenizerFrom { try Self.copyTokenizer(from: path, vocabulary: s.vocabulary, into: &md) }
        var writer = GGUFWriter(metadata: md)
        var rng = SplitMix(seed: 42)
        let linear: TensorType = type == "q4_k" ? .q4_K : .q8_0, head: TensorType = type == "q4_k" ? .q6_K : .q8_0
        func add(_ name: String, _ dims: [Int], _ t: TensorType) throws {
            try writer.addTensor(name: name, type: t, dimensions: dims, bytes: Self.randomBlocks(t, count: dims.reduce(1, *), rng: &rng))
        }
        func norm(_ name: String) throws { try writer.addTensor(name: name, dimensions: [s.embedding], values: .init(repeating: 1, count: s.embedding)) }
        let d = s.embedding / s.heads, q = s.heads * d, kv = s.kvHeads * d
        try add("token_embd.weight", [s.embedding, s.vocabulary], s.tied ? head : linear)
        for l in 0..<s.layers {
            let p = "blk.\(l)."
            try norm(p + "attn_norm.weight")
            try add(p + "attn_q.weight", [s.embedding, q], linear)
            try add(p + "attn_k.weight", [s.embedding, kv], linear)
            try add(p + "attn_v.weight", [s.embedding, kv], linear)
            if s.architecture == "qwen2" {
                for (n, width) in [("attn_q.bias", q), ("attn_k.bias", kv), ("attn_v.bias", kv)] {
                    try writer.addTensor(name: p + n, dimensions: [width], values: (0..<width).map { _ in Float(0.04 * rng.nextUnit() - 0.02) })
                }
            }
            try add(p + "attn_output.weight", [q, s.embedding], linear)
            try norm(p + "ffn_norm.weight")
            try add(p + "ffn_gate.weight", [s.embedding, s.feedForward], linear)
            try add(p + "ffn_up.weight", [s.embedding, s.feedForward], linear)
            try add(p + "ffn_down.weight", [s.feedForward, s.embedding], linear)
        }
        try norm("output_norm.weight")
        if !s.tied { try add("output.weight", [s.embedding, s.vocabulary], head) }
        try writer.write(to: output)
        print("wrote \(output): \(shape), \(type), \(writer.tensors.count) tensors")
    }

    /// Random blocks of `type` for `count` weights: random quants and sub-block scales, the block scales (f16) fixed
    /// so that weights come out near ±0.02 and centred (Q4_K's minimum cancels its mean).
    static func randomBlocks(_ type: TensorType, count: Int, rng: inout SplitMix) -> [UInt8] {
        let blocks = count / type.blockSize, size = type.byteCount(elements: type.blockSize)!
        var bytes = [UInt8](repeating: 0, count: blocks * size)
        bytes.withUnsafeMutableBytes { raw in
            let words = raw.bindMemory(to: UInt64.self)
            for i in words.indices { words[i] = rng.next() }
            for i in (words.count * 8)..<raw.count { raw[i] = UInt8(truncatingIfNeeded: rng.next()) }
            func half(_ x: Float, at offset: Int) { raw.storeBytes(of: HalfPrecision.halfBits(from: x).littleEndian, toByteOffset: offset, as: UInt16.self) }
            for b in 0..<blocks {
                let base = b * size
                switch type {
                case .q4_K: half(1e-4, at: base); half(7.5e-4, at: base + 2)  // d, dmin; then scales, quants
                case .q6_K: half(2e-5, at: base + 208)  // quants, scales, then d
                case .q8_0: half(2e-4, at: base)
                default: preconditionFailure("random blocks of \(type) are not written")
                }
            }
        }
        return bytes
    }
}
