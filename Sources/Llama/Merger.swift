import GGUF
import Kernels
import LoRA

/// Merges adapters into a base model: W' = W + Σ mᵢ·ΔWᵢ (ΔW = s·B·A, `LoRAPair.delta`), plus the norm deltas of
/// the 2023 finetune's files, written as a new GGUF with every other tensor and all metadata copied.
public struct Merger {
    /// An adapter to merge with its multiplier.
    public struct Input {
        public var adapter: LoRAAdapter<Float>
        public var multiplier: Float
        public var normDeltas: [(String, [Float])]
        public init(adapter: LoRAAdapter<Float>, multiplier: Float = 1, normDeltas: [(String, [Float])] = []) {
            self.adapter = adapter
            self.multiplier = multiplier
            self.normDeltas = normDeltas
        }
    }

    public struct Result: Sendable {
        /// Tensors that were changed.
        public var mergedTensors: Int
        /// Tensors whose rows are not whole blocks of the requested type, and the type written instead.
        public var fallbacks: [(tensor: String, requested: TensorType, rowLength: Int, written: TensorType)]
    }

    /// How merged tensors are stored (untouched ones are copied as they are).
    public enum Storage: Equatable, Sendable {
        /// Float tensors keep their type; quantized ones are written as F16, as llama.cpp's llama-export-lora writes
        /// them: the merged model computes what base + adapter computes. Requantizing into a 4- or 5-bit base type
        /// rounds most of a small adapter away (BENCHMARKS.md: a Qwen2.5 adapter's held-out perplexity 3.29 at run
        /// time, 3.29 merged this way, 3.96 requantized, base 4.05).
        case widened
        /// Each tensor requantized into its base type, the file's size kept.
        case keep
        /// Every merged tensor as this type.
        case type(TensorType)
    }

    public var storage: Storage

    public init(storage: Storage = .widened) throws {
        if case let .type(t) = storage, !Quantize.supportedTypes.contains(t) {
            throw ModelError.invalidInput("merged tensors cannot be written as \(t.name); supported: "
                                          + Quantize.supportedTypes.map(\.name).joined(separator: ", "))
        }
        self.storage = storage
    }

    /// Every merged tensor as `outputType`; nil keeps each tensor's own type (`.keep`).
    public init(outputType: TensorType?) throws {
        try self.init(storage: outputType.map { .type($0) } ?? .keep)
    }

    /// The type a merged tensor of base type `base` is written in, before any fallback.
    public func outputType(for base: TensorType) -> TensorType {
        switch storage {
        case .widened: return [.f32, .f16, .bf16].contains(base) ? base : .f16
        case .keep: return base
        case let .type(t): return t
        }
    }

    /// What llama-quantize writes where rows are not whole blocks of `type` (`tensor_type_fallback`): a 32-value
    /// type near it (Q2_K, Q3_K → Q4_0, Q4_K → Q5_0, Q5_K → Q5_1, Q6_K → Q8_0), F16 where even that does not fit.
    public static func fallback(for type: TensorType, rowLength: Int) -> TensorType {
        let near: [TensorType: TensorType] = [.q2_K: .q4_0, .q3_K: .q4_0, .q4_K: .q5_0, .q5_K: .q5_1, .q6_K: .q8_0]
        if let t = near[type], rowLength % t.blockSize == 0 { return t }
        return .f16
    }

    /// `general.file_type` of a model whose tensors are mostly `type` (llama.cpp's numbering; a K-quant throughout
    /// is its "_S" mix).
    static func fileType(_ type: TensorType) -> UInt32? {
        [.f32: 0, .f16: 1, .q4_0: 2, .q4_1: 3, .q8_0: 7, .q5_0: 8, .q5_1: 9, .q2_K: 10, .q3_K: 11, .q4_K: 14, .q5_K: 16,
         .q6_K: 18, .bf16: 32][type]
    }

    /// Merges `inputs` into `model`'s weights and writes the result to `path` (temporary file, then rename).
    public func merge(model: LlamaModel<Float>, inputs: [Input], to path: String) throws -> Result {
        let base = model.weights.file
        try OutputGuard.check(outputs: [OutputGuard.File("the merged model", path)], inputs: [OutputGuard.File("the model", base.path)])
        for input in inputs { try model.validate(input.adapter, source: "adapter") }
        var writer = GGUFWriter(metadata: base.metadata)
        writer.metadata.remove("general.alignment")
        // A head adapter on a tied model needs its own output.weight: token_embd plus the delta.
        let untieHead = model.config.tiedEmbeddings && inputs.contains { $0.adapter["output"] != nil }
        var names = base.tensors.map(\.name)
        if untieHead, let i = names.firstIndex(of: "output_norm.weight") { names.insert("output.weight", at: i + 1) }
        var result = Result(mergedTensors: 0, fallbacks: [])
        for name in names {
            let baseName = String(name.dropLast(".weight".count))
            let isNewHead = untieHead && name == "output.weight"
            let info = try base.requireTensor(isNewHead ? "token_embd.weight" : name)
            let pairs = inputs.compactMap { i in i.adapter[baseName].map { ($0, i.multiplier) } }
            let norms = inputs.compactMap { i in i.normDeltas.first { $0.0 == baseName }.map { ($0.1, i.multiplier) } }
            if pairs.isEmpty && norms.isEmpty && !isNewHead {
                try writer.addTensor(name: name, type: info.type, dimensions: info.dimensions, bytes: Array(base.data(of: info)))
                continue
            }
            guard info.type.isDequantizable else {
                throw ModelError.invalidInput("\(base.path): tensor \(info.name) of type \(info.type.name) cannot be merged into")
            }
            // [rows, cols] = [out, in], dequantized by all threads
            var w = Dequantize.onAllThreads(info.type, from: base.data(of: info), rowLength: info.rowLength,
                                            rows: [0..<(info.elementCount / info.rowLength)])
            for (pair, multiplier) in pairs { Merger.add(pair.delta(multiplier: multiplier), of: pair, to: &w, cols: info.rowLength) }
            for (d, multiplier) in norms where d.count == w.count { for i in 0..<w.count { w[i] += multiplier * d[i] } }
            var type = outputType(for: info.type)
            if !Quantize.supportedTypes.contains(type) || info.rowLength % type.blockSize != 0 {
                let fallback = Merger.fallback(for: type, rowLength: info.rowLength)
                result.fallbacks.append((name, type, info.rowLength, fallback))
                type = fallback
            }
            if info.dimensions.count == 1 { type = .f32 }
            try writer.addTensor(name: name, type: type, dimensions: info.dimensions,
                                 bytes: Merger.quantizedOnAllThreads(w, rowLength: info.rowLength, to: type))
            result.mergedTensors += 1
        }
        if case let .type(t) = storage, let code = Merger.fileType(t) { writer.metadata.set("general.file_type", .uint32(code)) }
        try writer.write(to: path)
        return result
    }

    /// `values` [rows, rowLength] as `type`, the rows split over the pool's threads (a K-quant of a 7B model's
    /// weights takes minutes on one).
    static func quantizedOnAllThreads(_ values: [Float], rowLength: Int, to type: TensorType) throws -> [UInt8] {
        // What `Quantize.quantize` checks, checked once here so that no part can fail.
        guard Quantize.supportedTypes.contains(type), rowLength > 0, values.count % rowLength == 0,
              let rowBytes = type.byteCount(elements: rowLength) else {
            throw ModelError.invalidInput("\(values.count) values are not whole rows of \(rowLength) in \(type.name) blocks")
        }
        let rows = values.count / rowLength
        var out = [UInt8](repeating: 0, count: rows * rowBytes)
        values.withUnsafeBufferPointer { v in
            out.withUnsafeMutableBytes { o in
                Parallel.forEachRange(rows, minimumPerThread: max(1, (1 << 16) / rowLength)) { part in
                    let slice = UnsafeBufferPointer(rebasing: v[(part.lowerBound * rowLength)..<(part.upperBound * rowLength)])
                    guard let bytes = try? Quantize.quantize(slice, to: type) else { return }
                    bytes.withUnsafeBytes { o.baseAddress!.advanced(by: part.lowerBound * rowBytes).copyMemory(from: $0.baseAddress!, byteCount: $0.count) }
                }
            }
        }
        return out
    }

    /// w += ΔW. The embedding table is stored [vocabulary, embedding], the transpose of its pair's ΔW.
    static func add(_ delta: [Float], of pair: LoRAPair<Float>, to w: inout [Float], cols: Int) {
        if pair.name == LoRATarget.tokenEmbedding.rawValue {
            let rows = w.count / cols
            for v in 0..<rows { for e in 0..<cols { w[v * cols + e] += delta[e * pair.inFeatures + v] } }
        } else {
            for i in 0..<w.count { w[i] += delta[i] }
        }
    }
}
