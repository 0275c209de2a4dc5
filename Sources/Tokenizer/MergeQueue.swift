/// A candidate merge of two adjacent symbols: `priority` orders candidates (smaller first), ties go to the
/// leftmost pair, as in llama.cpp's priority queues.
struct MergeCandidate {
    var priority: Float
    var left: Int32
    var right: Int32
    /// The symbol ids the pair had when it was proposed; a pair whose symbols changed since is stale.
    var leftID: Int32
    var rightID: Int32

    @inline(__always)
    func precedes(_ other: MergeCandidate) -> Bool {
        priority < other.priority || (priority == other.priority && left < other.left)
    }
}

/// A binary min-heap of merge candidates.
struct MergeQueue {
    private var items: [MergeCandidate] = []

    var isEmpty: Bool { items.isEmpty }

    mutating func removeAll() { items.removeAll(keepingCapacity: true) }

    mutating func push(_ c: MergeCandidate) {
        items.append(c)
        var i = items.count - 1
        while i > 0 {
            let parent = (i - 1) / 2
            guard items[i].precedes(items[parent]) else { break }
            items.swapAt(i, parent)
            i = parent
        }
    }

    mutating func pop() -> MergeCandidate? {
        guard let top = items.first else { return nil }
        let last = items.removeLast()
        if !items.isEmpty {
            items[0] = last
            var i = 0
            while true {
                let l = 2 * i + 1, r = l + 1
                var best = i
                if l < items.count && items[l].precedes(items[best]) { best = l }
                if r < items.count && items[r].precedes(items[best]) { best = r }
                if best == i { break }
                items.swapAt(i, best)
                i = best
            }
        }
        return top
    }
}

/// Symbols of one word as a doubly linked list over their original positions; merged-away symbols are dead.
struct SymbolChain {
    var ids: [Int32]
    var prev: [Int32]
    var next: [Int32]
    var alive: [Bool]

    init(ids: [Int32]) {
        self.ids = ids
        let n = Int32(ids.count)
        prev = (0..<n).map { $0 - 1 }
        next = (0..<n).map { $0 + 1 < n ? $0 + 1 : -1 }
        alive = [Bool](repeating: true, count: ids.count)
    }

    func isCurrent(_ c: MergeCandidate) -> Bool {
        alive[Int(c.left)] && alive[Int(c.right)] && ids[Int(c.left)] == c.leftID && ids[Int(c.right)] == c.rightID
    }

    /// Merges `c.right` into `c.left`, which becomes `merged`.
    mutating func merge(_ c: MergeCandidate, into merged: Int32) {
        let l = Int(c.left), r = Int(c.right)
        ids[l] = merged
        alive[r] = false
        next[l] = next[r]
        if next[r] >= 0 { prev[Int(next[r])] = c.left }
    }

    /// Ids of the surviving symbols, in order.
    var result: [Int32] {
        var out: [Int32] = []
        var i: Int32 = ids.isEmpty ? -1 : 0
        while i >= 0 {
            out.append(ids[Int(i)])
            i = next[Int(i)]
        }
        return out
    }
}
