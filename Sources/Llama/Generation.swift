import Foundation
import GGUF
import Kernels
import LoRA
import Tokenizer

/// Incremental inference with a KV cache: a prompt goes through the batched products on dequantized weights,
/// each generated token through products that read the quantized weights in place. The blocks are the model's
/// own (the same code trains and scores); only their attention differs. Adapters apply at run time.
public final class InferenceSession: @unchecked Sendable {
    public let model: LlamaModel<Float>
    public let capacity: Int
    public var threads: Int
    /// How single-token products (each generated token, the head at a prompt's last position) treat activations;
    /// a prompt's batched products are exact either way.
    public var activations: TokenActivations
    let cache: KVCache<Float>
    public var position: Int { cache.position }

    public init(model: LlamaModel<Float>, capacity: Int, threads: Int = 1, activations: TokenActivations = .exact) {
        self.model = model
        self.capacity = capacity
        self.threads = threads
        self.activations = activations
        model.runContext = capacity
        cache = KVCache(config: model.config, capacity: capacity)
        MatVec.prepare()
    }

    /// Forgets everything after `position` (e.g. to reuse a shared prefix).
    public func rewind(to position: Int) { cache.position = max(0, min(position, cache.position)) }

    /// Feeds `tokens` and returns the logits [V] after the last one.
    public func feed(_ tokens: [Int32]) throws -> [Float] {
        guard !tokens.isEmpty else { throw ModelError.invalidInput("nothing to feed") }
        guard position + tokens.count <= capacity else {
            throw ModelError.invalidInput("the context is full (\(capacity) tokens); use a larger --ctx")
        }
        let c = model.config, n = tokens.count, C = c.embedding
        // One token reads the weights in place; several go through GEMMs on dequantized weights.
        let rowProducts = n == 1 ? RowProducts(threads: threads, activations: activations) : nil
        var x = try model.embed(tokens)
        let rotations = model.rotations(positions: (0..<n).map { Int32(position + $0) })
        for l in 0..<c.layers {
            x = try model.block(l, rotations: rotations, rowProducts: rowProducts).forward(x, attention: .cached(cache, layer: l))
        }
        cache.position += n
        // Only the last position's logits are needed.
        var h = [Float](repeating: 0, count: C)
        x.withUnsafeBufferPointer {
            RMSNorm.forward(x: $0.baseAddress! + (n - 1) * C, weight: model.weights.outputNorm, y: &h, rstd: nil, rows: 1,
                            cols: C, eps: c.rmsEpsilon)
        }
        return try h.withUnsafeBufferPointer { try model.headLogits($0.baseAddress!, rows: 0..<1, rowProducts: RowProducts(threads: threads, activations: activations)) }
    }
}

/// Generates text from a model: feeds a prompt (reusing what the cache already holds of it), then samples token by
/// token until end of generation, the token limit, a stop string or a full context, streaming text to a callback.
public final class Generator {
    public let session: InferenceSession
    public let tokenizer: Tokenizer
    public var sampler: Sampler
    /// Stop when the generated text contains any of these.
    public var stopStrings: [String] = []
    /// Generate at most this many tokens per response.
    public var maxTokens: Int
    /// Running totals for speed reports.
    public private(set) var promptTokens = 0, promptSeconds = 0.0, generatedTokens = 0, generatedSeconds = 0.0
    /// Tokens whose keys and values are in the cache, in order (so a longer prompt can reuse them).
    private var cached: [Int32] = []
    /// Every token seen (prompts and responses), for the repetition penalty.
    private var history: [Int32] = []

    public struct Response: Sendable {
        public var ids: [Int32]
        public var text: String
        /// Why generation ended: "end", "limit", "stop", "context" or "cancelled".
        public var reason: String
    }

    public init(session: InferenceSession, tokenizer: Tokenizer, sampler: Sampler, maxTokens: Int = 128) {
        self.session = session
        self.tokenizer = tokenizer
        self.sampler = sampler
        self.maxTokens = maxTokens
    }

    /// Starts over with an empty context.
    public func reset() {
        session.rewind(to: 0)
        cached = []
        history = []
    }

    /// Continues from `prompt` (a whole conversation or text so far): the longest prefix already in the cache is
    /// kept, the rest is fed, and the response streams to `onText` (return false to stop).
    @discardableResult
    public func respond(to prompt: [Int32], onText: (String) -> Bool = { _ in true }) throws -> Response {
        var shared = 0
        while shared < min(prompt.count - 1, cached.count) && prompt[shared] == cached[shared] { shared += 1 }
        session.rewind(to: shared)
        cached.removeLast(cached.count - shared)
        var start = Date()
        var logits = try feed(Array(prompt[shared...]))
        promptSeconds += Date().timeIntervalSince(start)
        promptTokens += prompt.count - shared
        history += prompt[shared...]
        var decoder = StreamingDecoder(tokenizer: tokenizer)
        var text = "", ids: [Int32] = [], reason = "limit"
        start = Date()
        defer { generatedSeconds += Date().timeIntervalSince(start) }
        for _ in 0..<maxTokens {
            let id = sampler.sample(logits, history: history)
            if tokenizer.isEndOfGeneration(id) { reason = "end"; break }
            ids.append(id)
            history.append(id)
            generatedTokens += 1
            let chunk = decoder.append(id)
            text += chunk
            if !onText(chunk) { reason = "cancelled"; break }
            if stopStrings.contains(where: { text.contains($0) }) { reason = "stop"; break }
            if session.position >= session.capacity { reason = "context"; break }
            logits = try feed([id])
        }
        let rest = decoder.finish()
        text += rest
        if !rest.isEmpty { _ = onText(rest) }
        return Response(ids: ids, text: text, reason: reason)
    }

    private func feed(_ tokens: [Int32]) throws -> [Float] {
        let logits = try session.feed(tokens)
        cached += tokens
        return logits
    }
}
