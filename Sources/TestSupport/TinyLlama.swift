#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif
import GGUF
import LoRA

/// Writes small random llama-architecture GGUF models for tests, so unit tests need no download.
public struct TinyLlama {
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
    /// Extra metadata (e.g. a tokenizer) added after the hyperparameters.
    public var extraMetadata: [(String, MetadataValue)] = []

    public init() {}

    /// The names and ggml shapes of every tensor, in file order.
    public var tensorShapes: [(String, [Int])] {
        let kv = embeddingLength / headCount * kvHeadCount
        var shapes: [(String, [Int])] = [("token_embd.weight", [embeddingLength, vocabularySize])]
        for i in 0..<blockCount {
            let p = "blk.\(i)."
            shapes += [
                (p + "attn_norm.weight", [embeddingLength]),
                (p + "attn_q.weight", [embeddingLength, embeddingLength]),
                (p + "attn_k.weight", [embeddingLength, kv]),
                (p + "attn_v.weight", [embeddingLength, kv]),
                (p + "attn_output.weight", [embeddingLength, embeddingLength]),
                (p + "ffn_norm.weight", [embeddingLength]),
                (p + "ffn_gate.weight", [embeddingLength, feedForwardLength]),
                (p + "ffn_up.weight", [embeddingLength, feedForwardLength]),
                (p + "ffn_down.weight", [feedForwardLength, embeddingLength]),
            ]
        }
        shapes.append(("output_norm.weight", [embeddingLength]))
        if !tied { shapes.append(("output.weight", [embeddingLength, vocabularySize])) }
        return shapes
    }

    public var metadata: Metadata {
        var md = Metadata()
        md.set("general.architecture", .string("llama"))
        md.set("general.name", .string("tiny-llama-test"))
        md.set("llama.block_count", .uint32(UInt32(blockCount)))
        md.set("llama.context_length", .uint32(UInt32(contextLength)))
        md.set("llama.embedding_length", .uint32(UInt32(embeddingLength)))
        md.set("llama.feed_forward_length", .uint32(UInt32(feedForwardLength)))
        md.set("llama.attention.head_count", .uint32(UInt32(headCount)))
        md.set("llama.attention.head_count_kv", .uint32(UInt32(kvHeadCount)))
        md.set("llama.rope.freq_base", .float32(ropeFreqBase))
        md.set("llama.attention.layer_norm_rms_epsilon", .float32(rmsEpsilon))
        md.set("llama.rope.dimension_count", .uint32(UInt32(embeddingLength / headCount)))
        md.set("llama.vocab_size", .uint32(UInt32(vocabularySize)))
        for (k, v) in extraMetadata { md.set(k, v) }
        return md
    }

    /// Builds the writer with random weights (norms near 1, matrices scaled by 1/√in).
    public func writer() throws -> GGUFWriter {
        var rng = SplitMix64(seed: seed)
        var writer = GGUFWriter(metadata: metadata)
        for (name, shape) in tensorShapes {
            let count = shape.reduce(1, *)
            if shape.count == 1 {
                let values = (0..<count).map { _ in 1 + 0.1 * rng.nextSigned() }
                try writer.addTensor(name: name, dimensions: shape, values: values)
            } else {
                let scale = 1 / Float(shape[0]).squareRoot()
                let values = (0..<count).map { _ in scale * rng.nextSigned() * 1.7 }
                try writer.addTensor(name: name, dimensions: shape, values: values, type: weightType)
            }
        }
        return writer
    }

    /// Writes the model to `path`.
    public func write(to path: String) throws { try writer().write(to: path) }
}

/// The project's SplitMix64 generator, with a signed draw for test data.
public typealias SplitMix64 = SplitMix

extension SplitMix {
    /// Uniform in [-1, 1).
    public mutating func nextSigned() -> Float { Float(next() >> 40) / Float(1 << 23) - 1 }
}

/// A fresh temporary directory for a test.
public func temporaryDirectory(_ name: String = "lorakit-test") -> String {
    let path = "/tmp/\(name)-\(UInt64.random(in: 0...UInt64.max))"
    _ = path.withCString { mkdir($0, 0o755) }
    return path
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
