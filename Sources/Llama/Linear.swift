import GGUF
import Kernels
import LoRA

/// An adapter applied to a model, with its own multiplier (`--lora-scaled F S`); gradients are computed for
/// trainable adapters only.
public struct AppliedAdapter<T: KernelScalar> {
    public var adapter: LoRAAdapter<T>
    public var multiplier: T
    public var trainable: Bool
    public init(_ adapter: LoRAAdapter<T>, multiplier: T = 1, trainable: Bool = false) {
        self.adapter = adapter
        self.multiplier = multiplier
        self.trainable = trainable
    }
}

/// The LoRA pairs that adapt one base weight: (pair, total scale = multiplier · alpha/r, trainable).
struct WeightAdapters<T: KernelScalar> {
    var pairs: [(pair: LoRAPair<T>, scale: T, trainable: Bool)] = []
    var isEmpty: Bool { pairs.isEmpty }

    init(_ name: String, _ applied: [AppliedAdapter<T>]) {
        for a in applied {
            if let p = a.adapter[name] { pairs.append((p, p.scale * a.multiplier, a.trainable)) }
        }
    }

    private init(pairs: [(pair: LoRAPair<T>, scale: T, trainable: Bool)]) { self.pairs = pairs }

    /// Whether backward must accumulate gradients into any of them.
    var hasTrainable: Bool { pairs.contains { $0.trainable } }

    /// The same adapters restricted to the outputs `rows` (rows of B, in that order), as new pairs with zero
    /// gradients, for a weight applied in chunks of output rows (the vocabulary head); `addGradients` adds a
    /// contiguous slice's back.
    func slice<Rows: Collection<Int>>(outputs rows: Rows) throws -> WeightAdapters<T> {
        WeightAdapters(pairs: try pairs.map { p in
            let r = p.pair.rank
            let sliced = try LoRAPair<T>(name: p.pair.name, rank: r, inFeatures: p.pair.inFeatures, outFeatures: rows.count,
                                         scale: p.pair.scale, a: p.pair.a,
                                         b: rows.flatMap { p.pair.b[($0 * r)..<(($0 + 1) * r)] })
            return (sliced, p.scale, p.trainable)
        })
    }

    func addGradients(of slice: WeightAdapters<T>, outputs range: Range<Int>) {
        for (whole, part) in zip(pairs, slice.pairs) where whole.trainable {
            let r = whole.pair.rank
            for i in whole.pair.gradA.indices { whole.pair.gradA[i] += part.pair.gradA[i] }
            for i in part.pair.gradB.indices { whole.pair.gradB[range.lowerBound * r + i] += part.pair.gradB[i] }
        }
    }
}

/// What the frozen-weight products (x·Wᵀ forward, dy·W backward) multiply. `.bf16` rounds both operands — the
/// weight and the activations or incoming gradients — to bfloat16 (round to nearest even) and accumulates in
/// float32. Where the CPU has bf16 products (`BFloat16GEMM.isAvailable`) the weights are kept in bf16 (half the
/// memory of float32) and the products run on its bf16 instructions; elsewhere the same numbers are computed in
/// float32 on the rounded values (no speed-up: `ProductPrecision` then chooses float32 for runs). The batched passes'
/// attention products (q·kᵀ, P·v and their backward) multiply bf16-rounded operands too, as PyTorch's bf16 autocast
/// does (`Attention.bf16Products`). LoRA's products, norms, softmax, the loss and the optimizer are float32 either
/// way; single-token products (generation) are not affected.
public enum FrozenProductInputs: String, Sendable, CaseIterable {
    case float32, bf16
}

/// How single-row products read weights in place: over how many threads, with which activations.
struct RowProducts {
    var threads: Int
    var activations: TokenActivations = .exact
}

/// One frozen linear weight W [out, in] with the adapters that apply to it.
///
/// The weight is either dequantized (`dense`, for products over many rows) or read in place from the file
/// (`rows`: blocks as stored, for a single token, where a dequantized copy would cost more than the product).
struct LinearWeight<T: KernelScalar> {
    enum Source {
        case dense([T])
        /// The weight rounded to bf16 [out, in] (bit patterns), for products on the CPU's bf16 instructions.
        case bf16([UInt16])
        /// The tensor's blocks as the file stores them, for single-row products.
        case rows(type: TensorType, data: UnsafeRawBufferPointer, products: RowProducts)
    }

    let name: String
    let inFeatures: Int
    let outFeatures: Int
    let source: Source
    let adapters: WeightAdapters<T>
    /// A frozen bias [out] (Qwen2's Q, K, V): added to y, no gradient of its own.
    var bias: [T]? = nil
    /// What the frozen product multiplies (`FrozenProductInputs`).
    var productInputs: FrozenProductInputs = .float32

    /// The weight as [out, in] values (dequantizing `rows` sources, widening `bf16` ones).
    func withDense<R>(_ body: (UnsafePointer<T>) -> R) -> R {
        switch source {
        case let .dense(w):
            return w.withUnsafeBufferPointer { body($0.baseAddress!) }
        case let .bf16(bits):
            return bits.map { T(HalfPrecision.floatFromBFloat16Bits($0)) }.withUnsafeBufferPointer { body($0.baseAddress!) }
        case let .rows(type, data, _):
            let floats = Dequantize.onAllThreads(type, from: data, rowLength: inFeatures, rows: [0..<outFeatures])
            if T.self == Float.self { return floats.withUnsafeBufferPointer { body(UnsafeRawPointer($0.baseAddress!).assumingMemoryBound(to: T.self)) } }
            return floats.map { T($0) }.withUnsafeBufferPointer { body($0.baseAddress!) }
        }
    }

    /// The frozen product over `n` rows: c [n, out] = x [n, in]·Wᵀ (`transposed`, forward), or c [n, in] (= or, when
    /// `accumulate`, +=) x [n, out]·W (backward). With bf16 inputs, on the bf16 weight through the CPU's bf16
    /// products, or else on both operands rounded to bf16 in float32 (the same numbers; the caller's x is untouched).
    func frozenProduct(_ x: UnsafePointer<T>, rows n: Int, transposed: Bool, into c: UnsafeMutablePointer<T>, accumulate: Bool) {
        let k = transposed ? inFeatures : outFeatures, cols = transposed ? outFeatures : inFeatures
        if case let .bf16(bits) = source, T.self == Float.self {
            let roundedX = BFloat16GEMM.rounded(UnsafeRawPointer(x).assumingMemoryBound(to: Float.self), count: n * k)
            roundedX.withUnsafeBufferPointer { xp in
                bits.withUnsafeBufferPointer { wp in
                    BFloat16GEMM.gemm(transA: false, transB: transposed, m: n, n: cols, k: k, a: xp.baseAddress!, lda: k,
                                      b: wp.baseAddress!, ldb: inFeatures, accumulate: accumulate,
                                      c: UnsafeMutableRawPointer(c).assumingMemoryBound(to: Float.self), ldc: cols)
                }
            }
            return
        }
        withDense { wp in
            func multiply(_ xp: UnsafePointer<T>, _ wp: UnsafePointer<T>) {
                T.gemm(transA: false, transB: transposed, m: n, n: cols, k: k, alpha: 1, a: xp, lda: k, b: wp, ldb: inFeatures,
                       beta: accumulate ? 1 : 0, c: c, ldc: cols)
            }
            guard productInputs == .bf16 else { return multiply(x, wp) }
            let roundedX = BFloat16GEMM.roundedValues(x, count: n * k)
            let roundedW = BFloat16GEMM.roundedValues(wp, count: inFeatures * outFeatures)
            roundedX.withUnsafeBufferPointer { a in roundedW.withUnsafeBufferPointer { b in multiply(a.baseAddress!, b.baseAddress!) } }
        }
    }

    /// y = x·Wᵀ + Σ sᵢ·(x·Aᵢᵀ)·Bᵢᵀ; returns y and, per adapter, uᵢ = x·Aᵢᵀ (what backward needs).
    func forward(_ x: UnsafePointer<T>, rows n: Int) -> (y: [T], saved: [[T]]) {
        var y = [T](unfilled: n * outFeatures)
        var saved: [[T]] = []
        y.withUnsafeMutableBufferPointer { LinearLoRA.forward(x: x, n: n, weight: self, y: $0.baseAddress!, saved: &saved) }
        return (y, saved)
    }

    func forward(_ x: [T], rows n: Int) -> (y: [T], saved: [[T]]) {
        x.withUnsafeBufferPointer { forward($0.baseAddress!, rows: n) }
    }
}

/// The LoRA rule, the one place it is applied (training, perplexity, prompts, generation):
/// y = x·Wᵀ (+ b) + Σ sᵢ·(x·Aᵢᵀ)·Bᵢᵀ, with sᵢ = multiplierᵢ · `loraScale` (alpha/r).
///
/// Shapes: x [n, in]; W [out, in]; b [out]; Aᵢ [r, in]; Bᵢ [out, r]; y [n, out]; uᵢ = x·Aᵢᵀ [n, r] (saved for
/// backward). The bias is frozen, so backward is the same with or without it.
enum LinearLoRA {
    static func forward<T: KernelScalar>(x: UnsafePointer<T>, n: Int, weight w: LinearWeight<T>,
                                         y: UnsafeMutablePointer<T>, saved: inout [[T]]) {
        let inF = w.inFeatures, outF = w.outFeatures
        if case let .rows(type, data, products) = w.source, n == 1, T.self == Float.self {
            MatVec.multiply(type: type, data: data, rows: outF, cols: inF, x: UnsafeRawPointer(x).assumingMemoryBound(to: Float.self),
                            y: UnsafeMutableRawPointer(y).assumingMemoryBound(to: Float.self), threads: products.threads,
                            activations: products.activations)
        } else {
            w.frozenProduct(x, rows: n, transposed: true, into: y, accumulate: false)
        }
        if let bias = w.bias {
            for row in 0..<n { for o in 0..<outF { y[row * outF + o] += bias[o] } }
        }
        saved = adapterInputs(x: x, n: n, weight: w)
        for ((pair, scale, _), u) in zip(w.adapters.pairs, saved) {
            u.withUnsafeBufferPointer { u in
                pair.b.withUnsafeBufferPointer { b in
                    T.gemm(transA: false, transB: true, m: n, n: outF, k: pair.rank, alpha: scale, a: u.baseAddress!,
                           lda: pair.rank, b: b.baseAddress!, ldb: pair.rank, beta: 1, c: y, ldc: outF)
                }
            }
        }
    }

    /// uᵢ = x·Aᵢᵀ of every pair: what backward needs of the forward besides x (a recomputed forward whose output
    /// is not needed computes only these).
    static func adapterInputs<T: KernelScalar>(x: UnsafePointer<T>, n: Int, weight w: LinearWeight<T>) -> [[T]] {
        w.adapters.pairs.map { pair, _, _ in
            var u = [T](unfilled: n * pair.rank)
            pair.a.withUnsafeBufferPointer { a in
                u.withUnsafeMutableBufferPointer { u in
                    T.gemm(transA: false, transB: true, m: n, n: pair.rank, k: w.inFeatures, alpha: 1, a: x, lda: w.inFeatures,
                           b: a.baseAddress!, ldb: w.inFeatures, beta: 0, c: u.baseAddress!, ldc: pair.rank)
                }
            }
            return u
        }
    }

    /// dx (= or += when `accumulate`) = dy·W + Σ sᵢ·(dy·Bᵢ)·Aᵢ;  for trainable pairs:
    /// dBᵢ += sᵢ·dyᵀ·uᵢ,  dAᵢ += sᵢ·(dy·Bᵢ)ᵀ·x.
    static func backward<T: KernelScalar>(dy: UnsafePointer<T>, x: UnsafePointer<T>, n: Int, weight w: LinearWeight<T>,
                                          saved: [[T]], dx: UnsafeMutablePointer<T>?, accumulate: Bool) {
        let inF = w.inFeatures, outF = w.outFeatures
        if let dx {
            w.frozenProduct(dy, rows: n, transposed: false, into: dx, accumulate: accumulate)
        }
        for (index, (pair, scale, trainable)) in w.adapters.pairs.enumerated() {
            let r = pair.rank
            var dyB = [T](unfilled: n * r)  // dy·B [n, r]
            pair.b.withUnsafeBufferPointer { b in
                dyB.withUnsafeMutableBufferPointer { t in
                    T.gemm(transA: false, transB: false, m: n, n: r, k: outF, alpha: 1, a: dy, lda: outF,
                           b: b.baseAddress!, ldb: r, beta: 0, c: t.baseAddress!, ldc: r)
                }
            }
            dyB.withUnsafeBufferPointer { t in
                if let dx {
                    pair.a.withUnsafeBufferPointer { a in
                        T.gemm(transA: false, transB: false, m: n, n: inF, k: r, alpha: scale, a: t.baseAddress!,
                               lda: r, b: a.baseAddress!, ldb: inF, beta: 1, c: dx, ldc: inF)
                    }
                }
                if trainable {
                    pair.gradA.withUnsafeMutableBufferPointer { ga in
                        T.gemm(transA: true, transB: false, m: r, n: inF, k: n, alpha: scale, a: t.baseAddress!,
                               lda: r, b: x, ldb: inF, beta: 1, c: ga.baseAddress!, ldc: inF)
                    }
                }
            }
            if trainable {
                // As uᵀ·dy [r, out], then added transposed: the BLAS runs a product with r rows faster than one
                // with r columns (dyᵀ·u), and the transpose is only out·r values.
                var gradBT = [T](unfilled: r * outF)
                saved[index].withUnsafeBufferPointer { u in
                    gradBT.withUnsafeMutableBufferPointer { g in
                        T.gemm(transA: true, transB: false, m: r, n: outF, k: n, alpha: scale, a: u.baseAddress!, lda: r,
                               b: dy, ldb: outF, beta: 0, c: g.baseAddress!, ldc: outF)
                    }
                }
                pair.gradB.withUnsafeMutableBufferPointer { gb in
                    for o in 0..<outF { for j in 0..<r { gb[o * r + j] += gradBT[j * outF + o] } }
                }
            }
        }
    }

    /// The same rule for the embedding table, whose input is a one-hot token (in = vocabulary, out = embedding):
    /// x[t] += s · B · A[:, token].
    static func embeddingForward<T: KernelScalar>(tokens: [Int32], adapters: WeightAdapters<T>, x: inout [T], embedding C: Int) {
        for (pair, scale, _) in adapters.pairs {
            let r = pair.rank, V = pair.inFeatures
            for (t, token) in tokens.enumerated() {
                for o in 0..<C {
                    var sum: T = 0
                    for j in 0..<r { sum += pair.b[o * r + j] * pair.a[j * V + Int(token)] }
                    x[t * C + o] += scale * sum
                }
            }
        }
    }

    /// Its gradients: dA[:, token] += s·Bᵀ·dx[t],  dB += s·dx[t]·A[:, token]ᵀ.
    static func embeddingBackward<T: KernelScalar>(tokens: [Int32], adapters: WeightAdapters<T>, dx: [T], embedding C: Int) {
        for (pair, scale, trainable) in adapters.pairs where trainable {
            let r = pair.rank, V = pair.inFeatures
            for (t, token) in tokens.enumerated() {
                let col = Int(token)
                for j in 0..<r {
                    var sum: T = 0
                    for o in 0..<C { sum += pair.b[o * r + j] * dx[t * C + o] }
                    pair.gradA[j * V + col] += scale * sum
                    let aj = pair.a[j * V + col]
                    for o in 0..<C { pair.gradB[o * r + j] += scale * dx[t * C + o] * aj }
                }
            }
        }
    }
}

