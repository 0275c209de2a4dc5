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
}

/// A linear layer with LoRA: y = x·Wᵀ + Σ sᵢ·(x·Aᵢᵀ)·Bᵢᵀ.
///
/// Shapes: x [n, in]; W [out, in]; Aᵢ [r, in]; Bᵢ [out, r]; y [n, out]; uᵢ = x·Aᵢᵀ [n, r] (saved for backward).
enum LinearLoRA {
    static func forward<T: KernelScalar>(x: UnsafePointer<T>, n: Int, inFeatures: Int, outFeatures: Int,
                                         weight: UnsafePointer<T>, adapters: WeightAdapters<T>,
                                         y: UnsafeMutablePointer<T>, saved: inout [[T]]) {
        T.gemm(transA: false, transB: true, m: n, n: outFeatures, k: inFeatures, alpha: 1, a: x, lda: inFeatures,
               b: weight, ldb: inFeatures, beta: 0, c: y, ldc: outFeatures)
        saved.removeAll(keepingCapacity: true)
        for (pair, scale, _) in adapters.pairs {
            let r = pair.rank
            var u = [T](repeating: 0, count: n * r)
            pair.a.withUnsafeBufferPointer { a in
                u.withUnsafeMutableBufferPointer { u in
                    T.gemm(transA: false, transB: true, m: n, n: r, k: inFeatures, alpha: 1, a: x, lda: inFeatures,
                           b: a.baseAddress!, ldb: inFeatures, beta: 0, c: u.baseAddress!, ldc: r)
                }
            }
            u.withUnsafeBufferPointer { u in
                pair.b.withUnsafeBufferPointer { b in
                    T.gemm(transA: false, transB: true, m: n, n: outFeatures, k: r, alpha: scale, a: u.baseAddress!, lda: r,
                           b: b.baseAddress!, ldb: r, beta: 1, c: y, ldc: outFeatures)
                }
            }
            saved.append(u)
        }
    }

    /// dx (= or += when `accumulate`) = dy·W + Σ sᵢ·(dy·Bᵢ)·Aᵢ;  for trainable pairs:
    /// dBᵢ += sᵢ·dyᵀ·uᵢ,  dAᵢ += sᵢ·(dy·Bᵢ)ᵀ·x.
    static func backward<T: KernelScalar>(dy: UnsafePointer<T>, x: UnsafePointer<T>, n: Int, inFeatures: Int,
                                          outFeatures: Int, weight: UnsafePointer<T>, adapters: WeightAdapters<T>,
                                          saved: [[T]], dx: UnsafeMutablePointer<T>?, accumulate: Bool) {
        if let dx {
            T.gemm(transA: false, transB: false, m: n, n: inFeatures, k: outFeatures, alpha: 1, a: dy, lda: outFeatures,
                   b: weight, ldb: inFeatures, beta: accumulate ? 1 : 0, c: dx, ldc: inFeatures)
        }
        for (index, (pair, scale, trainable)) in adapters.pairs.enumerated() {
            let r = pair.rank
            var dyB = [T](repeating: 0, count: n * r)  // dy·B [n, r]
            pair.b.withUnsafeBufferPointer { b in
                dyB.withUnsafeMutableBufferPointer { t in
                    T.gemm(transA: false, transB: false, m: n, n: r, k: outFeatures, alpha: 1, a: dy, lda: outFeatures,
                           b: b.baseAddress!, ldb: r, beta: 0, c: t.baseAddress!, ldc: r)
                }
            }
            dyB.withUnsafeBufferPointer { t in
                if let dx {
                    pair.a.withUnsafeBufferPointer { a in
                        T.gemm(transA: false, transB: false, m: n, n: inFeatures, k: r, alpha: scale, a: t.baseAddress!,
                               lda: r, b: a.baseAddress!, ldb: inFeatures, beta: 1, c: dx, ldc: inFeatures)
                    }
                }
                if trainable {
                    pair.gradA.withUnsafeMutableBufferPointer { ga in
                        T.gemm(transA: true, transB: false, m: r, n: inFeatures, k: n, alpha: scale, a: t.baseAddress!,
                               lda: r, b: x, ldb: inFeatures, beta: 1, c: ga.baseAddress!, ldc: inFeatures)
                    }
                }
            }
            if trainable {
                saved[index].withUnsafeBufferPointer { u in
                    pair.gradB.withUnsafeMutableBufferPointer { gb in
                        T.gemm(transA: true, transB: false, m: outFeatures, n: r, k: n, alpha: scale, a: dy, lda: outFeatures,
                               b: u.baseAddress!, ldb: r, beta: 1, c: gb.baseAddress!, ldc: r)
                    }
                }
            }
        }
    }
}
