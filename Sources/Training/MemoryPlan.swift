import Foundation
import Llama

/// What a training run will hold in memory, by part, before it starts: a pure function of the model's shape, the
/// rows per micro-batch and the adapter, so it can be printed, checked against the machine and tested on its own.
public struct MemoryPlan: Sendable, Equatable {
    public struct Inputs: Sendable, Equatable {
        public var config: LlamaConfig
        /// Bytes of the mapped model file and its parameter count.
        public var fileSize: Int
        public var parameterCount: Int
        public var batch: Int
        public var context: Int
        public var trainableParameters: Int
        /// Every weight kept dequantized (`--cache-weights`) instead of one layer at a time.
        public var cacheWeights: Bool
        /// Dequantized weights kept in bf16 (2 bytes a value) for bf16 products, instead of float32.
        public var bf16Weights: Bool
        /// The head has a trainable adapter (`--lora-targets` with `output`): it stays dense when it fits
        /// (`LlamaModel.headIsChunked`).
        public var trainsHead: Bool

        public init(config: LlamaConfig, fileSize: Int, parameterCount: Int, batch: Int, context: Int,
                    trainableParameters: Int, cacheWeights: Bool, bf16Weights: Bool = false, trainsHead: Bool = false) {
            self.config = config
            self.fileSize = fileSize
            self.parameterCount = parameterCount
            self.batch = batch
            self.context = context
            self.trainableParameters = trainableParameters
            self.cacheWeights = cacheWeights
            self.bf16Weights = bf16Weights
            self.trainsHead = trainsHead
        }
    }

    public var parts: [(name: String, bytes: Int)]
    public var gradientCheckpointing: Bool
    public var total: Int { parts.reduce(0) { $0 + $1.bytes } }

    public static func == (a: MemoryPlan, b: MemoryPlan) -> Bool {
        a.gradientCheckpointing == b.gradientCheckpointing && a.parts.map(\.name) == b.parts.map(\.name)
            && a.parts.map(\.bytes) == b.parts.map(\.bytes)
    }

    /// What a training process holds besides the parts above, whatever the model: the Swift runtime, the tokenizer,
    /// the tokenized data and OpenBLAS's per-thread buffers (measured: SmolLM2 runs peaked 48–70 MB above the other
    /// parts).
    public static let runtimeBytes = 48 << 20
    /// What oneDNN adds for bf16 products: its code, generated kernels and per-thread scratchpads (measured: 14 MB
    /// after loading it and running a model's products).
    public static let bf16LibraryBytes = 16 << 20

    /// The plan with or without gradient checkpointing.
    public init(_ i: Inputs, checkpointing: Bool) {
        let mc = i.config, tokens = i.batch * i.context
        let layerBytes = MemoryPlan.keptPerLayer(i)
        // The layer in flight also holds its normalized inputs, the gated activation and their gradients.
        let workingBytes = 4 * tokens * (2 * mc.embedding + 3 * mc.feedForward)
            + (i.bf16Weights ? 2 * tokens * mc.feedForward : 0)  // a product's input rounded to bf16
        // The head stays dequantized, or (large vocabularies) one chunk of it and that chunk's logits at a time.
        // bf16 weights are dequantized a chunk of rows at a time and rounded, so the float32 copy is one chunk.
        let weightValueBytes = i.bf16Weights ? 2 : 4
        let bf16Chunk = i.bf16Weights ? 4 * LlamaConfig.bf16RoundingChunk : 0
        let denseHead = mc.vocabulary * mc.embedding * weightValueBytes
        let chunk = LlamaConfig.vocabularyChunk
        // A chunk holds its weights and the chunk's logits for every row (twice with a final soft cap, which keeps the
        // capped logits for its backward).
        let logitCopies = mc.finalSoftCap == nil ? 1 : 2
        let headIsDense = !mc.chunksHead(valueBytes: 4, trainingWithFrozenHead: !i.trainsHead)  // on float32's size
        // With bf16 products the logits' gradient is also rounded to bf16 for dlogits·W.
        let headPhase = headIsDense ? (4 * logitCopies + (i.bf16Weights ? 2 : 0)) * min(tokens, LlamaConfig.headRows) * mc.vocabulary
                                    : 4 * chunk * (mc.embedding + logitCopies * tokens) + (i.bf16Weights ? 2 * chunk * tokens : 0)
        // Block weights are dequantized one layer at a time, or all kept with --cache-weights (the head and the
        // embedding are read apart from them).
        let blockParameters = i.parameterCount - mc.vocabulary * mc.embedding * (mc.tiedEmbeddings ? 1 : 2)
        let dequantizedBytes = weightValueBytes * (i.cacheWeights ? blockParameters : blockParameters / mc.layers) + bf16Chunk
        // The head's scratch and a layer's (its working buffers, and with checkpointing its rebuilt activations) are
        // never held at once: the head runs between the last layer's forward and the first layer's backward, and
        // the heap reuses one's memory for the other, so the peak holds the larger of the two.
        let layerPhase = workingBytes + (checkpointing ? layerBytes : 0) + (i.cacheWeights ? 0 : dequantizedBytes)
        let kept = checkpointing ? 4 * tokens * mc.embedding * mc.layers : layerBytes * mc.layers
        let layerOrHead = max(layerPhase, headPhase)
        parts = [("weights (mapped file)" + (headIsDense ? " + dequantized head" : "") + (i.cacheWeights ? " + every dequantized weight" : ""),
                  i.fileSize + (headIsDense ? denseHead : 0) + (i.cacheWeights ? dequantizedBytes : 0)),
                 ("activations kept for backward", kept),
                 (layerPhase >= headPhase ? "layer in flight (dequantized weights, buffers)" : "head in flight (vocabulary chunk, logits)", layerOrHead),
                 ("LoRA, gradients, AdamW moments", i.trainableParameters * 16),
                 ("runtime, tokenizer, data, BLAS buffers" + (i.bf16Weights ? ", oneDNN" : ""),
                  MemoryPlan.runtimeBytes + (i.bf16Weights ? MemoryPlan.bf16LibraryBytes : 0))]
        gradientCheckpointing = checkpointing
    }

    /// The plan a run uses: checkpointing as asked, or (nil) on when every layer's activations would take more
    /// than 1 GiB or the plan without it would use more than 80 % of `limit`.
    public static func choose(_ i: Inputs, checkpointing: Bool?, limit: Int) -> MemoryPlan {
        if let checkpointing { return MemoryPlan(i, checkpointing: checkpointing) }
        let without = MemoryPlan(i, checkpointing: false)
        let tooMuch = keptPerLayer(i) * i.config.layers > 1 << 30 || without.total > limit / 10 * 8
        return tooMuch ? MemoryPlan(i, checkpointing: true) : without
    }

    /// Bytes a layer keeps for backward without checkpointing: input, q, k, v, attention output and saves (one
    /// value per row and head), the residual after attention (and with post-norms the attention's projection
    /// before its norm), gate, up (see BlockActivations).
    static func keptPerLayer(_ i: Inputs) -> Int {
        let mc = i.config, residuals = mc.postNorms ? 2 : 1
        return 4 * i.batch * i.context * ((1 + residuals) * mc.embedding + 2 * mc.qDim + 2 * mc.kvDim + 2 * mc.feedForward + mc.heads)
    }

    /// The nearest setting that fits in `limit` when this one does not: gradient checkpointing first, then fewer rows
    /// per micro-batch (with more accumulation, so the step keeps its size), then shorter rows. nil when even one
    /// checkpointed row of 64 tokens does not fit (the model itself is too large).
    public static func suggestion(_ i: Inputs, limit: Int) -> (checkpointing: Bool, batch: Int, context: Int)? {
        var trial = i
        for checkpointing in [false, true] {
            trial.batch = i.batch
            while true {
                if MemoryPlan(trial, checkpointing: checkpointing).total <= limit { return (checkpointing, trial.batch, trial.context) }
                guard trial.batch > 1 else { break }
                trial.batch /= 2
            }
        }
        trial.batch = 1
        while trial.context > 64 {
            trial.context /= 2
            if MemoryPlan(trial, checkpointing: true).total <= limit { return (true, 1, trial.context) }
        }
        return nil
    }
}

/// This process's resident memory, the figure a plan is checked against.
public enum ResidentMemory {
    /// The peak resident size of this process image, the mapped model's touched pages included: Linux's VmHWM.
    /// Not `getrusage`'s ru_maxrss, which survives exec: a process started by a large parent (a test runner)
    /// reports the parent's size at fork when that is larger.
    public static func peakBytes() -> Int {
        #if os(Linux)
        if let status = try? String(contentsOfFile: "/proc/self/status", encoding: .utf8),
           let line = status.split(separator: "\n").first(where: { $0.hasPrefix("VmHWM:") }),
           let kB = Int(line.split(separator: " ").dropFirst().first ?? "") {
            return kB * 1024
        }
        #endif
        var usage = rusage()
        #if os(Linux)
        getrusage(Int32(RUSAGE_SELF.rawValue), &usage)
        return Int(usage.ru_maxrss) * 1024
        #else
        getrusage(RUSAGE_SELF, &usage)
        return Int(usage.ru_maxrss)  // bytes on Darwin
        #endif
    }

    /// Starts a new peak at the current resident size (Linux: writing 5 to clear_refs), so that several runs in one
    /// process each measure their own (from what the heap still holds of the earlier ones).
    public static func resetPeak() {
        #if os(Linux)
        try? "5".write(toFile: "/proc/self/clear_refs", atomically: false, encoding: .utf8)
        #endif
    }
}
