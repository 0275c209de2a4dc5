import Kernels

/// Errors about adapters; each description is one line naming the file or tensor.
public enum LoRAError: Error, CustomStringConvertible, Equatable {
    case shape(tensor: String, reason: String)
    case mismatch(String)
    case format(path: String, reason: String)
    case unsupported(String)

    public var description: String {
        switch self {
        case let .shape(tensor, reason): return "LoRA tensor '\(tensor)': \(reason)"
        case let .mismatch(reason): return reason
        case let .format(path, reason): return "\(path): \(reason)"
        case let .unsupported(reason): return reason
        }
    }
}

/// One adapted weight: y = x·Wᵀ + scale · (x·Aᵀ)·Bᵀ.
///
/// Shapes: a [rank, inFeatures]; b [outFeatures, rank]; the gradients have the same shapes.
/// For `token_embd` the "input" is the one-hot token (inFeatures = vocabulary) and the output the embedding.
public final class LoRAPair<T: KernelScalar>: @unchecked Sendable {
    public let name: String
    public let rank: Int
    public let inFeatures: Int
    public let outFeatures: Int
    public var scale: T
    public var a: [T]
    public var b: [T]
    public var gradA: [T]
    public var gradB: [T]

    public init(name: String, rank: Int, inFeatures: Int, outFeatures: Int, scale: T, a: [T], b: [T]) throws {
        guard rank > 0, a.count == rank * inFeatures, b.count == outFeatures * rank else {
            throw LoRAError.shape(tensor: name, reason: "A has \(a.count) and B \(b.count) values; expected \(rank)×\(inFeatures) and \(outFeatures)×\(rank)")
        }
        self.name = name
        self.rank = rank
        self.inFeatures = inFeatures
        self.outFeatures = outFeatures
        self.scale = scale
        self.a = a
        self.b = b
        gradA = [T](repeating: 0, count: a.count)
        gradB = [T](repeating: 0, count: b.count)
    }

    public func zeroGradients() {
        for i in gradA.indices { gradA[i] = 0 }
        for i in gradB.indices { gradB[i] = 0 }
    }

    public var parameterCount: Int { a.count + b.count }

    /// ‖ΔW‖ (Frobenius) without forming ΔW: ‖s·B·A‖² = s²·Σᵢⱼ (BᵀB)ᵢⱼ·(A·Aᵀ)ᵢⱼ, two r × r products.
    public func deltaNorm(multiplier: Double = 1) -> Double {
        let r = rank
        var btb = [Double](repeating: 0, count: r * r), aat = btb
        for i in 0..<r {
            for j in 0..<r {
                var x = 0.0, y = 0.0
                for o in 0..<outFeatures { x += Double(b[o * r + i]) * Double(b[o * r + j]) }
                for k in 0..<inFeatures { y += Double(a[i * inFeatures + k]) * Double(a[j * inFeatures + k]) }
                btb[i * r + j] = x
                aat[i * r + j] = y
            }
        }
        let s = multiplier * Double(scale)
        return abs(s) * max(0, zip(btb, aat).reduce(0) { $0 + $1.0 * $1.1 }).squareRoot()
    }

    /// ΔW = multiplier · scale · B·A [out, in]: what merging adds to the base weight (the same rule as the
    /// runtime product, folded).
    public func delta(multiplier: T = 1) -> [T] {
        var delta = [T](repeating: 0, count: outFeatures * inFeatures)
        T.gemm(transA: false, transB: false, m: outFeatures, n: inFeatures, k: rank, alpha: multiplier * scale, a: b,
               lda: rank, b: a, ldb: inFeatures, beta: 0, c: &delta, ldc: inFeatures)
        return delta
    }
}

/// A set of LoRA pairs keyed by base tensor name (`blk.3.attn_q`, `output`, `token_embd`).
public final class LoRAAdapter<T: KernelScalar>: @unchecked Sendable {
    public private(set) var pairs: [String: LoRAPair<T>] = [:]
    /// Names in a fixed order (layers ascending, then targets in declaration order) for optimizer state.
    public private(set) var order: [String] = []

    public init() {}

    public func add(_ pair: LoRAPair<T>) {
        if pairs.updateValue(pair, forKey: pair.name) == nil { order.append(pair.name) }
    }

    public subscript(name: String) -> LoRAPair<T>? { pairs[name] }

    public var parameterCount: Int { pairs.values.reduce(0) { $0 + $1.parameterCount } }

    public func zeroGradients() { for p in pairs.values { p.zeroGradients() } }

    /// Kaiming-uniform A (bound 1/√in, as PEFT) and zero B for every target of every layer.
    public static func initialized(layers: Int, shapes: (LoRATarget) -> (in: Int, out: Int)?, targets: [LoRATarget],
                                   rank: (LoRATarget) -> Int, alpha: Float, rsLoRA: Bool,
                                   seed: UInt64) throws -> LoRAAdapter<T> {
        let adapter = LoRAAdapter<T>()
        var rng = SplitMix(seed: seed)
        let names: [(String, LoRATarget)] = (0..<layers).flatMap { l in
            targets.filter(\.isPerLayer).map { ($0.baseName(layer: l), $0) }
        } + targets.filter { !$0.isPerLayer }.map { ($0.baseName(layer: nil), $0) }
        for (name, target) in names {
            guard let (inF, outF) = shapes(target) else { continue }
            let r = rank(target)
            let bound = 1 / Double(inF).squareRoot()
            let a = (0..<(r * inF)).map { _ in T((rng.nextUnit() * 2 - 1) * bound) }
            adapter.add(try LoRAPair(name: name, rank: r, inFeatures: inF, outFeatures: outF,
                                 scale: T(loraScale(alpha: alpha, rank: r, rsLoRA: rsLoRA)),
                                 a: a, b: [T](repeating: 0, count: outF * r)))
        }
        return adapter
    }
}

/// SplitMix64: small, fast and reproducible across platforms.
public struct SplitMix: RandomNumberGenerator, Sendable {
    public var state: UInt64
    public init(seed: UInt64) { state = seed }
    public mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
    /// Uniform in [0, 1).
    public mutating func nextUnit() -> Double { Double(next() >> 11) / Double(1 << 53) }
}
