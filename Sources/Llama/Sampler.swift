import Kernels
import LoRA

/// Picks the next token from logits: repetition penalty, then greedy (temperature ≤ 0) or top-k → top-p →
/// min-p → temperature → a seeded draw (llama.cpp's default order).
public struct Sampler: Sendable {
    public var temperature: Float = 0.8
    public var topK = 40
    public var topP: Float = 0.95
    public var minP: Float = 0.05
    public var repeatPenalty: Float = 1.0
    /// Tokens of the history the penalty looks at (negative: all of it, as llama.cpp's -1).
    public var repeatLastN = 64
    var rng: SplitMix

    public init(seed: UInt64) { rng = SplitMix(seed: seed) }

    public mutating func sample(_ logits: [Float], history: [Int32]) -> Int32 {
        var logits = logits
        if repeatPenalty != 1 {
            for id in Set(history.suffix(repeatLastN < 0 ? history.count : repeatLastN)) where Int(id) < logits.count && id >= 0 {
                let l = logits[Int(id)]
                logits[Int(id)] = l > 0 ? l / repeatPenalty : l * repeatPenalty
            }
        }
        if temperature <= 0 {
            var best = 0
            for i in 1..<logits.count where logits[i] > logits[best] { best = i }
            return Int32(best)
        }
        var candidates = logits.indices.map { ($0, logits[$0]) }
        candidates.sort { $0.1 > $1.1 }
        if topK > 0 && topK < candidates.count { candidates.removeLast(candidates.count - topK) }
        let maxLogit = candidates[0].1
        var probs = candidates.map { Float.exp($0.1 - maxLogit) }
        var total = probs.reduce(0, +)
        if topP < 1 {
            var cumulative: Float = 0
            var keep = probs.count
            for (i, p) in probs.enumerated() {
                cumulative += p / total
                if cumulative >= topP { keep = i + 1; break }
            }
            candidates.removeLast(candidates.count - keep)
            probs.removeLast(probs.count - keep)
        }
        if minP > 0 {
            let threshold = minP * probs[0]
            let keep = max(1, probs.firstIndex { $0 < threshold } ?? probs.count)
            candidates.removeLast(candidates.count - keep)
            probs.removeLast(probs.count - keep)
        }
        // Temperature on the surviving logits.
        probs = candidates.map { Float.exp(($0.1 - maxLogit) / temperature) }
        total = probs.reduce(0, +)
        var r = Float(rng.nextUnit()) * total
        for (i, p) in probs.enumerated() {
            r -= p
            if r <= 0 { return Int32(candidates[i].0) }
        }
        return Int32(candidates.last!.0)
    }
}
