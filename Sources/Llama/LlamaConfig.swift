import GGUF
import Kernels
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
            return "\(path): architecture '\(found)' is not supported (supported: \(LlamaConfig.supportedArchitectures.joined(separator: ", ")): Llama 1/2/3.x, Mistral, SmolLM, TinyLlama, Qwen2/2.5, Qwen3, Gemma 2/3, Phi-3/3.5/4-mini)"
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

/// Hyperparameters of a model, read from GGUF metadata: llama and the families built from the same block
/// (Qwen2/2.5, Qwen3, Gemma 2/3, Phi-3), which differ in the few points below.
public struct LlamaConfig: Sendable, Equatable {
    public static let supportedArchitectures = ["llama", "qwen2", "qwen3", "gemma2", "gemma3", "phi3"]

    /// `general.architecture`.
    public var architecture: String = "llama"
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

    /// How RoPE pairs the dimensions of a head: llama's converter permutes Q and K for adjacent pairs; the other
    /// families keep the checkpoint's halves.
    public var ropeLayout: RoPELayout = .adjacentPairs
    /// Q, K and V have (frozen) biases (Qwen2).
    public var attentionBias = false
    /// Q and K are RMS-normalized per head before RoPE (Qwen3, Gemma 3).
    public var qkNorm = false
    /// The attention and feed-forward outputs are RMS-normalized before the residual add (Gemma 2/3).
    public var postNorms = false
    public var feedForwardKind: BlockDescription.FeedForward = .swiGLU
    /// The embeddings are multiplied by this (Gemma: √embedding).
    public var embeddingScale: Float = 1
    /// Scores are q·k times this (1/√headDim, or Gemma's 1/√query_pre_attn_scalar).
    public var attentionScale: Float?
    /// Attention scores and final logits are soft-capped: c·tanh(x/c) (Gemma 2).
    public var attentionSoftCap: Float?
    public var finalSoftCap: Float?
    /// Sliding-window attention on the layers `isSlidingLayer` marks (Gemma 2/3): a query sees this many keys.
    public var slidingWindow: Int?
    public var slidingPattern: Int?
    /// RoPE base of the sliding-window layers (Gemma 3: 10 000 while global layers use `ropeBase`).
    public var slidingRopeBase: Float?
    /// Dimensions of each head that RoPE turns (`rope.dimension_count`): all, or Phi-4-mini's partial share.
    public var ropeDimensions: Int
    /// LongRoPE (Phi-3 128k, Phi-3.5, Phi-4-mini): the context the model was trained at; runs longer than it use
    /// `rope_factors_long`, others `rope_factors_short` (llama.cpp's rule). Cos and sin are scaled by
    /// `ropeAttentionFactor`.
    public var ropeOriginalContext: Int?
    public var ropeAttentionFactor: Float = 1
    /// One `attn_qkv` tensor holds Q, K and V (rows in that order) and `ffn_up` holds gate then up (Phi-3); LoRA
    /// adapts the fused tensors, as llama.cpp and PEFT (`qkv_proj`, `gate_up_proj`) name them.
    public var fusedQKV = false
    public var fusedGateUp = false

    public var qDim: Int { heads * headDim }
    public var kvDim: Int { kvHeads * headDim }

    /// A head whose dequantized float32 copy would exceed this is computed in chunks of `vocabularyChunk` rows
    /// read from the file instead (`LlamaModel.denseHeadLimit`).
    public static let denseHeadLimit = 512 << 20
    /// Values dequantized to float32 at a time when a weight is made bf16 (the float copy never exceeds it).
    public static let bf16RoundingChunk = 1 << 20
    /// Whether the head is computed chunk by chunk of vocabulary rows: when its dequantized copy (`valueBytes` a
    /// value) would pass `limit`, and in training when no trainable adapter adapts the head (`LlamaModel.headIsChunked`
    /// says why). The one rule for the model and its memory plan.
    public func chunksHead(valueBytes: Int, limit: Int = LlamaConfig.denseHeadLimit, trainingWithFrozenHead: Bool) -> Bool {
        vocabulary * embedding * valueBytes > limit || trainingWithFrozenHead
    }

    /// Vocabulary rows of a chunked head computed at once: each chunk's products (1024 × 4096 × 896 for Qwen2.5)
    /// ran at 101–103 GFLOP/s against 81–96 for chunks of 16 384, whose logits did not stay in cache.
    public static let vocabularyChunk = 4096
    /// Rows of logits a dense head computes at once (`LlamaModel.headChunkRows`).
    public static let headRows = 160

    /// The warning for rows of `context` tokens when they are longer than the model's training context (train,
    /// perplexity and generate say the same), or nil.
    public func contextWarning(_ context: Int) -> String? {
        guard context > contextLength else { return nil }
        return "--ctx \(context) is beyond the \(contextLength) tokens the model was trained on; positions past them are "
            + "ones it never saw (RoPE), so results there may degrade"
    }

    /// Whether layer `l` attends through a sliding window (llama.cpp's pattern: every `pattern`-th layer is global).
    public func isSlidingLayer(_ l: Int) -> Bool {
        guard slidingWindow != nil, let p = slidingPattern else { return false }
        return p == 0 || l % p < p - 1
    }

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
        ropeDimensions = headDim
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
        architecture = arch
        let prefix = arch + "."
        func positive(_ key: String) throws -> Int {
            let v = try md.int(prefix + key)
            guard v > 0, v < 1 << 24 else { throw ModelError.badValue(path: path, key: prefix + key, reason: "\(v) is out of range") }
            return v
        }
        layers = try positive("block_count")
        embedding = try positive("embedding_length")
        heads = try positive("attention.head_count")
        kvHeads = try md.intIfPresent(prefix + "attention.head_count_kv") ?? heads
        feedForward = try positive("feed_forward_length")
        contextLength = try md.intIfPresent(prefix + "context_length") ?? 2048
        guard kvHeads > 0, heads % kvHeads == 0 else {
            throw ModelError.badValue(path: path, key: prefix + "attention.head_count_kv", reason: "\(kvHeads) does not divide the \(heads) heads")
        }
        headDim = try md.intIfPresent(prefix + "attention.key_length") ?? embedding / heads
        guard headDim > 0, headDim % 2 == 0, headDim < 1 << 16 else {
            throw ModelError.badValue(path: path, key: prefix + "attention.key_length", reason: "head dimension \(headDim) must be even")
        }
        if let valueDim = try md.intIfPresent(prefix + "attention.value_length"), valueDim != headDim {
            throw ModelError.badValue(path: path, key: prefix + "attention.value_length",
                                      reason: "\(valueDim) differs from the key length \(headDim) (not supported)")
        }
        ropeDimensions = try md.intIfPresent(prefix + "rope.dimension_count") ?? headDim
        guard ropeDimensions > 0, ropeDimensions % 2 == 0, ropeDimensions <= headDim else {
            throw ModelError.badValue(path: path, key: prefix + "rope.dimension_count",
                                      reason: "\(ropeDimensions) must be even and at most the head size \(headDim)")
        }
        func finitePositive(_ key: String, default value: Float, allowZero: Bool = false) throws -> Float {
            guard let v = try md.floatIfPresent(key) else { return value }
            guard v.isFinite, v > 0 || (allowZero && v == 0) else {
                throw ModelError.badValue(path: path, key: key, reason: "\(v) must be a finite, positive number")
            }
            return v
        }
        rmsEpsilon = try finitePositive(prefix + "attention.layer_norm_rms_epsilon", default: 1e-5)
        ropeBase = try finitePositive(prefix + "rope.freq_base", default: 10000)
        var scale: Float = 1
        // 0 means "no scaling" in files written by some converters.
        let linear = try finitePositive(prefix + "rope.scale_linear", default: 0, allowZero: true)
        if linear != 0 { scale = linear }
        if let kind = try md.stringIfPresent(prefix + "rope.scaling.type"), kind != "none" {
            guard kind == "linear" else {
                throw ModelError.badValue(path: path, key: prefix + "rope.scaling.type",
                                          reason: "'\(kind)' RoPE scaling is not supported (linear is)")
            }
            let f = try finitePositive(prefix + "rope.scaling.factor", default: 0, allowZero: true)
            if f != 0 { scale = f }
        }
        ropeScale = scale
        if let original = try md.intIfPresent(prefix + "rope.scaling.original_context_length") {
            guard original > 0, original < 1 << 30 else {
                throw ModelError.badValue(path: path, key: prefix + "rope.scaling.original_context_length", reason: "\(original) is out of range")
            }
            ropeOriginalContext = original
        }
        ropeAttentionFactor = try finitePositive(prefix + "rope.scaling.attn_factor", default: 1)
        guard let embd = file.tensor(named: "token_embd.weight") else { throw GGUFError.missingTensor(path: path, tensor: "token_embd.weight") }
        guard embd.dimensions.count == 2, embd.dimensions[0] == embedding else {
            throw ModelError.badShape(path: path, tensor: embd.name, found: embd.dimensions, expected: [embedding, -1])
        }
        vocabulary = embd.dimensions[1]
        tiedEmbeddings = file.tensor(named: "output.weight") == nil

        // What each family changes (llama.cpp's src/models/<arch>.cpp, checked against transformers).
        switch arch {
        case "qwen2":
            ropeLayout = .halves
            attentionBias = true
        case "qwen3":
            ropeLayout = .halves
            qkNorm = true
        case "gemma2", "gemma3":
            ropeLayout = .halves
            postNorms = true
            qkNorm = arch == "gemma3"
            feedForwardKind = .geGLU
            embeddingScale = Float(embedding).squareRoot()
            // 27B models scale by the embedding per head; the others by the head size (gemma_pytorch's config).
            let is27B = layers == (arch == "gemma2" ? 46 : 62)
            attentionScale = 1 / Float(is27B ? embedding / heads : headDim).squareRoot()
            if let w = try md.intIfPresent(prefix + "attention.sliding_window") {
                guard w > 0 else { throw ModelError.badValue(path: path, key: prefix + "attention.sliding_window", reason: "\(w) must be positive") }
                slidingWindow = w
            } else if arch == "gemma2" {
                slidingWindow = 4096
            }
            if md[prefix + "attention.sliding_window_pattern"] != nil {
                let p = try md.int(prefix + "attention.sliding_window_pattern")
                guard p >= 0, p < 1 << 16 else {
                    throw ModelError.badValue(path: path, key: prefix + "attention.sliding_window_pattern", reason: "\(p) is out of range")
                }
                slidingPattern = p
            } else {
                slidingPattern = arch == "gemma2" ? 2 : 6
            }
            slidingRopeBase = try finitePositive(prefix + "rope.freq_base_swa", default: arch == "gemma2" ? ropeBase : 10000)
            if arch == "gemma2" {
                let attnCap = try finitePositive(prefix + "attn_logit_softcapping", default: 50, allowZero: true)
                attentionSoftCap = attnCap == 0 ? nil : attnCap
            }
            let finalCap = try finitePositive(prefix + "final_logit_softcapping", default: arch == "gemma2" ? 30 : 0, allowZero: true)
            finalSoftCap = finalCap == 0 ? nil : finalCap
        case "phi3":
            // llama.cpp runs Phi-3 without its sliding window (llama.cpp PR 13676), and so do we.
            ropeLayout = .halves
            fusedQKV = file.tensor(named: "blk.0.attn_qkv.weight") != nil
            fusedGateUp = true
        default:
            break
        }
        if arch == "llama" || arch == "qwen3" || arch == "gemma2" || arch == "gemma3" || (arch == "phi3" && !fusedQKV) {
            attentionBias = file.tensor(named: "blk.0.attn_q.bias") != nil
        }

        // Each block has at least 9 tensors (7 when fused): a count beyond what the file holds is a lie (and would take long to check).
        guard layers * (fusedQKV ? 6 : 9) <= file.tensors.count else {
            throw ModelError.badValue(path: path, key: prefix + "block_count",
                                      reason: "\(layers) blocks, but the file holds only \(file.tensors.count) tensors")
        }
        try checkShapes(file)
        // More blocks in the file than block_count says means the count is wrong, not that they are spare.
        if file.tensor(named: "blk.\(layers).attn_norm.weight") != nil {
            throw ModelError.badValue(path: path, key: prefix + "block_count", reason: "\(layers), but the file has tensors of block \(layers)")
        }
    }

    /// The ggml shape (fastest first) every tensor must have.
    public var expectedShapes: [(String, [Int])] {
        var shapes: [(String, [Int])] = [("token_embd.weight", [embedding, vocabulary]), ("output_norm.weight", [embedding])]
        if !tiedEmbeddings { shapes.append(("output.weight", [embedding, vocabulary])) }
        for i in 0..<layers {
            let p = "blk.\(i)."
            shapes.append((p + "attn_norm.weight", [embedding]))
            for target in blockTargets {
                let (inF, outF) = features(of: target)!
                shapes.append((target.baseName(layer: i) + ".weight", [inF, outF]))
            }
            shapes.append((p + "ffn_norm.weight", [embedding]))
            if attentionBias {
                shapes += [(p + "attn_q.bias", [qDim]), (p + "attn_k.bias", [kvDim]), (p + "attn_v.bias", [kvDim])]
            }
            if qkNorm { shapes += [(p + "attn_q_norm.weight", [headDim]), (p + "attn_k_norm.weight", [headDim])] }
            if postNorms { shapes += [(p + "post_attention_norm.weight", [embedding]), (p + "post_ffw_norm.weight", [embedding])] }
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

    /// The linear weights of each block, in the order the forward pass uses them.
    public var blockTargets: [LoRATarget] {
        attentionInputTargets + [.attnOutput] + (fusedGateUp ? [.ffnUp] : [.ffnGate, .ffnUp]) + [.ffnDown]
    }

    /// The block's linear weights that read its input (Q, K, V, or the fused QKV).
    public var attentionInputTargets: [LoRATarget] { fusedQKV ? [.attnQKV] : [.attnQ, .attnK, .attnV] }

    /// (in, out) features of a LoRA target's base weight; nil when the model has no such weight (Phi-3 has no
    /// separate Q, K, V or gate).
    public func features(of target: LoRATarget) -> (in: Int, out: Int)? {
        switch target {
        case .attnQ: return fusedQKV ? nil : (embedding, qDim)
        case .attnK, .attnV: return fusedQKV ? nil : (embedding, kvDim)
        case .attnQKV: return fusedQKV ? (embedding, qDim + 2 * kvDim) : nil
        case .attnOutput: return (qDim, embedding)
        case .ffnGate: return fusedGateUp ? nil : (embedding, feedForward)
        case .ffnUp: return (embedding, fusedGateUp ? 2 * feedForward : feedForward)
        case .ffnDown: return (feedForward, embedding)
        case .output: return (embedding, vocabulary)
        case .tokenEmbedding: return (vocabulary, embedding)
        }
    }

    /// The targets of this model that a request names: on fused models any of Q, K, V means `attn_qkv` and gate
    /// or up means the fused `ffn_up` (the weights LoRA can adapt there); on the others `attn_qkv` means Q, K, V.
    public func resolve(_ requested: [LoRATarget]) -> [LoRATarget] {
        var out: [LoRATarget] = []
        func add(_ t: LoRATarget) { if !out.contains(t) { out.append(t) } }
        for t in requested {
            if fusedQKV, [.attnQ, .attnK, .attnV].contains(t) { add(.attnQKV) }
            else if !fusedQKV, t == .attnQKV { [.attnQ, .attnK, .attnV].forEach(add) }
            else if fusedGateUp, t == .ffnGate { add(.ffnUp) }
            else { add(t) }
        }
        return out
    }
}
