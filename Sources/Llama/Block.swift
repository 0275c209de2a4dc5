import Kernels
import LoRA

/// What a transformer block is made of, as data: the block's code below follows it, so that an architecture is a
/// description plus the few operations it adds (llama; Qwen2's biases; Qwen3's and Gemma 3's Q/K norms;
/// Gemma's GeGLU and post-norms).
public struct BlockDescription: Sendable, Equatable {
    public enum Norm: Sendable, Equatable { case rms(epsilon: Float) }
    public enum FeedForward: Sendable, Equatable {
        /// down(silu(gate(h)) ⊙ up(h))
        case swiGLU
        /// down(gelu_tanh(gate(h)) ⊙ up(h))
        case geGLU
    }
    /// Normalization before attention and before the feed-forward network (pre-norm residual block).
    public var norm: Norm
    public var feedForward: FeedForward
    /// Q and K are normalized per head (weights [headDim]) before RoPE.
    public var qkNorm: Bool
    /// The attention and feed-forward outputs are normalized before each residual add.
    public var postNorms: Bool
    /// The block's linear weights, in the order the forward pass uses them.
    public var linears: [LoRATarget]

    public init(config: LlamaConfig) {
        norm = .rms(epsilon: config.rmsEpsilon)
        feedForward = config.feedForwardKind
        qkNorm = config.qkNorm
        postNorms = config.postNorms
        linears = config.blockTargets
    }
}

/// The weights of one block: dequantized for products over many rows, read in place for one token.
/// Norm weights the description does not use are empty.
struct BlockWeights<T: KernelScalar> {
    var attnNorm, ffnNorm: [T]
    var qNorm: [T] = [], kNorm: [T] = [], postAttentionNorm: [T] = [], postFeedForwardNorm: [T] = []
    /// Q, K, V and gate, up: each group reads one input.
    var qkv, gateUp: LinearGroup<T>
    var o, down: LinearWeight<T>
}

/// Linear weights that read the same input and whose outputs are used apart: separate tensors (llama's Q, K, V),
/// or one fused tensor whose output columns are the parts side by side (Phi-3's `attn_qkv`, and `ffn_up` holding
/// gate then up), adapted by LoRA as the one tensor it is.
///
/// Shapes: x [N, in]; parts [N, widthᵢ]; the fused output [N, Σ widths].
enum LinearGroup<T: KernelScalar> {
    case separate([LinearWeight<T>])
    case fused(LinearWeight<T>, widths: [Int])

    /// Each part's output, recording the adapters' x·Aᵀ in `c`.
    func forward(_ x: [T], rows n: Int, keep c: BlockActivations<T>?) -> [[T]] {
        func run(_ w: LinearWeight<T>) -> [T] {
            let (y, saved) = w.forward(x, rows: n)
            if let c, !saved.isEmpty { c.lora[w.name] = saved }
            return y
        }
        switch self {
        case let .separate(weights):
            return weights.map(run)
        case let .fused(weight, widths):
            let y = run(weight), total = widths.reduce(0, +)
            var offset = 0
            return widths.map { width in
                defer { offset += width }
                var part = [T](unfilled: n * width)
                for r in 0..<n { for j in 0..<width { part[r * width + j] = y[r * total + offset + j] } }
                return part
            }
        }
    }

    /// dL/dx into `dx` (added when `accumulate`; left alone when `dx` is empty: only the adapters' gradients
    /// are wanted) from each part's dL/dy; accumulates the trainable adapters' gradients.
    func backward(_ dParts: [[T]], x: [T], rows n: Int, activations c: BlockActivations<T>, into dx: inout [T], accumulate: Bool) {
        func run(_ w: LinearWeight<T>, _ dy: [T], accumulate: Bool) {
            let saved = c.lora[w.name] ?? []
            guard !dx.isEmpty else {
                return LinearLoRA.backward(dy: dy, x: x, n: n, weight: w, saved: saved, dx: nil, accumulate: accumulate)
            }
            dx.withUnsafeMutableBufferPointer { d in
                LinearLoRA.backward(dy: dy, x: x, n: n, weight: w, saved: saved, dx: d.baseAddress!, accumulate: accumulate)
            }
        }
        switch self {
        case let .separate(weights):
            for (i, (w, dy)) in zip(weights, dParts).enumerated() { run(w, dy, accumulate: accumulate || i > 0) }
        case let .fused(weight, widths):
            let total = widths.reduce(0, +)
            var dy = [T](unfilled: n * total), offset = 0
            for (part, width) in zip(dParts, widths) {
                for r in 0..<n { for j in 0..<width { dy[r * total + offset + j] = part[r * width + j] } }
                offset += width
            }
            run(weight, dy, accumulate: accumulate)
        }
    }
}

/// How a block's attention sees the other positions; the only part of the block that differs between the batched
/// pass (training, perplexity, prompts) and a generation step.
enum AttentionMode<T: KernelScalar> {
    /// Every sequence of the batch attends causally to itself.
    case causal(Attention<T>)
    /// The new tokens attend to a key/value cache, which receives their keys and values.
    case cached(KVCache<T>, layer: Int)
}

/// What one block's forward keeps for its backward. The normalized inputs (h1, h2) and the gated activation (act)
/// are element-wise work away from what is kept, so `restore` recomputes them instead of keeping them (30 % of a
/// SmolLM2 layer's activations). The attention's output and saves (attn, probs) and the residual after attention
/// (xMid, one product away) are kept: rebuilding them cost 5 % of a SmolLM2 step's products (BENCHMARKS.md).
/// The `…Pre` values are the inputs of the optional norms (Q/K norms, post-norms), with their `rstd`.
final class BlockActivations<T: KernelScalar> {
    var xIn: [T] = [], h1: [T] = [], rstd1: [T] = []
    var q: [T] = [], k: [T] = [], v: [T] = [], probs: [T] = [], attn: [T] = []
    var qPre: [T] = [], kPre: [T] = [], rstdQ: [T] = [], rstdK: [T] = []
    var oPre: [T] = [], rstdO: [T] = [], downPre: [T] = [], rstdDown: [T] = []
    var xMid: [T] = [], h2: [T] = [], rstd2: [T] = []
    var gate: [T] = [], up: [T] = [], act: [T] = []
    /// The x·Aᵀ products of every adapted linear, by weight name.
    var lora: [String: [[T]]] = [:]
}

/// One transformer block, forward and backward side by side (pre-norm, grouped-query attention with RoPE, gated
/// feed-forward).
///
/// Shapes (N tokens, C embedding, Q = H·d query width, K = KV·d key/value width, F feed-forward):
///   x, h1, xMid, h2, out [N, C]; q, attn [N, Q]; k, v [N, K]; gate, up, act [N, F]; rstd1, rstd2 [N];
///   probs [batch, H, T, T] (causal mode only; the tiled attention's log-sum-exp [batch, H, T] instead);
///   rstdQ [N·H], rstdK [N·KV].
///
///   h1 = norm(x) · attnNorm            q, k, v = h1·Wqᵀ, h1·Wkᵀ, h1·Wvᵀ (+ bias) (+ LoRA)   (fused: h1·Wqkvᵀ split)
///   [q, k = headNorm(q)·qNorm, headNorm(k)·kNorm]          RoPE on q, k
///   attn = attention(q, k, v)          xMid = x + [postNorm](attn·Woᵀ)
///   h2 = norm(xMid) · ffnNorm          act = silu(h2·Wgateᵀ) ⊙ (h2·Wupᵀ)   (GeGLU: gelu_tanh for silu)
///   out = xMid + [postNorm](act·Wdownᵀ)
struct TransformerBlock<T: KernelScalar> {
    let description: BlockDescription
    let config: LlamaConfig
    let weights: BlockWeights<T>
    let rope: RoPE<T>
    /// Scale, cap and window of this layer's attention in cached mode (the batched pass's `Attention` has its own).
    let scoring: AttentionScoring<T>

    var epsilon: T { switch description.norm { case let .rms(e): return T(e) } }

    // MARK: Forward

    /// The block's output [N, C]. With `keep`, fills it with what backward needs (`everything`: also what
    /// `restore` would rebuild). Without `output` (a forward recomputed for backward, gradient checkpointing) the
    /// down projection's product is skipped where backward does not read it (no post-norm), and [] is returned:
    /// backward needs only its input and its adapters' x·Aᵀ.
    func forward(_ x: [T], attention: AttentionMode<T>, keep c: BlockActivations<T>? = nil, everything: Bool = false,
                 output: Bool = true) -> [T] {
        let n = x.count / config.embedding
        let (h1, rstd1) = norm(x, weights.attnNorm, rows: n)
        let qkv = weights.qkv.forward(h1, rows: n, keep: c)
        let (qPre, kPre, v) = (qkv[0], qkv[1], qkv[2])
        var (q, rstdQ) = headNorm(qPre, weights.qNorm, heads: config.heads)
        var (k, rstdK) = headNorm(kPre, weights.kNorm, heads: config.kvHeads)
        q.withUnsafeMutableBufferPointer { rope.apply($0.baseAddress!, tokens: n, heads: config.heads) }
        k.withUnsafeMutableBufferPointer { rope.apply($0.baseAddress!, tokens: n, heads: config.kvHeads) }
        let (attn, probs) = attend(q, k, v, rows: n, attention)
        let (xMid, oPre, rstdO) = attentionResidual(attn, x, rows: n, c)
        let (h2, rstd2) = norm(xMid, weights.ffnNorm, rows: n)
        let gateUp = weights.gateUp.forward(h2, rows: n, keep: c)
        let (gate, up) = (gateUp[0], gateUp[1])
        let act = activate(gate, up)
        var out: [T] = []
        if let c, !output, !description.postNorms {
            let saved = act.withUnsafeBufferPointer { LinearLoRA.adapterInputs(x: $0.baseAddress!, n: n, weight: weights.down) }
            if !saved.isEmpty { c.lora[weights.down.name] = saved }
        } else {
            let downPre = linear(weights.down, act, n, c)
            let (normedDown, rstdDown) = postNorm(downPre, weights.postFeedForwardNorm, rows: n)
            out = Self.sum(normedDown, xMid)
            if let c, description.postNorms { (c.downPre, c.rstdDown) = (downPre, rstdDown) }
        }
        if let c {
            (c.xIn, c.rstd1, c.q, c.k, c.v, c.rstd2, c.gate, c.up) = (x, rstd1, q, k, v, rstd2, gate, up)
            (c.probs, c.attn, c.xMid, c.oPre, c.rstdO) = (probs, attn, xMid, oPre, rstdO)
            if description.qkNorm { (c.qPre, c.kPre, c.rstdQ, c.rstdK) = (qPre, kPre, rstdQ, rstdK) }
            if everything { (c.h1, c.h2, c.act) = (h1, h2, act) }
        }
        return out
    }

    /// Rebuilds what `forward` keeps only with `everything` (h1, h2, act) from what it always keeps, through the
    /// same steps.
    func restore(_ c: BlockActivations<T>) {
        let n = c.xIn.count / config.embedding
        c.h1 = norm(c.xIn, weights.attnNorm, rows: n).y
        c.h2 = norm(c.xMid, weights.ffnNorm, rows: n).y
        c.act = activate(c.gate, c.up)
    }

    func norm(_ x: [T], _ weight: [T], rows n: Int, cols: Int? = nil) -> (y: [T], rstd: [T]) {
        var y = [T](unfilled: x.count), rstd = [T](unfilled: n)
        RMSNorm.forward(x: x, weight: weight, y: &y, rstd: &rstd, rows: n, cols: cols ?? config.embedding, eps: epsilon)
        return (y, rstd)
    }

    /// Each head of q or k [N, heads·d] normalized with `weight` [d]; unchanged when the block has no Q/K norms.
    func headNorm(_ x: [T], _ weight: [T], heads: Int) -> (y: [T], rstd: [T]) {
        guard description.qkNorm else { return (x, []) }
        return norm(x, weight, rows: x.count / config.headDim, cols: config.headDim)
    }

    /// A sublayer's output normalized before the residual add; unchanged when the block has no post-norms.
    func postNorm(_ x: [T], _ weight: [T], rows n: Int) -> (y: [T], rstd: [T]) {
        guard description.postNorms else { return (x, []) }
        return norm(x, weight, rows: n)
    }

    /// Backward of `headNorm`/`postNorm`: dL/dx from dL/dy (dy itself when the norm is absent).
    func optionalNormBackward(_ dy: [T], present: Bool, x: [T], weight: [T], rstd: [T], cols: Int) -> [T] {
        guard present else { return dy }
        var dx = [T](repeating: 0, count: dy.count)
        RMSNorm.backward(dy: dy, x: x, weight: weight, rstd: rstd, dx: &dx, rows: dy.count / cols, cols: cols)
        return dx
    }

    /// y = x·Wᵀ + LoRA, recording the adapters' x·Aᵀ in `c` for backward.
    func linear(_ w: LinearWeight<T>, _ x: [T], _ n: Int, _ c: BlockActivations<T>?) -> [T] {
        LinearGroup.separate([w]).forward(x, rows: n, keep: c)[0]
    }

    /// Attention output [N, Q] and, in causal mode, the probabilities; cached mode first appends k, v to the cache.
    func attend(_ q: [T], _ k: [T], _ v: [T], rows n: Int, _ mode: AttentionMode<T>) -> (attn: [T], probs: [T]) {
        var attn = [T](repeating: 0, count: n * config.qDim)
        switch mode {
        case let .causal(attention):
            var probs = [T](repeating: 0, count: attention.savedCount)
            attention.forward(q: q, k: k, v: v, out: &attn, saved: &probs)
            return (attn, probs)
        case let .cached(cache, layer):
            cache.append(layer: layer, keys: k, values: v, count: n)
            cache.attend(layer: layer, q: q, count: n, scoring: scoring, out: &attn)
            return (attn, [])
        }
    }

    /// xMid = x + [postNorm](attn·Woᵀ), with the post-norm's input and rstd.
    func attentionResidual(_ attn: [T], _ x: [T], rows n: Int, _ c: BlockActivations<T>?) -> (xMid: [T], oPre: [T], rstdO: [T]) {
        let oPre = linear(weights.o, attn, n, c)
        let (normedO, rstdO) = postNorm(oPre, weights.postAttentionNorm, rows: n)
        let xMid = Self.sum(normedO, x)
        return (xMid, description.postNorms ? oPre : [], rstdO)
    }

    func activate(_ gate: [T], _ up: [T]) -> [T] {
        var act = [T](unfilled: gate.count)
        switch description.feedForward {
        case .swiGLU: SwiGLU.forward(gate: gate, up: up, out: &act, count: gate.count)
        case .geGLU: GeGLU.forward(gate: gate, up: up, out: &act, count: gate.count)
        }
        return act
    }

    /// a + b, element-wise, into a fresh array, split over the pool (adding into `a` in place copied it first
    /// whenever the caller still held it, serially).
    static func sum(_ a: [T], _ b: [T]) -> [T] {
        var c = [T](unfilled: a.count)
        c.withUnsafeMutableBufferPointer { c in
            a.withUnsafeBufferPointer { a in
                b.withUnsafeBufferPointer { b in
                    guard let pa = a.baseAddress, let pb = b.baseAddress, let pc = c.baseAddress else { return }
                    Parallel.forEachRange(c.count) { range in for i in range { pc[i] = pa[i] + pb[i] } }
                }
            }
        }
        return c
    }

    // MARK: Backward

    /// dL/dx of the block's input from dL/d(out); accumulates the trainable adapters' gradients. Releases each
    /// activation after its last use (the first layer's backward sets the memory peak). Without `inputGradient`
    /// (the first block, when nothing before it trains) the products and the norm that only lead to dL/dx are
    /// skipped and [] is returned.
    func backward(_ dOut: [T], attention: Attention<T>, activations c: BlockActivations<T>, inputGradient: Bool = true) -> [T] {
        let n = dOut.count / config.embedding, C = config.embedding, F = config.feedForward
        // out = xMid + [postNorm](down(act))
        let dDown = optionalNormBackward(dOut, present: description.postNorms, x: c.downPre,
                                         weight: weights.postFeedForwardNorm, rstd: c.rstdDown, cols: C)
        (c.downPre, c.rstdDown) = ([], [])
        var dAct = [T](unfilled: n * F)
        linearBackward(weights.down, dDown, c.act, n, c, into: &dAct, accumulate: false)
        c.act = []
        var dGate = [T](unfilled: n * F), dUp = [T](unfilled: n * F)
        switch description.feedForward {
        case .swiGLU: SwiGLU.backward(dOut: dAct, gate: c.gate, up: c.up, dGate: &dGate, dUp: &dUp, count: n * F)
        case .geGLU: GeGLU.backward(dOut: dAct, gate: c.gate, up: c.up, dGate: &dGate, dUp: &dUp, count: n * F)
        }
        (c.gate, c.up, dAct) = ([], [], [])
        var dh2 = [T](unfilled: n * C)
        weights.gateUp.backward([dGate, dUp], x: c.h2, rows: n, activations: c, into: &dh2, accumulate: false)
        (c.h2, dGate, dUp) = ([], [], [])
        var dxMid = dOut
        RMSNorm.backward(dy: dh2, x: c.xMid, weight: weights.ffnNorm, rstd: c.rstd2, dx: &dxMid, rows: n, cols: C)
        // xMid = x + [postNorm](o(attn))
        let dO = optionalNormBackward(dxMid, present: description.postNorms, x: c.oPre,
                                      weight: weights.postAttentionNorm, rstd: c.rstdO, cols: C)
        (c.oPre, c.rstdO) = ([], [])
        var dAttn = [T](unfilled: n * config.qDim)
        linearBackward(weights.o, dO, c.attn, n, c, into: &dAttn, accumulate: false)
        var dq = [T](repeating: 0, count: n * config.qDim)
        var dk = [T](repeating: 0, count: n * config.kvDim), dv = dk
        attention.backward(dOut: dAttn, q: c.q, k: c.k, v: c.v, out: c.attn, saved: c.probs, dq: &dq, dk: &dk, dv: &dv)
        (c.probs, c.attn, dAttn) = ([], [], [])
        dq.withUnsafeMutableBufferPointer { rope.apply($0.baseAddress!, tokens: n, heads: config.heads, inverse: true) }
        dk.withUnsafeMutableBufferPointer { rope.apply($0.baseAddress!, tokens: n, heads: config.kvHeads, inverse: true) }
        let d = config.headDim
        dq = optionalNormBackward(dq, present: description.qkNorm, x: c.qPre, weight: weights.qNorm, rstd: c.rstdQ, cols: d)
        dk = optionalNormBackward(dk, present: description.qkNorm, x: c.kPre, weight: weights.kNorm, rstd: c.rstdK, cols: d)
        (c.qPre, c.kPre, c.rstdQ, c.rstdK) = ([], [], [], [])
        var dh1 = inputGradient ? [T](unfilled: n * C) : []
        weights.qkv.backward([dq, dk, dv], x: c.h1, rows: n, activations: c, into: &dh1, accumulate: false)
        guard inputGradient else { return [] }
        var dx = dxMid
        RMSNorm.backward(dy: dh1, x: c.xIn, weight: weights.attnNorm, rstd: c.rstd1, dx: &dx, rows: n, cols: C)
        return dx
    }

    func linearBackward(_ w: LinearWeight<T>, _ dy: [T], _ x: [T], _ n: Int, _ c: BlockActivations<T>,
                        into dx: inout [T], accumulate: Bool) {
        LinearGroup.separate([w]).backward([dy], x: x, rows: n, activations: c, into: &dx, accumulate: accumulate)
    }
}
