import Foundation
import Kernels

/// Perplexity scored as llama.cpp's `llama-perplexity` scores it: the tokens are cut into chunks of `context`, BOS
/// is written over each chunk's first token when the model adds one, and in each chunk the positions
/// context/2 ..< context−1 predict the token after them. The error is llama.cpp's: PPL · √(var(NLL) / (n − 1)).
public struct Perplexity {
    public var context: Int
    /// Tokens evaluated together (whole chunks; at least one).
    public var batchTokens: Int
    /// Score at most this many chunks (nil: all).
    public var maxChunks: Int?
    /// Written over each chunk's first token (the model's BOS when it adds one).
    public var bos: Int32?
    /// `.int8`: score as generation computes with 8-bit activations (`TokenActivations`): each chunk's first half
    /// goes in as a prompt, then one token at a time through the KV cache, `threads` splitting each product. The
    /// default `.exact` scores whole chunks with batched products.
    public var activations: TokenActivations = .exact
    public var threads = 1

    public struct Progress: Sendable {
        /// Chunks scored so far, of `chunks`, and the running perplexity after each chunk of this pass.
        public var chunksDone: Int
        public var chunks: Int
        public var runningPerplexity: [Double]
        public var seconds: Double
    }

    public struct Result: Sendable {
        public var perplexity: Double
        public var uncertainty: Double
        public var chunks: Int
        public var scoredTokens: Int
    }

    public init(context: Int, batchTokens: Int = 2048, maxChunks: Int? = nil, bos: Int32? = nil) {
        self.context = context
        self.batchTokens = batchTokens
        self.maxChunks = maxChunks
        self.bos = bos
    }

    /// The scored positions of each chunk.
    public var scoredPositions: Range<Int> { (context / 2)..<(context - 1) }

    /// How many chunks `tokenCount` tokens give.
    public func chunkCount(tokens tokenCount: Int) -> Int {
        let all = tokenCount / max(context, 1)
        return maxChunks.map { min(all, $0) } ?? all
    }

    public func evaluate(model: LlamaModel<Float>, tokens: [Int32], progress: (Progress) -> Void = { _ in }) throws -> Result {
        guard context >= 4 else { throw ModelError.invalidInput("the context must be at least 4 tokens, not \(context)") }
        let count = chunkCount(tokens: tokens.count)
        guard count > 0 else {
            throw ModelError.invalidInput("\(tokens.count) tokens is less than one chunk of \(context) (use a smaller context)")
        }
        model.runContext = context
        let perPass = max(1, batchTokens / context), perChunk = scoredPositions.count
        var nll = 0.0, nll2 = 0.0, scored = 0
        let start = Date()
        for first in stride(from: 0, to: count, by: perPass) {
            let group = first..<min(count, first + perPass)
            var input: [Int32] = []
            for c in group {
                var chunk = Array(tokens[(c * context)..<((c + 1) * context)])
                if let bos { chunk[0] = bos }
                input += chunk
            }
            let losses = activations == .exact
                ? try model.negativeLogLikelihoods(tokens: input, batch: group.count, scored: scoredPositions)
                : try (0..<group.count).flatMap { try tokenByTokenLosses(model: model, chunk: Array(input[($0 * context)..<(($0 + 1) * context)])) }
            var running: [Double] = []
            for (i, l) in losses.enumerated() {
                nll += l
                nll2 += l * l
                scored += 1
                if (i + 1) % perChunk == 0 { running.append(exp(nll / Double(scored))) }
            }
            progress(Progress(chunksDone: group.upperBound, chunks: count, runningPerplexity: running,
                              seconds: Date().timeIntervalSince(start)))
        }
        let mean = nll / Double(scored)
        let variance = nll2 / Double(scored) - mean * mean
        let ppl = exp(mean)
        let uncertainty = variance > 0 && scored > 1 ? ppl * (variance / Double(scored - 1)).squareRoot() : 0
        return Result(perplexity: ppl, uncertainty: uncertainty, chunks: count, scoredTokens: scored)
    }

    /// −log p(chunk[p + 1]) for the scored positions p, as generation computes the logits: positions up to the
    /// first scored one as a prompt, then each token alone.
    public func tokenByTokenLosses(model: LlamaModel<Float>, chunk: [Int32]) throws -> [Double] {
        let session = InferenceSession(model: model, capacity: context, threads: threads, activations: activations)
        var losses: [Double] = []
        var logits = try session.feed(Array(chunk[...scoredPositions.lowerBound]))
        for p in scoredPositions {
            if p > scoredPositions.lowerBound { logits = try session.feed([chunk[p]]) }
            var target = chunk[p + 1]
            losses.append(CrossEntropy.forwardBackward(logits: &logits, targets: &target, rows: 1, vocab: logits.count,
                                                       gradientScale: 0, gradient: false))
        }
        return losses
    }
}
