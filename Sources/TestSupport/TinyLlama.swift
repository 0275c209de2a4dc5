#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif
import GGUF
import LoRA

/// Writes small random GGUF models for tests, so unit tests need no download: llama, or (with `architecture`)
/// the tensors and metadata of qwen2, qwen3, gemma2, gemma3 or phi3 (fused `attn_qkv` and gate+up `ffn_up`).
public struct TinyLlama {
    /// `general.architecture`, also the metadata keys' prefix.
    public var architecture = "llama"
    /// The head size (`attention.key_length`); nil: embedding / heads.
    public var headDimension: Int?
    /// Gemma: the sliding window, the pattern (every n-th layer global) and the soft caps written to the metadata.
    public var slidingWindow: Int?
    public var slidingPattern: Int?
    public var attentionSoftCap: Float?
    public var finalSoftCap: Float?
    public var vocabularySize = 64
    public var embeddingLength = 32
    public var headCount = 4
    public var kvHeadCount = 2
    public var feedForwardLength = 64
    public var blockCount = 2
    public var contextLength = 128
    public var ropeFreqBase: Float = 10000
    public var rmsEpsilon: Float = 1e-5
    /// Type of the 2-D weight matrices (norms stay F32).
    public var weightType: TensorType = .f32
    /// Tied embeddings: no `output.weight`, the head is `token_embd`.
    public var tied = false
    public var seed: UInt64 = 1
    /// Weights from `formulaValues` instead of the random generator (the tiny transformers references use them).
    public var formulaWeights = false
    /// Extra metadata (e.g. a tokenizer) added after the hyperparameters.
    public var extraMetadata: [(String, MetadataValue)] = []
    /// Dimensions of each head RoPE turns (`rope.dimension_count`); nil: the whole head.
    public var ropeDimensionCount: Int?
    /// Extra F32 tensors (e.g. RoPE factors), written after the others.
    public var extraTensors: [(name: String, dimensions: [Int], values: [Float])] = []

    public init() {}

    /// The names and ggml shapes of every tensor, in file order.
    var headDim: Int { headDimension ?? embeddingLength / headCount }

    public var tensorShapes: [(String, [Int])] {
        let q = headDim * headCount, kv = headDim * kvHeadCount
        var shapes: [(String, [Int])] = [("token_embd.weight", [embeddingLength, vocabularySize])]
        for i in 0..<blockCount {
            let p = "blk.\(i)."
            if architecture == "phi3" {  // fused, in the converter's order
                shapes += [
                    (p + "attn_norm.weight", [embeddingLength]),
                    (p + "attn_qkv.weight", [embeddingLength, q + 2 * kv]),
                    (p + "attn_output.weight", [q, embeddingLength]),
                    (p + "ffn_norm.weight", [embeddingLength]),
                    (p + "ffn_up.weight", [embeddingLength, 2 * feedForwardLength]),
                    (p + "ffn_down.weight", [feedForwardLength, embeddingLength]),
                ]
                continue
            }
            shapes += [
                (p + "attn_norm.weight", [embeddingLength]),
                (p + "attn_q.weight", [embeddingLength, q]),
                (p + "attn_k.weight", [embeddingLength, kv]),
                (p + "attn_v.weight", [embeddingLength, kv]),
                (p + "attn_output.weight", [q, embeddingLength]),
                (p + "ffn_norm.weight", [embeddingLength]),
                (p + "ffn_gate.weight", [embeddingLength, feedForwardLength]),
                (p + "ffn_up.weight", [embeddingLength, feedForwardLength]),
                (p + "ffn_down.weight", [feedForwardLength, embeddingLength]),
            ]
            if architecture == "qwen2" { shapes += [(p + "attn_q.bias", [q]), (p + "attn_k.bias", [kv]), (p + "attn_v.bias", [kv])] }
            if architecture == "qwen3" || architecture == "gemma3" {
                shapes += [(p + "attn_q_norm.weight", [headDim]), (p + "attn_k_norm.weight", [headDim])]
            }
            if architecture.hasPrefix("gemma") {
                shapes += [(p + "post_attention_norm.weight", [embeddingLength]), (p + "post_ffw_norm.weight", [embeddingLength])]
            }
        }
        shapes.append(("output_norm.weight", [embeddingLength]))
        if !tied { shapes.append(("output.weight", [embeddingLength, vocabularySize])) }
        return shapes
    }

    public var metadata: Metadata {
        var md = Metadata()
        let a = architecture + "."
        md.set("general.architecture", .string(architecture))
        md.set("general.name", .string("tiny-\(architecture)-test"))
        md.set(a + "block_count", .uint32(UInt32(blockCount)))
        md.set(a + "context_length", .uint32(UInt32(contextLength)))
        md.set(a + "embedding_length", .uint32(UInt32(embeddingLength)))
        md.set(a + "feed_forward_length", .uint32(UInt32(feedForwardLength)))
        md.set(a + "attention.head_count", .uint32(UInt32(headCount)))
        md.set(a + "attention.head_count_kv", .uint32(UInt32(kvHeadCount)))
        md.set(a + "rope.freq_base", .float32(ropeFreqBase))
        md.set(a + "attention.layer_norm_rms_epsilon", .float32(rmsEpsilon))
        md.set(a + "rope.dimension_count", .uint32(UInt32(ropeDimensionCount ?? headDim)))
        md.set(a + "vocab_size", .uint32(UInt32(vocabularySize)))
        if let headDimension {
            md.set(a + "attention.key_length", .uint32(UInt32(headDimension)))
            md.set(a + "attention.value_length", .uint32(UInt32(headDimension)))
        }
        if let slidingWindow { md.set(a + "attention.sliding_window", .uint32(UInt32(slidingWindow))) }
        if let slidingPattern { md.set(a + "attention.sliding_window_pattern", .uint32(UInt32(slidingPattern))) }
        if let attentionSoftCap { md.set(a + "attn_logit_softcapping", .float32(attentionSoftCap)) }
        if let finalSoftCap { md.set(a + "final_logit_softcapping", .float32(finalSoftCap)) }
        for (k, v) in extraMetadata { md.set(k, v) }
        return md
    }

    /// Builds the writer with random weights (norms near 1, matrices scaled by 1/√in).
    public func writer() throws -> GGUFWriter {
        var rng = SplitMix64(seed: seed)
        var writer = GGUFWriter(metadata: metadata)
        for (name, shape) in tensorShapes {
            let count = shape.reduce(1, *)
            if formulaWeights {
                try writer.addTensor(name: name, dimensions: shape, values: Self.formulaValues(name: name, shape: shape))
            } else if shape.count == 1 {
                let values = (0..<count).map { _ in 1 + 0.1 * rng.nextSigned() }
                try writer.addTensor(name: name, dimensions: shape, values: values)
            } else {
                let scale = 1 / Float(shape[0]).squareRoot()
                let values = (0..<count).map { _ in scale * rng.nextSigned() * 1.7 }
                try writer.addTensor(name: name, dimensions: shape, values: values, type: weightType)
            }
        }
        for t in extraTensors { try writer.addTensor(name: t.name, dimensions: t.dimensions, values: t.values) }
        return writer
    }

    /// A tensor's values from its name alone, as scripts/make-tiny-references.py computes them:
    /// v[k] = amplitude · sin(0.37·k + 0.0007·k² + 0.011·seed + 1), seed = Σ (i + 1)·byteᵢ of the name mod 1000;
    /// norms 1 + 0.1·sin(…), matrices 1.7/√in · sin(…) (ggml shape [in, out], k in row-major [out, in] order).
    public static func formulaValues(name: String, shape: [Int]) -> [Float] {
        let seed = Double(name.utf8.enumerated().reduce(0) { $0 + ($1.offset + 1) * Int($1.element) } % 1000)
        let count = shape.reduce(1, *)
        return (0..<count).map { k in
            let x = Double(k)
            let s = sin(0.37 * x + 0.0007 * x * x + 0.011 * seed + 1)
            return Float(shape.count == 1 ? 1 + 0.1 * s : 1.7 / Double(shape[0]).squareRoot() * s)
        }
    }

    /// Writes the model to `path`.
    public func write(to path: String) throws { try writer().write(to: path) }
}

extension TinyLlama {
    /// Phi-4-mini-style RoPE: the first `rotatedDimensions` of each head turn, with LongRoPE's short and long
    /// factors (different, so that choosing the wrong one shows) and attention factor 1.2 beyond `originalContext`.
    public mutating func addLongRoPE(rotatedDimensions: Int, originalContext: Int) {
        ropeDimensionCount = rotatedDimensions
        let half = rotatedDimensions / 2
        extraTensors += [("rope_factors_long.weight", [half], (0..<half).map { 2 + Float($0) }),
                         ("rope_factors_short.weight", [half], (0..<half).map { 1.1 + 0.2 * Float($0) })]
        extraMetadata += [("\(architecture).rope.scaling.original_context_length", .uint32(UInt32(originalContext))),
                          ("\(architecture).rope.scaling.attn_factor", .float32(1.2))]
    }
}

/// The project's SplitMix64 generator, with a signed draw for test data.
public typealias SplitMix64 = SplitMix

extension SplitMix {
    /// Uniform in [-1, 1).
    public mutating func nextSigned() -> Float { Float(next() >> 40) / Float(1 << 23) - 1 }
}

extension TinyLlama {
    /// A byte-level BPE tokenizer over the 64 characters from space to '_' (no merges), plus `<s>` and `</s>`:
    /// 66 tokens. Sets the vocabulary size to match.
    public mutating func addTinyTokenizer(chatTemplate: String? = nil) {
        vocabularySize = 66
        var tokens: [MetadataValue] = (32..<96).map { .string(String(UnicodeScalar(UInt8($0)))) }
        tokens[0] = .string("Ġ")  // byte-level BPE writes the space as Ġ
        tokens += [.string("<s>"), .string("</s>")]
        extraMetadata += [
            ("tokenizer.ggml.model", .string("gpt2")), ("tokenizer.ggml.pre", .string("gpt-2")),
            ("tokenizer.ggml.tokens", .array(.string, tokens)),
            ("tokenizer.ggml.token_type", .array(.int32, [MetadataValue](repeating: .int32(1), count: 64) + [.int32(3), .int32(3)])),
            ("tokenizer.ggml.merges", .array(.string, [])),
            ("tokenizer.ggml.bos_token_id", .uint32(64)), ("tokenizer.ggml.eos_token_id", .uint32(65)),
        ]
        if let chatTemplate { extraMetadata.append(("tokenizer.chat_template", .string(chatTemplate))) }
    }
}
