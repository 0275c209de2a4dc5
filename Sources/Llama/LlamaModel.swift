#if canImport(Glibc)
import Glibc
#endif
import GGUF
import Kernels
import LoRA

/// What one layer's forward keeps for its backward. The normalized inputs (h1, h2), the SwiGLU output (act), the
/// attention probabilities and output (attn) and the residual after attention (xMid, one product away) are cheap
/// to recompute, so backward rebuilds them instead of keeping them (that more than halves the activation memory).
///
/// Shapes (N tokens, C embedding, F feed-forward): xIn, h1, xMid, h2 [N, C]; q, attn [N, H·d]; k, v [N, KV·d];
/// probs [batch, H, T, T]; gate, up, act [N, F]; rstd1, rstd2 [N]; lora: the x·Aᵀ products by weight name.
final class LayerCache<T: KernelScalar> {
    var xIn: [T] = [], h1: [T] = [], rstd1: [T] = []
    var q: [T] = [], k: [T] = [], v: [T] = [], probs: [T] = [], attn: [T] = []
    var xMid: [T] = [], h2: [T] = [], rstd2: [T] = []
    var gate: [T] = [], up: [T] = [], act: [T] = []
    var lora: [String: [[T]]] = [:]

    var byteCount: Int {
        let arrays = [xIn, h1, rstd1, q, k, v, probs, attn, xMid, h2, rstd2, gate, up, act]
        return (arrays.reduce(0) { $0 + $1.count } + lora.values.reduce(0) { $0 + $1.reduce(0) { $0 + $1.count } })
            * MemoryLayout<T>.size
    }
}

/// A llama-architecture model: forward and backward with LoRA on frozen (possibly quantized) weights.
///
/// `T` is Float for real work; Double serves the gradient checks.
public final class LlamaModel<T: KernelScalar>: @unchecked Sendable {
    public private(set) var config: LlamaConfig
    let weights: LlamaWeights<T>
    private(set) var frequencies: [Double]
    private var ropeFactors: [Float]?
    /// Adapters applied at run time (the trainable one included).
    public var adapters: [AppliedAdapter<T>] = []
    /// Keep only each layer's input in forward and recompute the layer in backward.
    public var gradientCheckpointing = false
    /// Rows of logits computed at once in the head (bounds the [rows, vocabulary] buffer).
    public var headChunkRows = 160

    public init(file: GGUFFile, cacheWeights: Bool = false) throws {
        LlamaModel.keepFreedMemory()
        let config = try LlamaConfig(file: file)
        self.config = config
        weights = try LlamaWeights(file: file, config: config, cacheAll: cacheWeights)
        var factors: [Float]?
        if let t = file.tensor(named: "rope_freqs.weight") {
            let f = try file.floats(of: t)
            guard f.count == config.headDim / 2 else {
                throw ModelError.badShape(path: file.path, tensor: t.name, found: t.dimensions, expected: [config.headDim / 2])
            }
            factors = f
        }
        ropeFactors = factors
        frequencies = RoPE<T>.frequencies(headDim: config.headDim, base: Double(config.ropeBase),
                                           scale: 1 / Double(config.ropeScale), factors: factors)
    }

    /// Replaces hyperparameters read from the file (the finetune's --norm-rms-eps, --rope-freq-base and
    /// --rope-freq-scale; `ropeScale` is the linear scaling factor, 1/freq-scale).
    public func override(rmsEpsilon: Float? = nil, ropeBase: Float? = nil, ropeScale: Float? = nil) {
        if let e = rmsEpsilon { config.rmsEpsilon = e }
        if let b = ropeBase { config.ropeBase = b }
        if let s = ropeScale { config.ropeScale = s }
        frequencies = RoPE<T>.frequencies(headDim: config.headDim, base: Double(config.ropeBase),
                                           scale: 1 / Double(config.ropeScale), factors: ropeFactors)
    }

    func adaptersFor(_ name: String) -> WeightAdapters<T> { WeightAdapters(name, adapters) }

    /// Every layer allocates activations of many megabytes. glibc serves such blocks with fresh mmaps whose pages
    /// the kernel must zero on first touch (a tenth of a training step); keeping freed memory in the heap instead
    /// lets the next layer reuse it.
    static func keepFreedMemory() {
        #if canImport(Glibc)
        typealias MallOpt = @convention(c) (Int32, Int32) -> Int32
        guard let symbol = dlsym(UnsafeMutableRawPointer(bitPattern: 0), "mallopt") else { return }  // RTLD_DEFAULT
        let mallopt = unsafeBitCast(symbol, to: MallOpt.self)
        _ = mallopt(-3, 32 << 20)  // M_MMAP_THRESHOLD: 32 MiB is glibc's maximum
        _ = mallopt(-1, 1 << 30)  // M_TRIM_THRESHOLD
        #endif
    }

    // MARK: - Forward

    /// Final hidden states [N, C] after the output norm for `batch` sequences of `length` tokens
    /// (token rows of each sequence contiguous), keeping what backward needs when `caches` is given.
    func hidden(tokens: [Int32], batch: Int, length: Int, caches: inout [LayerCache<T>]?,
                layerInputs: inout [[T]]?) throws -> (x: [T], rstd: [T], hf: [T]) {
        let n = tokens.count
        guard n == batch * length, n > 0 else {
            throw ModelError.invalidInput("batch of \(tokens.count) tokens is not \(batch) × \(length)")
        }
        var x = try weights.embeddings(tokens)
        addEmbeddingLoRA(tokens: tokens, x: &x)
        let rope = RoPE<T>(positions: (0..<n).map { Int32($0 % length) }, frequencies: frequencies)
        let attention = Attention<T>(batch: batch, length: length, heads: config.heads, kvHeads: config.kvHeads,
                                     headDim: config.headDim)
        for l in 0..<config.layers {
            let w = try weights.layer(l)
            let cache = LayerCache<T>()
            layerInputs?.append(x)
            x = layerForward(l, x: x, w: w, rope: rope, attention: attention, cache: cache)
            if caches != nil && layerInputs == nil { caches!.append(cache) }
        }
        var hf = [T](repeating: 0, count: n * config.embedding)
        var rstd = [T](repeating: 0, count: n)
        RMSNorm.forward(x: x, weight: weights.outputNorm, y: &hf, rstd: &rstd, rows: n, cols: config.embedding,
                        eps: T(config.rmsEpsilon))
        return (x, rstd, hf)
    }

    /// One transformer block; fills `cache` and returns the block's output [N, C]. Unless `keepAll`, the cache
    /// leaves out what `restore` can rebuild cheaply (h1, h2, act, probs, attn).
    func layerForward(_ l: Int, x: [T], w: LayerWeights<T>, rope: RoPE<T>, attention: Attention<T>,
                      cache c: LayerCache<T>, keepAll: Bool = false) -> [T] {
        let n = x.count / config.embedding, C = config.embedding, F = config.feedForward
        let p = "blk.\(l)."
        let eps = T(config.rmsEpsilon)
        var h1 = [T](repeating: 0, count: n * C), rstd1 = [T](repeating: 0, count: n)
        RMSNorm.forward(x: x, weight: w.attnNorm, y: &h1, rstd: &rstd1, rows: n, cols: C, eps: eps)
        var q = linear(p + "attn_q", h1, n, C, config.qDim, w.q, c)
        var k = linear(p + "attn_k", h1, n, C, config.kvDim, w.k, c)
        let v = linear(p + "attn_v", h1, n, C, config.kvDim, w.v, c)
        q.withUnsafeMutableBufferPointer { rope.apply($0.baseAddress!, tokens: n, heads: config.heads) }
        k.withUnsafeMutableBufferPointer { rope.apply($0.baseAddress!, tokens: n, heads: config.kvHeads) }
        var probs = [T](repeating: 0, count: attention.probsCount), attn = [T](repeating: 0, count: n * config.qDim)
        attention.forward(q: q, k: k, v: v, out: &attn, probs: &probs)
        var xMid = linear(p + "attn_output", attn, n, config.qDim, C, w.o, c)
        LlamaModel.addInPlace(&xMid, x)
        var h2 = [T](repeating: 0, count: n * C), rstd2 = [T](repeating: 0, count: n)
        RMSNorm.forward(x: xMid, weight: w.ffnNorm, y: &h2, rstd: &rstd2, rows: n, cols: C, eps: eps)
        let gate = linear(p + "ffn_gate", h2, n, C, F, w.gate, c)
        let up = linear(p + "ffn_up", h2, n, C, F, w.up, c)
        var act = [T](repeating: 0, count: n * F)
        SwiGLU.forward(gate: gate, up: up, out: &act, count: n * F)
        var out = linear(p + "ffn_down", act, n, F, C, w.down, c)
        LlamaModel.addInPlace(&out, xMid)
        (c.xIn, c.rstd1, c.q, c.k, c.v, c.rstd2, c.gate, c.up) = (x, rstd1, q, k, v, rstd2, gate, up)
        if keepAll { (c.h1, c.probs, c.attn, c.xMid, c.h2, c.act) = (h1, probs, attn, xMid, h2, act) }
        return out
    }

    /// Rebuilds what `layerForward` left out: h1, the attention probabilities and output, xMid (one product),
    /// h2 and act.
    func restore(_ l: Int, _ c: LayerCache<T>, w: LayerWeights<T>, attention: Attention<T>) {
        let n = c.xIn.count / config.embedding, C = config.embedding
        let eps = T(config.rmsEpsilon)
        var h1 = [T](repeating: 0, count: n * C), h2 = h1
        RMSNorm.forward(x: c.xIn, weight: w.attnNorm, y: &h1, rstd: nil, rows: n, cols: C, eps: eps)
        var probs = [T](repeating: 0, count: attention.probsCount), attn = [T](repeating: 0, count: n * config.qDim)
        attention.probabilities(q: c.q, k: c.k, probs: &probs)
        attention.output(probs: probs, v: c.v, out: &attn)
        var xMid = linear("blk.\(l).attn_output", attn, n, config.qDim, C, w.o, c)
        LlamaModel.addInPlace(&xMid, c.xIn)
        RMSNorm.forward(x: xMid, weight: w.ffnNorm, y: &h2, rstd: nil, rows: n, cols: C, eps: eps)
        var act = [T](repeating: 0, count: c.gate.count)
        SwiGLU.forward(gate: c.gate, up: c.up, out: &act, count: c.gate.count)
        (c.h1, c.probs, c.attn, c.xMid, c.h2, c.act) = (h1, probs, attn, xMid, h2, act)
    }

    /// a += b, element-wise.
    static func addInPlace(_ a: inout [T], _ b: [T]) {
        a.withUnsafeMutableBufferPointer { a in
            b.withUnsafeBufferPointer { b in for i in 0..<a.count { a[i] += b[i] } }
        }
    }

    func linear(_ name: String, _ x: [T], _ n: Int, _ inF: Int, _ outF: Int, _ w: [T], _ cache: LayerCache<T>) -> [T] {
        var y = [T](repeating: 0, count: n * outF)
        var saved: [[T]] = []
        LinearLoRA.forward(x: x, n: n, inFeatures: inF, outFeatures: outF, weight: w, adapters: adaptersFor(name),
                           y: &y, saved: &saved)
        cache.lora[name] = saved
        return y
    }

    /// token_embd LoRA: x[t] += s · B · A[:, token].
    func addEmbeddingLoRA(tokens: [Int32], x: inout [T]) {
        let C = config.embedding, V = config.vocabulary
        for (pair, scale, _) in adaptersFor("token_embd").pairs {
            let r = pair.rank
            for (t, token) in tokens.enumerated() {
                for o in 0..<C {
                    var sum: T = 0
                    for j in 0..<r { sum += pair.b[o * r + j] * pair.a[j * V + Int(token)] }
                    x[t * C + o] += scale * sum
                }
            }
        }
    }

    /// Logits [rows.count, V] for the rows `rows` of the final hidden states.
    func headLogits(_ hf: UnsafePointer<T>, rows: Range<Int>) -> [T] {
        let C = config.embedding, V = config.vocabulary
        var logits = [T](repeating: 0, count: rows.count * V)
        var saved: [[T]] = []
        weights.head.withUnsafeBufferPointer { w in
            LinearLoRA.forward(x: hf + rows.lowerBound * C, n: rows.count, inFeatures: C, outFeatures: V,
                               weight: w.baseAddress!, adapters: adaptersFor("output"), y: &logits, saved: &saved)
        }
        return logits
    }

    /// Logits [N, V] of every position (for tests and small inputs; perplexity uses `scoredLogits`).
    @_specialize(exported: true, where T == Float)
    public func logits(tokens: [Int32], batch: Int = 1) throws -> [T] {
        var caches: [LayerCache<T>]? = nil, inputs: [[T]]? = nil
        let (_, _, hf) = try hidden(tokens: tokens, batch: batch, length: tokens.count / max(batch, 1),
                                    caches: &caches, layerInputs: &inputs)
        return hf.withUnsafeBufferPointer { headLogits($0.baseAddress!, rows: 0..<tokens.count) }
    }

    /// Mean next-token loss over the scored targets (−1 = not scored), forward only.
    @_specialize(exported: true, where T == Float)
    public func loss(tokens: [Int32], targets: [Int32], batch: Int) throws -> (sum: Double, count: Int) {
        var caches: [LayerCache<T>]? = nil, inputs: [[T]]? = nil
        let n = tokens.count
        let (_, _, hf) = try hidden(tokens: tokens, batch: batch, length: n / max(batch, 1), caches: &caches, layerInputs: &inputs)
        var total = 0.0
        hf.withUnsafeBufferPointer { hf in
            targets.withUnsafeBufferPointer { tg in
                for start in stride(from: 0, to: n, by: headChunkRows) {
                    let rows = start..<min(n, start + headChunkRows)
                    var logits = headLogits(hf.baseAddress!, rows: rows)
                    total += CrossEntropy.forwardBackward(logits: &logits, targets: tg.baseAddress! + start, rows: rows.count,
                                                          vocab: config.vocabulary, gradientScale: 0, gradient: false)
                }
            }
        }
        return (total, targets.filter { $0 >= 0 && Int($0) < config.vocabulary }.count)
    }
}

extension LlamaModel {
    /// Negative log-likelihoods of next-token predictions: for each of the `batch` sequences (each `length`
    /// tokens of `tokens`), the logits at positions `scored` predict the token after each. Only those rows of
    /// the vocabulary head are computed.
    @_specialize(exported: true, where T == Float)
    public func negativeLogLikelihoods(tokens: [Int32], batch: Int, scored: Range<Int>) throws -> [Double] {
        let length = tokens.count / max(batch, 1)
        guard scored.lowerBound >= 0, scored.upperBound < length else {
            throw ModelError.invalidInput("scored positions \(scored) must predict tokens inside sequences of \(length)")
        }
        var caches: [LayerCache<T>]? = nil, inputs: [[T]]? = nil
        let (_, _, hf) = try hidden(tokens: tokens, batch: batch, length: length, caches: &caches, layerInputs: &inputs)
        var out: [Double] = []
        hf.withUnsafeBufferPointer { hf in
            for b in 0..<batch {
                let rows = (b * length + scored.lowerBound)..<(b * length + scored.upperBound)
                var logits = headLogits(hf.baseAddress!, rows: rows)
                let targets = rows.map { tokens[$0 + 1] }
                var losses = [T](repeating: 0, count: rows.count)
                CrossEntropy.forwardBackward(logits: &logits, targets: targets, rows: rows.count, vocab: config.vocabulary,
                                             gradientScale: 0, gradient: false, losses: &losses)
                out += losses.map { Double($0) }
            }
        }
        return out
    }
}
