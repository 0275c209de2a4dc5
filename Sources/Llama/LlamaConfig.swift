import GGUF
import LoRA

/// Errors about models; each description is one line naming the file, tensor or key.
public enum ModelError: Error, CustomStringConvertible, Equatable {
    case unsupportedArchitecture(path: String, found: String)
    case badShape(path: String, tensor: String, found: [Int], expected: [Int])
    case badValue(path: String, key: String, reason: String)
    case unsupportedType(path: String, tensor: String, type: String)
    case invalidInput(String)
    /// `isCancelled` answered true.
    case cancelled

    public var description: String {
        switch self {
        case let .unsupportedArchitecture(path, found):
            return "\(path): architecture '\(found)' is not supported (supported: \(LlamaConfig.supportedArchitectures.joined(separator: ", ")): LLaMA 1/2/3, TinyLlama, Mistral, SmolLM, OpenLLaMA …)"
        case let .badShape(path, tensor, found, expected):
            return "\(path): tensor '\(tensor)' has shape \(found), expected \(expected)"
        case let .badValue(path, key, reason):
            return "\(path): \(key): \(reason)"
        case let .unsupportedType(path, tensor, type):
            return "\(path): tensor '\(tensor)' has type \(type), which cannot be used as a weight"
        case let .invalidInput(reason):
            return reason
        case .cancelled:
            return "cancelled"
        }
    }
}

/// Hyperparameters of a llama-architecture model, read from GGUF metadata.
public struct LlamaConfig: Sendable, Equatable {
    public static let supportedArchitectures = ["llama"]

    public var layers: Int
    public var embedding: Int
    public var heads: Int
    public var kvHeads: Int
    public var headDim: Int
    public var feedForward: Int
    public var vocabulary: Int
    public var contextLength: Int
    public var rmsEpsilon: Float
    public var ropeBase: Float
    /// Linear RoPE scaling factor (positions are multiplied by 1/factor).
    public var ropeScale: Float
    /// The head is `token_embd` (no `output.weight`).
    public var tiedEmbeddings: Bool

    public var qDim: Int { heads * headDim }
    public var kvDim: Int { kvHeads * headDim }

    public init(layers: Int, embedding: Int, heads: Int, kvHeads: Int, headDim: Int, feedForward: Int, vocabulary: Int,
                contextLength: Int, rmsEpsilon: Float, ropeBase: Float, ropeScale: Float, tiedEmbeddings: Bool) {
        self.layers = layers
        self.embedding = embedding
        self.heads = heads
        self.kvHeads = kvHeads
        self.headDim = headDim
        self.feedForward = feedForward
        self.vocabulary = vocabulary
        self.contextLength = contextLength
        self.rmsEpsilon = rmsEpsilon
        self.ropeBase = ropeBase
        self.ropeScale = ropeScale
        self.tiedEmbeddings = tiedEmbeddings
    }

    /// Reads and checks the configuration of `file`, including every tensor's shape.
    public init(file: GGUFFile) throws {
        let md = file.metadata, path = file.path
        let type = try md.stringIfPresent("general.type")
        if type == "adapter" || md["training.type"] != nil {
            throw ModelError.invalidInput("\(path): this is a LoRA \(type == "adapter" ? "adapter" : "training checkpoint"), not a model; "
                                          + "give the base model with -m and the adapter with --lora")
        }
        if file.tensors.isEmpty {
            throw ModelError.invalidInput("\(path): this file has no tensors (a vocabulary-only file?), not a model")
        }
        let arch = try md.stringIfPresent("general.architecture") ?? "(none)"
        guard LlamaConfig.supportedArchitectures.contains(arch) else {
            throw ModelError.unsupportedArchitecture(path: path, found: arch)
        }
        func positive(_ key: String) throws -> Int {
            let v = try md.int("llama." + key)
            guard v > 0, v < 1 << 24 else { throw ModelError.badValue(path: path, key: "llama." + key, reason: "\(v) is out of range") }
            return v
        }
        layers = try positive("block_count")
        embedding = try positive("embedding_length")
        heads = try positive("attention.head_count")
        kvHeads = try md.intIfPresent("llama.attention.head_count_kv") ?? heads
        feedForward = try positive("feed_forward_length")
        contextLength = try md.intIfPresent("llama.context_length") ?? 2048
        guard kvHeads > 0, heads % kvHeads == 0 else {
            throw ModelError.badValue(path: path, key: "llama.attention.head_count_kv", reason: "\(kvHeads) does not divide the \(heads) heads")
        }
        headDim = try md.intIfPresent("llama.attention.key_length") ?? embedding / heads
        guard headDim > 0, headDim % 2 == 0 else {
            throw ModelError.badValue(path: path, key: "llama.attention.key_length", reason: "head dimension \(headDim) must be even")
        }
        if let ropeDimensions = try md.intIfPresent("llama.rope.dimension_count"), ropeDimensions != headDim {
            throw ModelError.badValue(path: path, key: "llama.rope.dimension_count",
                                      reason: "\(ropeDimensions) differs from the head size \(headDim) (partial RoPE is not supported)")
        }
        func finitePositive(_ key: String, default value: Float, allowZero: Bool = false) throws -> Float {
            guard let v = try md.floatIfPresent(key) else { return value }
            guard v.isFinite, v > 0 || (allowZero && v == 0) else {
                throw ModelError.badValue(path: path, key: key, reason: "\(v) must be a finite, positive number")
            }
            return v
        }
        rmsEpsilon = try finitePositive("llama.attention.layer_norm_rms_epsilon", default: 1e-5)
        ropeBase = try finitePositive("llama.rope.freq_base", default: 10000)
        var scale: Float = 1
        // 0 means "no scaling" in files written by some converters.
        let linear = try finitePositive("llama.rope.scale_linear", default: 0, allowZero: true)
        if linear != 0 { scale = linear }
        if try md.stringIfPresent("llama.rope.scaling.type") == "linear" {
            let f = try finitePositive("llama.rope.scaling.factor", default: 0, allowZero: true)
            if f != 0 { scale = f }
        }
        ropeScale = scale
        guard let embd = file.tensor(named: "token_embd.weight") else { throw GGUFError.missingTensor(path: path, tensor: "token_embd.weight") }
        guard embd.dimensions.count == 2, embd.dimensions[0] == embedding else {
            throw ModelError.badShape(path: path, tensor: embd.name, found: embd.dimensions, expected: [embedding, -1])
        }
        vocabulary = embd.dimensions[1]
        tiedEmbeddings = file.tensor(named: "output.weight") == nil
        // Each block has 9 tensors: a count beyond what the file holds is a lie (and would take long to check).
        guard layers * 9 <= file.tensors.count else {
            throw ModelError.badValue(path: path, key: "llama.block_count",
                                      reason: "\(layers) blocks, but the file holds only \(file.tensors.count) tensors")
        }
        try checkShapes(file)
        // More blocks in the file than block_count says means the count is wrong, not that they are spare.
        if file.tensor(named: "blk.\(layers).attn_norm.weight") != nil {
            throw ModelError.badValue(path: path, key: "llama.block_count", reason: "\(layers), but the file has tensors of block \(layers)")
        }
    }

    /// The ggml shape (fastest first) every tensor must have.
    public var expectedShapes: [(String, [Int])] {
        var shapes: [(String, [Int])] = [("token_embd.weight", [embedding, vocabulary]), ("output_norm.weight", [embedding])]
        if !tiedEmbeddings { shapes.append(("output.weight", [embedding, vocabulary])) }
        for i in 0..<layers {
            let p = "blk.\(i)."
            shapes += [(p + "attn_norm.weight", [embedding]), (p + "attn_q.weight", [embedding, qDim]),
                       (p + "attn_k.weight", [embedding, kvDim]), (p + "attn_v.weight", [embedding, kvDim]),
                       (p + "attn_output.weight", [qDim, embedding]), (p + "ffn_norm.weight", [embedding]),
                       (p + "ffn_gate.weight", [embedding, feedForward]), (p + "ffn_up.weight", [embedding, feedForward]),
                       (p + "ffn_down.weight", [feedForward, embedding])]
        }
        return shapes
    }

    func checkShapes(_ file: GGUFFile) throws {
        for (name, shape) in expectedShapes {
            let t = try file.requireTensor(name)
            var dims = t.dimensions
            while dims.count > shape.count && dims.last == 1 { dims.removeLast() }
            guard dims == shape else { throw ModelError.badShape(path: file.path, tensor: name, found: t.dimensions, expected: shape) }
            guard t.type.isDequantizable else {
                throw ModelError.unsupportedType(path: file.path, tensor: name, type: t.type.name)
            }
        }
    }

    /// (in, out) features of a LoRA target's base weight.
    public func features(of target: LoRATarget) -> (in: Int, out: Int) {
        switch target {
        case .attnQ: return (embedding, qDim)
        case .attnK, .attnV: return (embedding, kvDim)
        case .attnOutput: return (qDim, embedding)
        case .ffnGate, .ffnUp: return (embedding, feedForward)
        case .ffnDown: return (feedForward, embedding)
        case .output: return (embedding, vocabulary)
        case .tokenEmbedding: return (vocabulary, embedding)
        }
    }
}
