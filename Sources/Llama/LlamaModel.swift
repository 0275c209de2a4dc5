#if canImport(Glibc)
import Glibc
#endif
import GGUF
import Kernels
import LoRA
import Tokenizer

/// A llama-architecture model: forward and backward with LoRA on frozen (possibly quantized) weights.
///
/// `T` is Float for real work; Double serves the gradient checks.
public final class LlamaModel<T: KernelScalar>: @unchecked Sendable {
    public private(set) var config: LlamaConfig
    let weights: LlamaWeights<T>
    /// RoPE frequencies of global layers and (Gemma) of sliding-window layers.
    private(set) var frequencies: [Double]
    private(set) var slidingFrequencies: [Double]?
    private var ropeFactors: [Float]?
    private var longContextFactors: [Float]?, shortContextFactors: [Float]?
    /// Adapters applied at run time (the trainable one included).
    public var adapters: [AppliedAdapter<T>] = []
    /// Keep only each layer's input in forward and recompute the layer in backward.
    public var gradientCheckpointing = false
    /// Rows of logits computed at once in the head (bounds the [rows, vocabulary] buffer).
    public var headChunkRows = LlamaConfig.headRows
    /// A head whose dequantized copy would exceed this many bytes (large vocabularies of large models: Llama 3 8B's
    /// is 2.1 GB) is never dequantized whole: it is read in chunks of `vocabularyChunk` rows from the file.
    public var denseHeadLimit = LlamaConfig.denseHeadLimit
    public var vocabularyChunk = LlamaConfig.vocabularyChunk
    /// Queries and keys per tile of the batched passes' attention (training, perplexity, prompts); 0: the plain
    /// path, which keeps the [T, T] probabilities (the reference the tiles are tested against).
    public var attentionTile = Attention<T>.defaultTile
    /// Whether dense weights are kept in bf16 for the CPU's bf16 products (bf16 inputs where the CPU has them).
    public var keepsBF16Weights: Bool { weights.keepsBF16Weights }

    /// What the frozen-weight products of batched passes multiply: float32, or bf16-rounded operands
    /// (`FrozenProductInputs`).
    public var frozenProductInputs: FrozenProductInputs {
        get { weights.productInputs }
        set { weights.productInputs = newValue }
    }

    /// Whether the head is computed chunk by chunk of vocabulary rows: always when its dequantized copy would pass
    /// `denseHeadLimit`, and in training when the head has no trainable adapter. Then one pass over the chunks gives
    /// the loss and dL/dh with each chunk's logits still in cache (SmolLM2: the head's products at 97 GFLOP/s against
    /// 82–88 over rows of the dense head, and no 113 MB dense copy; BENCHMARKS.md). A trainable head adapter needs
    /// each chunk's exact dlogits, two passes over the chunks, so that head stays dense when it fits.
    public var headIsChunked: Bool {
        config.chunksHead(valueBytes: MemoryLayout<T>.size, limit: denseHeadLimit, trainingWithFrozenHead:
            trainsFrozenHeadInChunks && adapters.contains { $0.trainable } && !adaptersFor("output").hasTrainable)
    }
    /// Set to false to train with a head that fits dense even without a trainable head adapter (comparisons).
    public var trainsFrozenHeadInChunks = true

    var vocabularyRanges: [Range<Int>] {
        stride(from: 0, to: config.vocabulary, by: vocabularyChunk).map { $0..<min(config.vocabulary, $0 + vocabularyChunk) }
    }
    /// Asked between layers; true stops the pass with `ModelError.cancelled` (a signal takes effect within a layer).
    public var isCancelled: () -> Bool = { false }

    func checkCancelled() throws { if isCancelled() { throw ModelError.cancelled } }

    public init(file: GGUFFile, cacheWeights: Bool = false) throws {
        LlamaModel.keepFreedMemory()
        let config = try LlamaConfig(file: file)
        self.config = config
        weights = try LlamaWeights(file: file, config: config, cacheAll: cacheWeights)
        func factors(_ name: String) throws -> [Float]? {
            guard let t = file.tensor(named: name) else { return nil }
            let f = try file.floats(of: t)
            guard f.count == config.ropeDimensions / 2 else {
                throw ModelError.badShape(path: file.path, tensor: t.name, found: t.dimensions, expected: [config.ropeDimensions / 2])
            }
            guard f.allSatisfy({ $0.isFinite && $0 > 0 }) else {
                throw ModelError.badValue(path: file.path, key: t.name, reason: "RoPE frequency factors must be finite and positive")
            }
            return f
        }
        ropeFactors = try factors("rope_freqs.weight")
        longContextFactors = try factors("rope_factors_long.weight")
        shortContextFactors = try factors("rope_factors_short.weight")
        frequencies = []
        computeFrequencies()
    }

    /// The context this model runs at (training rows, perplexity chunks, a generation's capacity), as llama.cpp's
    /// `n_ctx`: above the original context of a LongRoPE model it selects the long factors.
    public var runContext: Int? {
        didSet { if oldValue != runContext { computeFrequencies() } }
    }

    /// Per-dimension divisors of the frequencies: Llama 3.1's `rope_freqs`, or LongRoPE's long or short factors.
    var activeRopeFactors: [Float]? {
        if let ropeFactors { return ropeFactors }
        let long = (runContext ?? 0) > (config.ropeOriginalContext ?? config.contextLength)
        return (long ? longContextFactors : shortContextFactors) ?? shortContextFactors
    }

    private func computeFrequencies() {
        frequencies = RoPE<T>.frequencies(headDim: config.ropeDimensions, base: Double(config.ropeBase),
                                           scale: 1 / Double(config.ropeScale), factors: activeRopeFactors)
        slidingFrequencies = config.slidingRopeBase.map { RoPE<T>.frequencies(headDim: config.ropeDimensions, base: Double($0)) }
    }

    /// Checks that `tokenizer` (usually the model file's own) gives only ids the model has embeddings for.
    public func check(tokenizer: Tokenizer) throws {
        guard tokenizer.vocabulary.count <= config.vocabulary else {
            throw ModelError.badValue(path: weights.file.path, key: "tokenizer.ggml.tokens",
                                      reason: "\(tokenizer.vocabulary.count) tokens, but the model embeds only \(config.vocabulary)")
        }
    }

    /// Replaces hyperparameters read from the file (the finetune's --norm-rms-eps, --rope-freq-base and
    /// --rope-freq-scale; `ropeScale` is the linear scaling factor, 1/freq-scale).
    public func override(rmsEpsilon: Float? = nil, ropeBase: Float? = nil, ropeScale: Float? = nil) {
        if let e = rmsEpsilon { config.rmsEpsilon = e }
        if let b = ropeBase { config.ropeBase = b }
        if let s = ropeScale { config.ropeScale = s }
        computeFrequencies()
    }

    func adaptersFor(_ name: String) -> WeightAdapters<T> { WeightAdapters(name, adapters) }

    /// The block this model's architecture is made of.
    var blockDescription: BlockDescription { BlockDescription(config: config) }

    /// RoPE tables for a run of positions: one for global layers and, when the model has them, one for
    /// sliding-window layers (which use their own base).
    struct Rotations {
        let global: RoPE<T>
        let sliding: RoPE<T>?
    }

    func rotations(positions: [Int32]) -> Rotations {
        let (layout, d, m) = (config.ropeLayout, config.headDim, Double(config.ropeAttentionFactor))
        return Rotations(global: RoPE(positions: positions, frequencies: frequencies, layout: layout, headDim: d, magnitude: m),
                         sliding: slidingFrequencies.map { RoPE(positions: positions, frequencies: $0, layout: layout, headDim: d, magnitude: m) })
    }

    /// How layer `l` scores keys: the architecture's scale and cap, and its window on sliding layers.
    func scoring(layer l: Int) -> AttentionScoring<T> {
        AttentionScoring(scale: T(config.attentionScale ?? 1 / Float(config.headDim).squareRoot()),
                         softCap: config.attentionSoftCap.map { T($0) },
                         window: config.isSlidingLayer(l) ? config.slidingWindow : nil)
    }

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

    /// Block `l` at the given positions: dequantized weights, or (`rowProducts` given) weights read in place.
    func block(_ l: Int, rotations: Rotations, rowProducts: RowProducts? = nil) throws -> TransformerBlock<T> {
        let sliding = config.isSlidingLayer(l)
        return TransformerBlock(description: blockDescription, config: config,
                                weights: try weights.block(l, adapters: adaptersFor, rowProducts: rowProducts),
                                rope: sliding ? rotations.sliding ?? rotations.global : rotations.global,
                                scoring: scoring(layer: l))
    }

    /// The vocabulary head with its adapters (a tied head reads `token_embd` and takes `output` adapters).
    func head(rowProducts: RowProducts? = nil) throws -> LinearWeight<T> {
        try weights.linear("output", in: config.embedding, out: config.vocabulary, tensor: weights.headTensorName,
                           adapters: adaptersFor("output"), rowProducts: rowProducts)
    }

    /// The head restricted to the vocabulary rows `range`, dequantized, with its adapters sliced to match (their
    /// gradients go back through `WeightAdapters.addGradients`).
    func headSlice(_ range: Range<Int>) throws -> LinearWeight<T> {
        LinearWeight(name: "output", inFeatures: config.embedding, outFeatures: range.count,
                     source: try weights.headRowsSource([range]), adapters: try adaptersFor("output").slice(outputs: range),
                     productInputs: weights.productInputs)
    }

    /// The head restricted to the vocabulary rows `rows`, in that order.
    func headSlice(rows: [Int]) throws -> LinearWeight<T> {
        LinearWeight(name: "output", inFeatures: config.embedding, outFeatures: rows.count,
                     source: try weights.headRowsSource(rows.map { $0..<($0 + 1) }),
                     adapters: try adaptersFor("output").slice(outputs: rows), productInputs: weights.productInputs)
    }

    /// Token embeddings [N, C] with the embedding adapters applied, times the architecture's embedding scale.
    func embed(_ tokens: [Int32]) throws -> [T] {
        var x = try weights.embeddings(tokens)
        LinearLoRA.embeddingForward(tokens: tokens, adapters: adaptersFor("token_embd"), x: &x, embedding: config.embedding)
        if config.embeddingScale != 1 {
            let s = T(config.embeddingScale)
            for i in x.indices { x[i] *= s }
        }
        return x
    }

    /// Backward of `embed`: accumulates the embedding adapters' gradients from dL/dx [N, C].
    func embedBackward(tokens: [Int32], dx: [T]) {
        var d = dx
        if config.embeddingScale != 1 {
            let s = T(config.embeddingScale)
            for i in d.indices { d[i] *= s }
        }
        LinearLoRA.embeddingBackward(tokens: tokens, adapters: adaptersFor("token_embd"), dx: d, embedding: config.embedding)
    }

    /// What the batched pass keeps for backward: nothing, every block's activations, or only every block's input
    /// (gradient checkpointing: backward recomputes each block).
    enum Keep { case nothing, activations, inputs }

    /// Final hidden states [N, C] after the output norm for `batch` sequences of `length` tokens (token rows of
    /// each sequence contiguous), with what backward needs.
    func hidden(tokens: [Int32], batch: Int, length: Int, keep: Keep = .nothing)
        throws -> (x: [T], rstd: [T], hf: [T], activations: [BlockActivations<T>], inputs: [[T]]) {
        let n = tokens.count
        guard n == batch * length, n > 0 else {
            throw ModelError.invalidInput("batch of \(tokens.count) tokens is not \(batch) × \(length)")
        }
        var x = try embed(tokens)
        let rotations = causalRotations(tokens: n, length: length)
        var activations: [BlockActivations<T>] = [], inputs: [[T]] = []
        for l in 0..<config.layers {
            let kept = keep == .activations ? BlockActivations<T>() : nil
            try checkCancelled()
            if keep == .inputs { inputs.append(x) }
            x = try block(l, rotations: rotations).forward(x, attention: .causal(causalAttention(batch: batch, length: length, layer: l)),
                                                           keep: kept)
            if let kept { activations.append(kept) }
        }
        var hf = [T](repeating: 0, count: n * config.embedding)
        var rstd = [T](repeating: 0, count: n)
        RMSNorm.forward(x: x, weight: weights.outputNorm, y: &hf, rstd: &rstd, rows: n, cols: config.embedding,
                        eps: T(config.rmsEpsilon))
        return (x, rstd, hf, activations, inputs)
    }

    func causalRotations(tokens n: Int, length: Int) -> Rotations {
        rotations(positions: (0..<n).map { Int32($0 % length) })
    }

    /// The batched pass's attention of layer `layer`: tiled, unless `attentionTile` is 0; its products in bf16 when
    /// the frozen products are (the bf16 precision).
    func causalAttention(batch: Int, length: Int, layer: Int) -> Attention<T> {
        var attention = Attention<T>(batch: batch, length: length, heads: config.heads, kvHeads: config.kvHeads,
                                     headDim: config.headDim, scoring: scoring(layer: layer),
                                     tile: attentionTile(batch: batch, length: length))
        attention.bf16Products = frozenProductInputs == .bf16
        return attention
    }

    /// The tile of the batched pass's attention over `batch` rows of `length` tokens; nil: the plain path.
    public func attentionTile(batch: Int, length: Int) -> Int? { attentionTile > 0 ? attentionTile : nil }

    /// Logits [rows.count, V] for the rows `rows` of the final hidden states (soft-capped where the model caps).
    func headLogits(_ hf: UnsafePointer<T>, rows: Range<Int>, rowProducts: RowProducts? = nil) throws -> [T] {
        let x = hf + rows.lowerBound * config.embedding, m = rows.count, V = config.vocabulary
        var logits: [T]
        if rowProducts == nil && headIsChunked {
            logits = [T](repeating: 0, count: m * V)
            for range in vocabularyRanges {
                let part = try headSlice(range).forward(x, rows: m).y
                for r in 0..<m {
                    for j in 0..<range.count { logits[r * V + range.lowerBound + j] = part[r * range.count + j] }
                }
            }
        } else {
            logits = try head(rowProducts: rowProducts).forward(x, rows: m).y
        }
        capLogits(&logits)
        return logits
    }

    /// Final-logit soft-capping (Gemma 2): z ← c·tanh(z/c).
    func capLogits(_ logits: inout [T]) {
        guard let c = config.finalSoftCap.map({ T($0) }) else { return }
        for i in logits.indices { logits[i] = c * T.tanh(logits[i] / c) }
    }

    /// Its backward: dz ⊙= 1 − (capped/c)², from the capped logits.
    func capLogitsBackward(_ dLogits: inout [T], capped: [T]) {
        guard let c = config.finalSoftCap.map({ T($0) }) else { return }
        for i in dLogits.indices { let t = capped[i] / c; dLogits[i] *= 1 - t * t }
    }

    /// Logits [N, V] of every position (for tests and small inputs; perplexity uses `negativeLogLikelihoods`).
    @_specialize(exported: true, where T == Float)
    public func logits(tokens: [Int32], batch: Int = 1) throws -> [T] {
        let hf = try hidden(tokens: tokens, batch: batch, length: tokens.count / max(batch, 1)).hf
        return try hf.withUnsafeBufferPointer { try headLogits($0.baseAddress!, rows: 0..<tokens.count) }
    }

    /// Summed next-token loss over the scored targets (−1 = not scored) and their count, forward only. The head runs
    /// on the scored rows alone (a chat row's prompt positions cost no logits).
    @_specialize(exported: true, where T == Float)
    public func loss(tokens: [Int32], targets: [Int32], batch: Int) throws -> (sum: Double, count: Int) {
        let n = tokens.count, C = config.embedding
        let states = try hidden(tokens: tokens, batch: batch, length: n / max(batch, 1)).hf
        let scoredRows = scoredPositions(targets), R = scoredRows.count
        let hf = R < n ? LlamaModel.rows(scoredRows, of: states, width: C) : states
        let scoredTargets = scoredRows.map { targets[$0] }
        var total = 0.0
        try hf.withUnsafeBufferPointer { hf in
            try scoredTargets.withUnsafeBufferPointer { tg in
                for start in stride(from: 0, to: R, by: headChunkRows) {
                    let rows = start..<min(R, start + headChunkRows)
                    var logits = try headLogits(hf.baseAddress!, rows: rows)
                    total += CrossEntropy.forwardBackward(logits: &logits, targets: tg.baseAddress! + start, rows: rows.count,
                                                          vocab: config.vocabulary, gradientScale: 0, gradient: false)
                }
            }
        }
        return (total, R)
    }
}

extension LlamaModel {
    /// The positions whose target is a token of the vocabulary: the rows the head and the loss run on.
    func scoredPositions(_ targets: [Int32]) -> [Int] {
        targets.indices.filter { targets[$0] >= 0 && Int(targets[$0]) < config.vocabulary }
    }

    /// Rows `rows` of x [N, width], gathered into [rows.count, width].
    static func rows<S: Collection>(_ rows: S, of x: [T], width: Int) -> [T] where S.Element == Int {
        var out = [T](repeating: 0, count: rows.count * width)
        for (i, r) in rows.enumerated() { for c in 0..<width { out[i * width + c] = x[r * width + c] } }
        return out
    }

    /// Negative log-likelihoods of next-token predictions: for each of the `batch` sequences (each `length`
    /// tokens of `tokens`), the logits at positions `scored` predict the token after each. Only those rows of
    /// the vocabulary head are computed.
    @_specialize(exported: true, where T == Float)
    public func negativeLogLikelihoods(tokens: [Int32], batch: Int, scored: Range<Int>) throws -> [Double] {
        let length = tokens.count / max(batch, 1)
        guard scored.lowerBound >= 0, scored.upperBound < length else {
            throw ModelError.invalidInput("scored positions \(scored) must predict tokens inside sequences of \(length)")
        }
        let hf = try hidden(tokens: tokens, batch: batch, length: length).hf
        var out: [Double] = []
        try hf.withUnsafeBufferPointer { hf in
            for b in 0..<batch {
                let rows = (b * length + scored.lowerBound)..<(b * length + scored.upperBound)
                var logits = try headLogits(hf.baseAddress!, rows: rows)
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
