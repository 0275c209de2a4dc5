import Dispatch
import GGUF
import Kernels
import LoRA

/// Incremental inference with a KV cache: a prompt goes through the batched GEMM path, each generated token
/// through matrix-vector products on the quantized weights. Adapters apply at run time.
public final class InferenceSession: @unchecked Sendable {
    public let model: LlamaModel<Float>
    public let capacity: Int
    public private(set) var position = 0
    public var threads: Int
    var keys: [[Float]]
    var values: [[Float]]

    public init(model: LlamaModel<Float>, capacity: Int, threads: Int = 1) {
        self.model = model
        self.capacity = capacity
        self.threads = threads
        let kv = model.config.kvDim * capacity
        keys = (0..<model.config.layers).map { _ in [Float](repeating: 0, count: kv) }
        values = keys
    }

    /// Forgets everything after `position` (e.g. to reuse a shared prefix).
    public func rewind(to position: Int) { self.position = max(0, min(position, self.position)) }

    /// Feeds `tokens` and returns the logits [V] after the last one.
    public func feed(_ tokens: [Int32]) throws -> [Float] {
        guard !tokens.isEmpty else { throw ModelError.invalidInput("nothing to feed") }
        guard position + tokens.count <= capacity else {
            throw ModelError.invalidInput("the context is full (\(capacity) tokens); use a larger --ctx")
        }
        let c = model.config, n = tokens.count, C = c.embedding
        var x = try model.weights.embeddings(tokens)
        model.addEmbeddingLoRA(tokens: tokens, x: &x)
        let rope = RoPE<Float>(positions: (0..<n).map { Int32(position + $0) }, frequencies: model.frequencies)
        for l in 0..<c.layers {
            x = try layer(l, x: x, n: n, rope: rope)
        }
        // Only the last position's logits are needed.
        var last = Array(x[((n - 1) * C)..<(n * C)])
        var h = [Float](repeating: 0, count: C)
        RMSNorm.forward(x: last, weight: model.weights.outputNorm, y: &h, rstd: nil, rows: 1, cols: C, eps: c.rmsEpsilon)
        last = h
        let headName = c.tiedEmbeddings ? "token_embd" : "output"
        let logits = try linear(headName, last, n: 1, inF: C, outF: c.vocabulary, weight: nil)
        position += n
        return logits
    }

    /// y = x·Wᵀ (+ LoRA) for n rows: GEMM on the dequantized weight for n > 1, quantized mat-vec for n = 1.
    func linear(_ base: String, _ x: [Float], n: Int, inF: Int, outF: Int, weight: [Float]?) throws -> [Float] {
        var y = [Float](repeating: 0, count: n * outF)
        let info = try model.weights.file.requireTensor(base + ".weight")
        if n == 1 {
            x.withUnsafeBufferPointer { xp in
                y.withUnsafeMutableBufferPointer { yp in
                    MatVec.multiply(type: info.type, data: model.weights.file.data(of: info), rows: outF, cols: inF,
                                    x: xp.baseAddress!, y: yp.baseAddress!, threads: threads)
                }
            }
        } else {
            let w = try weight ?? model.weights.tensor(base + ".weight")
            Float.gemm(transA: false, transB: true, m: n, n: outF, k: inF, alpha: 1, a: x, lda: inF, b: w, ldb: inF,
                       beta: 0, c: &y, ldc: outF)
        }
        for (pair, scale, _) in model.adaptersFor(base == "token_embd" ? "output" : base).pairs {
            let r = pair.rank
            var u = [Float](repeating: 0, count: n * r)
            Float.gemm(transA: false, transB: true, m: n, n: r, k: inF, alpha: 1, a: x, lda: inF, b: pair.a, ldb: inF,
                       beta: 0, c: &u, ldc: r)
            Float.gemm(transA: false, transB: true, m: n, n: outF, k: r, alpha: scale, a: u, lda: r, b: pair.b, ldb: r,
                       beta: 1, c: &y, ldc: outF)
        }
        return y
    }

    func layer(_ l: Int, x: [Float], n: Int, rope: RoPE<Float>) throws -> [Float] {
        let c = model.config, C = c.embedding, F = c.feedForward, p = "blk.\(l)."
        let w = n > 1 ? try model.weights.layer(l) : nil
        let attnNorm = try model.weights.tensor(p + "attn_norm.weight"), ffnNorm = try model.weights.tensor(p + "ffn_norm.weight")
        var h = [Float](repeating: 0, count: n * C)
        RMSNorm.forward(x: x, weight: attnNorm, y: &h, rstd: nil, rows: n, cols: C, eps: c.rmsEpsilon)
        var q = try linear(p + "attn_q", h, n: n, inF: C, outF: c.qDim, weight: w?.q)
        var k = try linear(p + "attn_k", h, n: n, inF: C, outF: c.kvDim, weight: w?.k)
        let v = try linear(p + "attn_v", h, n: n, inF: C, outF: c.kvDim, weight: w?.v)
        q.withUnsafeMutableBufferPointer { rope.apply($0.baseAddress!, tokens: n, heads: c.heads) }
        k.withUnsafeMutableBufferPointer { rope.apply($0.baseAddress!, tokens: n, heads: c.kvHeads) }
        for t in 0..<n {
            for j in 0..<c.kvDim {
                keys[l][(position + t) * c.kvDim + j] = k[t * c.kvDim + j]
                values[l][(position + t) * c.kvDim + j] = v[t * c.kvDim + j]
            }
        }
        let attn = attend(layer: l, q: q, n: n)
        let o = try linear(p + "attn_output", attn, n: n, inF: c.qDim, outF: C, weight: w?.o)
        let xMid = zip(x, o).map { $0 + $1 }
        RMSNorm.forward(x: xMid, weight: ffnNorm, y: &h, rstd: nil, rows: n, cols: C, eps: c.rmsEpsilon)
        let gate = try linear(p + "ffn_gate", h, n: n, inF: C, outF: F, weight: w?.gate)
        let up = try linear(p + "ffn_up", h, n: n, inF: C, outF: F, weight: w?.up)
        var act = [Float](repeating: 0, count: n * F)
        SwiGLU.forward(gate: gate, up: up, out: &act, count: n * F)
        let down = try linear(p + "ffn_down", act, n: n, inF: F, outF: C, weight: w?.down)
        return zip(xMid, down).map { $0 + $1 }
    }

    /// Causal attention of the n new queries over the cache (positions 0 ..< position + n). The query heads that
    /// share a key/value head go through two small products together: scores = Q·Kᵀ, out = P·V.
    ///
    /// Shapes: q, out [n, H·d]; keys, values [capacity, KV·d]; per group of G = H / KV heads: scores P [G, visible].
    func attend(layer l: Int, q: [Float], n: Int) -> [Float] {
        let c = model.config, d = c.headDim, group = c.heads / c.kvHeads
        let scale = 1 / Float(d).squareRoot()
        var out = [Float](repeating: 0, count: n * c.qDim)
        var scores = [Float](repeating: 0, count: group * (position + n))
        keys[l].withUnsafeBufferPointer { K in
          values[l].withUnsafeBufferPointer { V in
            q.withUnsafeBufferPointer { Q in
              out.withUnsafeMutableBufferPointer { O in
                scores.withUnsafeMutableBufferPointer { S in
                    let scores = S.baseAddress!
                    for t in 0..<n {
                        let visible = position + t + 1
                        for kvh in 0..<c.kvHeads {
                            let qg = Q.baseAddress! + t * c.qDim + kvh * group * d, og = O.baseAddress! + t * c.qDim + kvh * group * d
                            Float.gemm(transA: false, transB: true, m: group, n: visible, k: d, alpha: scale, a: qg, lda: d,
                                       b: K.baseAddress! + kvh * d, ldb: c.kvDim, beta: 0, c: scores, ldc: visible)
                            for h in 0..<group {
                                let row = scores + h * visible
                                let m = VectorMath.maximum(row, count: visible)
                                let sum = VectorMath.exponentiate(row, count: visible, minus: m)
                                VectorMath.scale(row, count: visible, by: Float(1 / sum))
                            }
                            Float.gemm(transA: false, transB: false, m: group, n: d, k: visible, alpha: 1, a: scores,
                                       lda: visible, b: V.baseAddress! + kvh * d, ldb: c.kvDim, beta: 0, c: og, ldc: d)
                        }
                    }
                }
              }
            }
          }
        }
        return out
    }
}
