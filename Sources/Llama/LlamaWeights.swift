import GGUF
import Kernels

/// The base weights of a model, kept as the file has them (memory-mapped, quantized) and dequantized layer by
/// layer when needed; `cacheAll` keeps every dequantized weight instead (faster, more memory).
final class LlamaWeights<T: KernelScalar>: @unchecked Sendable {
    let file: GGUFFile
    let config: LlamaConfig
    let cacheAll: Bool
    private var cache: [String: [T]] = [:]
    /// The output head [vocabulary, embedding], dequantized once: every batch uses all of it.
    let head: [T]
    let outputNorm: [T]

    init(file: GGUFFile, config: LlamaConfig, cacheAll: Bool) throws {
        self.file = file
        self.config = config
        self.cacheAll = cacheAll
        head = try LlamaWeights.load(file, config.tiedEmbeddings ? "token_embd.weight" : "output.weight")
        outputNorm = try LlamaWeights.load(file, "output_norm.weight")
    }

    static func load(_ file: GGUFFile, _ name: String) throws -> [T] {
        let floats = try file.floats(of: try file.requireTensor(name))
        if T.self == Float.self { return unsafeBitCast(floats, to: [T].self) }  // no per-element cast
        return floats.map { T($0) }
    }

    /// A whole weight by tensor name, dequantized (from the cache when `cacheAll`).
    func tensor(_ name: String) throws -> [T] {
        if let cached = cache[name] { return cached }
        let values = try LlamaWeights.load(file, name)
        if cacheAll { cache[name] = values }
        return values
    }

    func layer(_ i: Int) throws -> LayerWeights<T> {
        let p = "blk.\(i)."
        return LayerWeights(
            attnNorm: try tensor(p + "attn_norm.weight"), q: try tensor(p + "attn_q.weight"),
            k: try tensor(p + "attn_k.weight"), v: try tensor(p + "attn_v.weight"),
            o: try tensor(p + "attn_output.weight"), ffnNorm: try tensor(p + "ffn_norm.weight"),
            gate: try tensor(p + "ffn_gate.weight"), up: try tensor(p + "ffn_up.weight"),
            down: try tensor(p + "ffn_down.weight"))
    }

    /// Embedding rows of `tokens` [N, embedding]; ids out of range are an error naming the id.
    func embeddings(_ tokens: [Int32]) throws -> [T] {
        let info = try file.requireTensor("token_embd.weight")
        let data = file.data(of: info)
        let c = config.embedding
        var rows = [Float](repeating: 0, count: c)
        var out = [T](repeating: 0, count: tokens.count * c)
        for (n, token) in tokens.enumerated() {
            guard token >= 0, Int(token) < config.vocabulary else {
                throw ModelError.invalidInput("token id \(token) is outside the vocabulary (0..<\(config.vocabulary))")
            }
            rows.withUnsafeMutableBufferPointer {
                Dequantize.rows(info.type, from: data, rowLength: c, rows: Int(token)..<(Int(token) + 1), into: $0.baseAddress!)
            }
            for j in 0..<c { out[n * c + j] = T(rows[j]) }
        }
        return out
    }
}

/// The dequantized weights of one layer. Linear weights are [out, in] row-major (GGUF's ne = [in, out]).
struct LayerWeights<T: KernelScalar> {
    var attnNorm, q, k, v, o, ffnNorm, gate, up, down: [T]
}
