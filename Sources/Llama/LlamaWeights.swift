import GGUF
import Kernels
import LoRA

/// The base weights of a model, kept as the file has them (memory-mapped, quantized) and dequantized layer by
/// layer when needed; `cacheAll` keeps every dequantized weight instead (faster, more memory).
final class LlamaWeights<T: KernelScalar>: @unchecked Sendable {
    let file: GGUFFile
    let config: LlamaConfig
    let cacheAll: Bool
    private var cache: [String: [T]] = [:]
    private var denseHead: [T]?
    /// Weights kept as bf16 (the head always, every weight when `cacheAll`), when products run in bf16.
    private var bf16Cache: [String: [UInt16]] = [:]
    let outputNorm: [T]
    /// What the frozen products of the linear weights made here multiply.
    var productInputs: FrozenProductInputs = .float32

    /// Whether dense weights are kept in bf16 for the CPU's bf16 products (bf16 inputs on a CPU that has them).
    var keepsBF16Weights: Bool { productInputs == .bf16 && T.self == Float.self && BFloat16GEMM.isAvailable }

    init(file: GGUFFile, config: LlamaConfig, cacheAll: Bool) throws {
        self.file = file
        self.config = config
        self.cacheAll = cacheAll
        outputNorm = try LlamaWeights.load(file, "output_norm.weight")
    }

    /// The tensor `name`, which must be of a type that converts to float.
    static func dequantizable(_ file: GGUFFile, _ name: String) throws -> TensorInfo {
        let info = try file.requireTensor(name)
        guard info.type.isDequantizable else {
            throw GGUFError.badTensor(path: file.path, tensor: name, reason: "type \(info.type) cannot be converted to float")
        }
        return info
    }

    static func load(_ file: GGUFFile, _ name: String) throws -> [T] {
        let info = try dequantizable(file, name)
        let rowLength = info.dimensions.first ?? 1
        return converted(Dequantize.onAllThreads(info.type, from: file.data(of: info), rowLength: rowLength,
                                                 rows: [0..<(info.elementCount / max(1, rowLength))]))
    }

    static func converted(_ floats: [Float]) -> [T] {
        if T.self == Float.self { return unsafeBitCast(floats, to: [T].self) }  // no per-element cast
        return floats.map { T($0) }
    }

    /// A whole weight by tensor name, dequantized (from the cache when `cacheAll`).
    func tensor(_ name: String) throws -> [T] {
        if let cached = cache[name] { return cached }
        let values = try LlamaWeights.load(file, name)
        if cacheAll { cache[name] = values }
        return values
    }

    /// The tensor the head reads: `output.weight`, or `token_embd.weight` when the head is tied.
    var headTensorName: String { config.tiedEmbeddings ? "token_embd.weight" : "output.weight" }

    /// A linear weight with its adapters: dequantized, or (`rowProducts` given) read in place from the file.
    func linear(_ base: String, in inF: Int, out outF: Int, tensor: String? = nil, adapters: WeightAdapters<T>,
                rowProducts: RowProducts?, bias: Bool = false) throws -> LinearWeight<T> {
        let tensorName = tensor ?? base + ".weight"
        let source: LinearWeight<T>.Source
        if let products = rowProducts {
            let info = try file.requireTensor(tensorName)
            source = .rows(type: info.type, data: file.data(of: info), products: products)
        } else if keepsBF16Weights {
            source = .bf16(try bf16Tensor(tensorName))
        } else if tensorName == headTensorName {
            source = .dense(try head())
        } else {
            source = .dense(try self.tensor(tensorName))
        }
        return LinearWeight(name: base, inFeatures: inF, outFeatures: outF, source: source, adapters: adapters,
                            bias: bias ? try self.tensor(base + ".bias") : nil, productInputs: productInputs)
    }

    /// The head [vocabulary, embedding], dequantized once: every batch uses all of it.
    func head() throws -> [T] {
        if let denseHead { return denseHead }
        let values = try LlamaWeights.load(file, headTensorName)
        denseHead = values
        return values
    }

    /// A whole weight rounded to bf16: dequantized to float32 `bf16RoundingChunk` values at a time and rounded.
    func bf16Tensor(_ name: String) throws -> [UInt16] {
        if let cached = bf16Cache[name] { return cached }
        let info = try LlamaWeights<Float>.dequantizable(file, name)
        let rowLength = max(1, info.dimensions.first ?? 1), rows = info.elementCount / rowLength
        let chunkRows = max(1, LlamaConfig.bf16RoundingChunk / rowLength), data = file.data(of: info)
        let bits = [UInt16](unsafeUninitializedCapacity: rows * rowLength) { out, initialized in
            for start in stride(from: 0, to: rows, by: chunkRows) {
                let range = start..<min(rows, start + chunkRows)
                let floats = Dequantize.onAllThreads(info.type, from: data, rowLength: rowLength, rows: [range])
                floats.withUnsafeBufferPointer {
                    BFloat16GEMM.round($0.baseAddress!, count: $0.count, into: out.baseAddress! + start * rowLength)
                }
            }
            initialized = rows * rowLength
        }
        if cacheAll || name == headTensorName { bf16Cache[name] = bits }
        return bits
    }

    /// Rows `ranges` of the head as a dense source (bf16 when `keepsBF16Weights`).
    func headRowsSource(_ ranges: [Range<Int>]) throws -> LinearWeight<T>.Source {
        let rows = try headRows(ranges)
        guard keepsBF16Weights else { return .dense(rows) }
        return .bf16(rows.withUnsafeBufferPointer {
            BFloat16GEMM.rounded(UnsafeRawPointer($0.baseAddress!).assumingMemoryBound(to: Float.self), count: $0.count)
        })
    }

    /// Rows `ranges` of the head, one after the other [Σ count, embedding], dequantized (a chunk of the vocabulary,
    /// or single rows).
    func headRows(_ ranges: [Range<Int>]) throws -> [T] {
        let info = try file.requireTensor(headTensorName)
        return LlamaWeights.converted(Dequantize.onAllThreads(info.type, from: file.data(of: info), rowLength: config.embedding, rows: ranges))
    }

    /// Block `l`'s weights, each linear bound to its adapters.
    func block(_ l: Int, adapters: (String) -> WeightAdapters<T>, rowProducts: RowProducts?) throws -> BlockWeights<T> {
        func linear(_ target: LoRATarget) throws -> LinearWeight<T> {
            let name = target.baseName(layer: l), (inF, outF) = config.features(of: target)!
            let biased = config.attentionBias && [.attnQ, .attnK, .attnV].contains(target)
            return try self.linear(name, in: inF, out: outF, adapters: adapters(name), rowProducts: rowProducts, bias: biased)
        }
        let p = "blk.\(l)."
        let qkv: LinearGroup<T> = config.fusedQKV
            ? .fused(try linear(.attnQKV), widths: [config.qDim, config.kvDim, config.kvDim])
            : .separate([try linear(.attnQ), try linear(.attnK), try linear(.attnV)])
        let gateUp: LinearGroup<T> = config.fusedGateUp
            ? .fused(try linear(.ffnUp), widths: [config.feedForward, config.feedForward])
            : .separate([try linear(.ffnGate), try linear(.ffnUp)])
        var w = BlockWeights(
            attnNorm: try tensor(p + "attn_norm.weight"), ffnNorm: try tensor(p + "ffn_norm.weight"),
            qkv: qkv, gateUp: gateUp, o: try linear(.attnOutput), down: try linear(.ffnDown))
        if config.qkNorm { (w.qNorm, w.kNorm) = (try tensor(p + "attn_q_norm.weight"), try tensor(p + "attn_k_norm.weight")) }
        if config.postNorms {
            w.postAttentionNorm = try tensor(p + "post_attention_norm.weight")
            w.postFeedForwardNorm = try tensor(p + "post_ffw_norm.weight")
        }
        return w
    }

    /// Embedding rows of `tokens` [N, embedding]; ids out of range are an error naming the id.
    func embeddings(_ tokens: [Int32]) throws -> [T] {
        let info = try file.requireTensor("token_embd.weight")
        let data = file.data(of: info)
        let c = config.embedding
        var rows = [Float](repeating: 0, count: c)
        var out = [T](repeating: 0, count: tokens.count * c)
        for (n, token) in tokens.enumerated() {
            guard token >= 0, Int(token) < config.vocabulary else {
                throw ModelError.invalidInput("token id \(token) is outside the vocabulary (0..<\(config.vocabulary))")
            }
            rows.withUnsafeMutableBufferPointer {
                Dequantize.rows(info.type, from: data, rowLength: c, rows: Int(token)..<(Int(token) + 1), into: $0.baseAddress!)
            }
            for j in 0..<c { out[n * c + j] = T(rows[j]) }
        }
        return out
    }
}

extension Dequantize {
    /// Rows `ranges` of a 2-D tensor, one range after the other, as floats [Σ count, rowLength], dequantized by all
    /// threads into memory that is not zeroed first (serial and zeroed, this was 4.6 s of a 1B model's 30 s step).
    static func onAllThreads(_ type: TensorType, from data: UnsafeRawBufferPointer, rowLength: Int, rows ranges: [Range<Int>]) -> [Float] {
        // Where each range starts among the output rows.
        let starts = ranges.reduce(into: [0]) { $0.append($0.last! + $1.count) }
        let total = starts.last!, count = total * rowLength
        return [Float](unsafeUninitializedCapacity: count) { out, initialized in
            Parallel.forEachRange(total, minimumPerThread: max(1, (1 << 16) / max(1, rowLength))) { part in
                for (r, range) in ranges.enumerated() {
                    let lo = max(part.lowerBound, starts[r]), hi = min(part.upperBound, starts[r + 1])
                    guard lo < hi else { continue }
                    Dequantize.rows(type, from: data, rowLength: rowLength,
                                    rows: (range.lowerBound + lo - starts[r])..<(range.lowerBound + hi - starts[r]),
                                    into: out.baseAddress! + lo * rowLength)
                }
            }
            initialized = count
        }
    }
}
