import Kernels

/// Keys and values of every layer for the positions fed so far (generation).
///
/// Shapes: keys[layer], values[layer] [capacity, KV·d]; rows 0 ..< position hold the tokens fed.
final class KVCache<T: KernelScalar> {
    let config: LlamaConfig
    let capacity: Int
    /// Tokens whose keys and values are complete in every layer.
    var position = 0
    private var keys: [[T]]
    private var values: [[T]]

    init(config: LlamaConfig, capacity: Int) {
        self.config = config
        self.capacity = capacity
        keys = (0..<config.layers).map { _ in [T](repeating: 0, count: config.kvDim * capacity) }
        values = keys
    }

    /// Stores the rotated keys and values [count, KV·d] of the tokens after `position` in `layer`.
    func append(layer l: Int, keys k: [T], values v: [T], count: Int) {
        let width = config.kvDim, start = position * width
        keys[l].withUnsafeMutableBufferPointer { (start + $0.baseAddress!).update(from: k, count: count * width) }
        values[l].withUnsafeMutableBufferPointer { (start + $0.baseAddress!).update(from: v, count: count * width) }
    }

    /// Attention of `count` new queries [count, H·d] over the cache, causal among themselves.
    func attend(layer l: Int, q: [T], count: Int, scoring: AttentionScoring<T>, out: inout [T]) {
        let c = config
        keys[l].withUnsafeBufferPointer { K in
            values[l].withUnsafeBufferPointer { V in
                out.withUnsafeMutableBufferPointer { O in
                    Attention<T>.overCache(q: q, n: count, keys: K.baseAddress!, values: V.baseAddress!, position: position,
                                           heads: c.heads, kvHeads: c.kvHeads, headDim: c.headDim, scoring: scoring,
                                           out: O.baseAddress!)
                }
            }
        }
    }
}
