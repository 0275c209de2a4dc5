import Kernels
import LoRA

extension LlamaModel {
    /// The (in, out) features a LoRA pair on base tensor `name` must have, or nil when the model has no such
    /// adaptable weight.
    public func expectedFeatures(of name: String) -> (in: Int, out: Int)? {
        for target in LoRATarget.allCases where config.features(of: target) != nil {
            if target.isPerLayer {
                for l in 0..<config.layers where target.baseName(layer: l) == name { return config.features(of: target) }
            } else if target.rawValue == name {
                return config.features(of: target)
            }
        }
        return nil
    }

    /// Checks that every pair of `adapter` fits this model and holds only finite values; the error names the first
    /// tensor that does not. An adapter with no tensor at all is an error too (it would change nothing).
    public func validate(_ adapter: LoRAAdapter<T>, source: String) throws {
        guard !adapter.order.isEmpty else { throw LoRAError.mismatch("\(source): the adapter has no LoRA tensors") }
        for name in adapter.order {
            let pair = adapter[name]!
            guard pair.scale.isFinite else { throw LoRAError.mismatch("\(source): LoRA tensor '\(name)' has a non-finite scale (alpha)") }
            if let bad = pair.a.firstIndex(where: { !$0.isFinite }) {
                throw LoRAError.mismatch("\(source): '\(name).lora_a' holds a non-finite value at index \(bad)")
            }
            if let bad = pair.b.firstIndex(where: { !$0.isFinite }) {
                throw LoRAError.mismatch("\(source): '\(name).lora_b' holds a non-finite value at index \(bad)")
            }
            guard let (inF, outF) = expectedFeatures(of: name) else {
                throw LoRAError.mismatch("\(source): LoRA tensor '\(name)' has no matching weight in the model (\(config.layers) layers)")
            }
            guard pair.inFeatures == inF, pair.outFeatures == outF else {
                throw LoRAError.mismatch("\(source): LoRA tensor '\(name)' maps \(pair.inFeatures) → \(pair.outFeatures) features, the model's weight maps \(inF) → \(outF)")
            }
        }
    }

    /// Applies `adapter` at run time with `multiplier` (after checking it fits).
    public func attach(_ adapter: LoRAAdapter<T>, multiplier: T = 1, trainable: Bool = false, source: String = "adapter") throws {
        guard multiplier.isFinite else { throw LoRAError.mismatch("\(source): the adapter's scale \(multiplier) is not a finite number") }
        try validate(adapter, source: source)
        adapters.append(AppliedAdapter(adapter, multiplier: multiplier, trainable: trainable))
    }
}

extension PEFT.Heads {
    /// The head counts and Q/K row order of a model (llama's GGUF rows are permuted, the others are not).
    public init(config: LlamaConfig) {
        self.init(heads: config.heads, kvHeads: config.kvHeads, permuted: config.ropeLayout == .adjacentPairs,
                  fusedGateUp: config.fusedGateUp)
    }
}
