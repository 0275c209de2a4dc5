import CKernels
import Kernels

/// The precision a run asks for its frozen-weight products (`--precision`), and what it gets on this CPU.
///
/// `fp32` computes them in float32. `bf16` rounds their operands to bf16 and runs them on the CPU's bf16
/// instructions (AVX512-BF16, AMX), and attention's products too (`Attention.bf16Products`); a CPU without them runs
/// float32 instead and the resolution says so. `auto`
/// chooses bf16 only where the CPU has bf16 products and they measure faster than float32 on a product of the
/// model's shape; bf16's cost in accuracy is measured in BENCHMARKS.md ("What bf16 would cost in accuracy").
public enum ProductPrecision: String, Sendable, CaseIterable, Codable {
    case fp32, bf16, auto

    /// What a run of this precision computes here.
    public struct Resolution: Sendable, Equatable {
        public var inputs: FrozenProductInputs
        /// One line for the plan: what runs, and why when it is not what was asked.
        public var note: String
        public init(inputs: FrozenProductInputs, note: String) {
            self.inputs = inputs
            self.note = note
        }

        /// What the products multiply whatever the CPU (`TrainingConfiguration.frozenProductInputs`): bf16 without
        /// bf16 products is bf16's numbers computed in float32.
        public static func forced(_ inputs: FrozenProductInputs) -> Resolution {
            Resolution(inputs: inputs, note: inputs == .bf16 && !BFloat16GEMM.isAvailable
                       ? "bf16 operands computed in float32 (no bf16 products here)" : inputs.rawValue)
        }
    }

    /// Resolves against this CPU for `model` (its shape times `auto`'s product) and sets what the model's batched
    /// frozen-weight products multiply; returns the resolution for the caller to report.
    @discardableResult
    public func apply(to model: LlamaModel<Float>) -> Resolution {
        let resolution = resolved(embedding: model.config.embedding, hidden: model.config.feedForward)
        model.frozenProductInputs = resolution.inputs
        return resolution
    }

    /// Where attention's products run in bf16 (`Attention.bf16Products`).
    var attentionProducts: String {
        BFloat16GEMM.tileKernels ? "attention's on AVX512-BF16" : "attention's on bf16-rounded operands in float32"
    }

    /// Resolves against this CPU; `embedding` and `hidden` give a product of the model's shape for `auto`'s timing.
    public func resolved(embedding: Int, hidden: Int) -> Resolution {
        switch self {
        case .fp32:
            return Resolution(inputs: .float32, note: "float32")
        case .bf16:
            guard let engine = BFloat16GEMM.engine else {
                return Resolution(inputs: .float32, note: "float32: bf16 was asked for, but \(BFloat16GEMM.unavailableReason ?? "it is not available"); running float32")
            }
            return Resolution(inputs: .bf16, note: "bf16 products on \(engine), \(attentionProducts), float32 accumulation")
        case .auto:
            guard let engine = BFloat16GEMM.engine else {
                return Resolution(inputs: .float32, note: "float32 (auto: \(BFloat16GEMM.unavailableReason ?? "no bf16 products"))")
            }
            let timing = BFloat16GEMM.compareWithFloat32(m: 256, n: hidden, k: embedding)
            let figures = String(format: "%.0f vs %.0f GFLOP/s on 256 × %d × %d", timing.bf16, timing.float32, hidden, embedding)
            return timing.bf16 > timing.float32
                ? Resolution(inputs: .bf16, note: "bf16 products on \(engine), \(attentionProducts) (auto: \(figures))")
                : Resolution(inputs: .float32, note: "float32 (auto: bf16 is not faster here, \(figures))")
        }
    }
}
