/// The weights LoRA can adapt, by their GGUF base names.
public enum LoRATarget: String, CaseIterable, Sendable, Codable {
    case attnQ = "attn_q", attnK = "attn_k", attnV = "attn_v", attnOutput = "attn_output"
    /// Q, K and V in one tensor (Phi-3).
    case attnQKV = "attn_qkv"
    case ffnGate = "ffn_gate", ffnUp = "ffn_up", ffnDown = "ffn_down"
    case output = "output", tokenEmbedding = "token_embd"

    /// The seven linear weights of every layer: the default targets (on fused models, the weights holding them).
    public static let defaultTargets: [LoRATarget] = [.attnQ, .attnK, .attnV, .attnOutput, .ffnGate, .ffnUp, .ffnDown]

    public var isPerLayer: Bool { self != .output && self != .tokenEmbedding }

    /// Short names accepted by `--targets` (q,k,v,o,gate,up,down,output,embed) besides the GGUF names.
    public init?(shortName: String) {
        switch shortName.lowercased() {
        case "q", "wq", "q_proj", "attn_q": self = .attnQ
        case "k", "wk", "k_proj", "attn_k": self = .attnK
        case "v", "wv", "v_proj", "attn_v": self = .attnV
        case "o", "wo", "o_proj", "attn_output": self = .attnOutput
        case "qkv", "qkv_proj", "attn_qkv": self = .attnQKV
        case "gate", "w1", "gate_proj", "ffn_gate": self = .ffnGate
        case "up", "w3", "up_proj", "ffn_up", "gate_up_proj": self = .ffnUp
        case "down", "w2", "down_proj", "ffn_down": self = .ffnDown
        case "output", "lm_head", "head": self = .output
        case "embed", "embedding", "tok_embd", "token_embd", "embed_tokens": self = .tokenEmbedding
        default: return nil
        }
    }

    /// The base tensor name (without `.weight`) in layer `layer`.
    public func baseName(layer: Int?) -> String {
        if let layer, isPerLayer { return "blk.\(layer).\(rawValue)" }
        return rawValue
    }
}

/// How LoRA scales its update: alpha / r, or alpha / √r with rank-stabilized LoRA. Alpha 0 means scale 1, as
/// llama.cpp reads an adapter without alpha. The one place this rule lives (train, files, PEFT, merge).
public func loraScale(alpha: Float, rank: Int, rsLoRA: Bool = false) -> Float {
    if alpha == 0 { return 1 }
    return rsLoRA ? alpha / Float(rank).squareRoot() : alpha / Float(rank)
}
