import GGUF
import Kernels

/// llama.cpp's LoRA adapter GGUF (`general.type = adapter`, `adapter.type = lora`):
/// `<base>.weight.lora_a` ne [in, r] (our A [r, in]) and `<base>.weight.lora_b` ne [r, out] (our B [out, r]);
/// for `token_embd` A and B are flipped: lora_a ne [r, vocabulary] holds Aᵀ, lora_b ne [r, embedding] holds B.
/// Scale per tensor: alpha / r (alpha = 0 or absent means scale 1, as llama.cpp).
public enum AdapterFile {
    /// Everything an adapter file says, beside its tensors.
    public struct Info: Sendable {
        public var architecture: String
        public var alpha: Float
        public var metadata: Metadata
    }

    /// Reads an adapter; every tensor pair is checked for consistent shapes.
    public static func read<T: KernelScalar>(path: String, as: T.Type = T.self) throws -> (LoRAAdapter<T>, Info) {
        let file = try GGUFFile(path: path)
        let md = file.metadata
        guard try md.stringIfPresent("general.type") == "adapter" else {
            if md["training.type"] != nil || file.tensors.contains(where: { $0.name.hasSuffix(".loraA") }) {
                throw LoRAError.format(path: path, reason: "this is a training checkpoint of the 2023 finetune, not an adapter: convert it with `lorakit convert`")
            }
            throw LoRAError.format(path: path, reason: "not a LoRA adapter (general.type is not 'adapter')")
        }
        guard try md.stringIfPresent("adapter.type") == "lora" else {
            throw LoRAError.format(path: path, reason: "adapter.type is not 'lora'")
        }
        let arch = try md.stringIfPresent("general.architecture") ?? ""
        let alpha = try md.floatIfPresent("adapter.lora.alpha") ?? 0
        guard alpha.isFinite, alpha >= 0 else {
            throw LoRAError.format(path: path, reason: "adapter.lora.alpha = \(alpha) must be a finite, non-negative number")
        }
        var halves: [String: (a: TensorInfo?, b: TensorInfo?)] = [:]
        for t in file.tensors {
            let base: String, isA: Bool
            if t.name.hasSuffix(".weight.lora_a") { base = String(t.name.dropLast(".weight.lora_a".count)); isA = true }
            else if t.name.hasSuffix(".weight.lora_b") { base = String(t.name.dropLast(".weight.lora_b".count)); isA = false }
            else { throw LoRAError.format(path: path, reason: "tensor '\(t.name)' has an unexpected name (expected <base>.weight.lora_a / .lora_b)") }
            if base.hasSuffix("_norm") { continue }  // norm deltas have no runtime LoRA form (llama.cpp skips them)
            var entry = halves[base] ?? (nil, nil)
            if isA { entry.a = t } else { entry.b = t }
            halves[base] = entry
        }
        let adapter = LoRAAdapter<T>()
        for base in halves.keys.sorted(by: AdapterFile.tensorOrder) {
            guard let ta = halves[base]!.a, let tb = halves[base]!.b else {
                throw LoRAError.format(path: path, reason: "tensor '\(base).weight' has only one of lora_a and lora_b")
            }
            guard ta.dimensions.count == 2, tb.dimensions.count == 2 else {
                throw LoRAError.format(path: path, reason: "LoRA tensors of '\(base)' must be 2-D")
            }
            let a = try file.floats(of: ta), b = try file.floats(of: tb)
            let pair: LoRAPair<T>
            if base == "token_embd" {
                let r = ta.dimensions[0], vocab = ta.dimensions[1], embd = tb.dimensions[1]
                guard tb.dimensions[0] == r else {
                    throw LoRAError.format(path: path, reason: "token_embd: lora_a ne \(ta.dimensions) and lora_b ne \(tb.dimensions) disagree on the rank")
                }
                var at = [T](repeating: 0, count: r * vocab)
                for v in 0..<vocab { for j in 0..<r { at[j * vocab + v] = T(a[v * r + j]) } }
                pair = try LoRAPair(name: base, rank: r, inFeatures: vocab, outFeatures: embd,
                                    scale: T(loraScale(alpha: alpha, rank: r)), a: at, b: b.map { T($0) })
            } else {
                let inF = ta.dimensions[0], r = ta.dimensions[1], outF = tb.dimensions[1]
                guard tb.dimensions[0] == r else {
                    throw LoRAError.format(path: path, reason: "'\(base)': lora_a ne \(ta.dimensions) and lora_b ne \(tb.dimensions) disagree on the rank (lora_a must be ne [in, r]; files of the 2023 finetune need `lorakit convert`)")
                }
                pair = try LoRAPair(name: base, rank: r, inFeatures: inF, outFeatures: outF,
                                    scale: T(loraScale(alpha: alpha, rank: r)), a: a.map { T($0) }, b: b.map { T($0) })
            }
            adapter.add(pair)
        }
        return (adapter, Info(architecture: arch, alpha: alpha, metadata: md))
    }

    /// Layers ascending, then the rest by name, so optimizer state and files have a stable order.
    public static func tensorOrder(_ x: String, _ y: String) -> Bool {
        func key(_ s: String) -> (Int, String) {
            if s.hasPrefix("blk."), let dot = s.dropFirst(4).firstIndex(of: "."), let n = Int(s[s.index(s.startIndex, offsetBy: 4)..<dot]) {
                return (n, String(s[dot...]))
            }
            return (Int.max, s)
        }
        let (a, b) = (key(x), key(y))
        return a.0 != b.0 ? a.0 < b.0 : a.1 < b.1
    }
}
