import LoRA
import Tokenizer

/// Options of the 2023 finetune's text sampling.
public struct SamplingOptions: Sendable, Equatable {
    /// Text marking sample starts (after escapes when `escape`); nil: every token position starts a sample.
    public var sampleStart: String?
    public var includeSampleStart = false
    public var escape = false
    /// Fill a short sample's row with the next samples instead of padding.
    public var fillWithNextSamples = false
    public var separateWithEOS = false
    public var separateWithBOS = true
    /// Start each sample at a random offset inside it.
    public var randomOffsets = false
    /// Let a sample run past the next sample start (up to what a row can hold), as --overlapping-samples.
    public var overlapping = false
    public init() {}

    /// `\n \r \t \' \" \\` in the pattern when `escape` is on (other `\x` kept as is).
    public var pattern: String? {
        guard let s = sampleStart, escape else { return sampleStart }
        var out = "", it = s.makeIterator()
        while let c = it.next() {
            guard c == "\\", let n = it.next() else { out.append(c); continue }
            switch n {
            case "n": out.append("\n")
            case "r": out.append("\r")
            case "t": out.append("\t")
            case "'", "\"", "\\": out.append(n)
            default: out.append("\\"); out.append(n)
            }
        }
        return out
    }
}

/// The token stream of a data set with its loss mask and where its samples are.
public struct TokenStream: Sendable {
    public var tokens: [Int32]
    public var trained: [Bool]
    /// (start, count) of each sample in `tokens`.
    public var samples: [(start: Int, count: Int)]
    /// Every position of a plain text starts a window of the context length (the finetune's default sampling).
    public var windows: Bool

    public var sampleCount: Int { windows ? max(1, tokens.count - 1) : samples.count }

    init(tokens: [Int32], trained: [Bool], samples: [(start: Int, count: Int)], windows: Bool) {
        self.tokens = tokens
        self.trained = trained
        self.samples = samples
        self.windows = windows
    }

    /// Examples one after another, each a sample.
    public init(examples: [TrainingExample]) {
        var tokens: [Int32] = [], trained: [Bool] = [], samples: [(start: Int, count: Int)] = []
        for e in examples {
            samples.append((tokens.count, e.tokens.count))
            tokens += e.tokens
            trained += e.trained
        }
        self.init(tokens: tokens, trained: trained, samples: samples, windows: false)
    }

    /// Plain text sampled as the finetune samples it.
    public init(text: [UInt8], tokenizer: Tokenizer, options: SamplingOptions, context: Int = 256) {
        if let pattern = options.pattern.map({ Array($0.utf8) }), !pattern.isEmpty {
            var starts: [Int] = []
            var i = 0
            while let m = Tokenizer.find(pattern, in: text, i..<text.count) {
                starts.append(m)
                i = m + pattern.count
            }
            if starts.isEmpty { starts = [0] }
            var examples: [TrainingExample] = []
            for (k, s) in starts.enumerated() {
                let begin = s + (options.includeSampleStart ? 0 : (starts == [0] && !text.starts(with: pattern) ? 0 : pattern.count))
                var end = k + 1 < starts.count ? starts[k + 1] : text.count
                if options.overlapping {
                    // As the finetune: enough text for a full row, cut at a UTF-8 character boundary.
                    let longest = tokenizer.vocabulary.tokens.map { $0.count }.max() ?? 16
                    end = min(text.count, begin + longest * (context + 1))
                    while end < text.count && text[end] & 0xC0 == 0x80 { end += 1 }
                }
                guard begin < end else { continue }
                var ids = tokenizer.encode(bytes: Array(text[begin..<end]), addSpecial: false)
                if tokenizer.vocabulary.addBOS, let bos = tokenizer.vocabulary.bos { ids.insert(bos, at: 0) }
                examples.append(TrainingExample(tokens: ids, trained: ids.indices.map { $0 > 0 || !tokenizer.vocabulary.addBOS }))
            }
            self.init(examples: examples)
        } else {
            let ids = tokenizer.encode(bytes: text, addSpecial: false)
            self.init(tokens: ids, trained: [Bool](repeating: true, count: ids.count), samples: [], windows: true)
        }
    }
}

/// Deterministic shuffling and batching, with a state that checkpoints save and resume from.
public struct Batcher: Sendable {
    public struct State: Sendable, Equatable, Codable {
        public var epoch: Int
        public var cursor: Int
        public init(epoch: Int, cursor: Int) {
            self.epoch = epoch
            self.cursor = cursor
        }
    }

    public let stream: TokenStream
    public let length: Int
    public let seed: UInt64
    public let options: SamplingOptions
    public let bos: Int32?
    public let eos: Int32?
    public let padding: Int32
    public var state = State(epoch: 0, cursor: 0)
    /// Samples longer than a row (cut) and shorter than a row, counted while building rows.
    public private(set) var truncated = 0
    private var order: [Int] = []
    private var orderEpoch = -1

    public init(stream: TokenStream, length: Int, seed: UInt64, options: SamplingOptions, bos: Int32?, eos: Int32?) {
        self.stream = stream
        self.length = length
        self.seed = seed
        self.options = options
        self.bos = bos
        self.eos = eos
        padding = eos ?? 0
    }

    /// The order of samples in `epoch`: a Fisher–Yates shuffle seeded by (seed, epoch).
    func permutation(epoch: Int) -> [Int] {
        var rng = SplitMix(seed: seed &+ UInt64(epoch) &* 0x9E37_79B9_7F4A_7C15)
        var p = Array(0..<stream.sampleCount)
        if p.count > 1 {
            for i in stride(from: p.count - 1, to: 0, by: -1) {
                p.swapAt(i, Int(rng.next() % UInt64(i + 1)))
            }
        }
        return p
    }

    mutating func nextSample() -> Int {
        if state.cursor >= stream.sampleCount {
            state.epoch += 1
            state.cursor = 0
        }
        if orderEpoch != state.epoch {
            order = permutation(epoch: state.epoch)
            orderEpoch = state.epoch
        }
        defer { state.cursor += 1 }
        return order[state.cursor]
    }

    /// Tokens and learned flags of sample `index` (for windows: `length + 1` tokens from that position).
    func sample(_ index: Int, rng: inout SplitMix, randomOffset: Bool) -> (tokens: ArraySlice<Int32>, trained: ArraySlice<Bool>) {
        if stream.windows {
            let end = min(stream.tokens.count, index + length + 1)
            return (stream.tokens[index..<end], stream.trained[index..<end])
        }
        let s = stream.samples[index]
        var offset = 0
        if randomOffset && s.count > 1 { offset = Int(rng.next() % UInt64(s.count - 1)) }
        return (stream.tokens[(s.start + offset)..<(s.start + s.count)], stream.trained[(s.start + offset)..<(s.start + s.count)])
    }

    /// The next micro-batch: `rows` rows of `length` input tokens and their targets (−1 = not learned).
    public mutating func next(rows: Int) -> (tokens: [Int32], targets: [Int32]) {
        var tokens: [Int32] = [], targets: [Int32] = []
        var rng = SplitMix(seed: seed ^ UInt64(state.epoch) << 32 ^ UInt64(state.cursor))
        for _ in 0..<rows {
            var seq: [Int32] = [], learn: [Bool] = []
            var first = true
            while seq.count < length + 1 {
                if !first {
                    if options.separateWithEOS, let eos { seq.append(eos); learn.append(true) }
                    if options.separateWithBOS, let bos { seq.append(bos); learn.append(false) }
                }
                let (t, l) = sample(nextSample(), rng: &rng, randomOffset: options.randomOffsets)
                if first && t.count > length + 1 && !stream.windows { truncated += 1 }
                seq += t
                learn += l
                first = false
                if !options.fillWithNextSamples { break }
            }
            if seq.count > length + 1 {
                seq.removeLast(seq.count - length - 1)
                learn.removeLast(learn.count - length - 1)
            }
            for i in 0..<length {
                tokens.append(i < seq.count ? seq[i] : padding)
                targets.append(i + 1 < seq.count && learn[i + 1] ? seq[i + 1] : -1)
            }
        }
        return (tokens, targets)
    }

    /// The most positions a row of this data runs once `cutAfterLastScored` has cut it: the whole row for windows of
    /// text and packed rows, else the longest sample's tokens but its last (which no position is fed to predict).
    public var longestRow: Int {
        if stream.windows || options.fillWithNextSamples { return length }
        return min(length, max(1, (stream.samples.map(\.count).max() ?? 1) - 1))
    }

    /// A micro-batch's rows cut after the last position that any of them scores. Attention is causal, so no later
    /// position changes an earlier one's output: the loss and its gradients are the whole rows', and rows of short
    /// samples (prompt/completion, chat) cost their own length instead of the context's padding.
    ///
    /// Shapes: tokens, targets [rows · length] → [rows · used], used = 1 + the last scored position of any row.
    public static func cutAfterLastScored(tokens: [Int32], targets: [Int32], rows: Int) -> (tokens: [Int32], targets: [Int32]) {
        let length = tokens.count / max(rows, 1)
        let used = (0..<rows).map { r in positionsUsed(targets[(r * length)..<(r * length + length)]) }.max() ?? 1
        guard used < length else { return (tokens, targets) }
        var t: [Int32] = [], g: [Int32] = []
        t.reserveCapacity(rows * used)
        g.reserveCapacity(rows * used)
        for r in 0..<rows {
            t += tokens[(r * length)..<(r * length + used)]
            g += targets[(r * length)..<(r * length + used)]
        }
        return (t, g)
    }

    /// The positions a row runs: up to its last scored one (at least one).
    public static func positionsUsed(_ rowTargets: ArraySlice<Int32>) -> Int {
        guard let last = rowTargets.lastIndex(where: { $0 >= 0 }) else { return 1 }
        return last - rowTargets.startIndex + 1
    }

    /// All samples in file order, each in its own row (validation): no shuffling, no random offsets.
    public func evaluationRows() -> [(tokens: [Int32], targets: [Int32])] {
        var copy = self
        copy.state = State(epoch: 0, cursor: 0)
        var rows: [(tokens: [Int32], targets: [Int32])] = []
        var rng = SplitMix(seed: 0)
        let indices: [Int] = stream.windows ? Array(stride(from: 0, to: max(1, stream.tokens.count - 1), by: length)) : Array(0..<stream.samples.count)
        for index in indices {
            let (seq, learn) = copy.sample(index, rng: &rng, randomOffset: false)
            let s = Array(seq), l = Array(learn)
            var t: [Int32] = [], g: [Int32] = []
            for i in 0..<length {
                t.append(i < s.count ? s[i] : padding)
                g.append(i + 1 < s.count && l[i + 1] ? s[i + 1] : -1)
            }
            rows.append((t, g))
        }
        return rows
    }
}
