import GGUF
import Kernels

/// The 2023 finetune's outputs: its `ggla` adapter files and its checkpoint GGUFs (`training.type =
/// finetune_lora`). Both hold A as ne [r, in] (our Aᵀ) and B as ne [r, out] (our B), `token_embd` the other way
/// round, norm deltas, and were trained with no alpha/r factor (ΔW = B·A).
public enum SeedAdapter {
    /// "ggla" as the finetune wrote it, a little-endian UInt32 at the start of its adapter files.
    public static let magic: UInt32 = 0x6767_6C61

    public struct Result {
        /// Every expressible pair, scaled 1 (as the finetune trained it).
        public var adapter: LoRAAdapter<Float>
        /// Deltas of 1-D norm weights (name → Δw): no adapter can carry them; `lorakit merge` can.
        public var normDeltas: [(String, [Float])]
        /// The rank in the ggla header (or the most common rank) and the header's alpha.
        public var rank: Int
        public var headerAlpha: Float?
    }

    public static func read(path: String) throws -> Result {
        let file = try FileBytes(mapping: path)
        let raw = file.bytes
        guard raw.count >= 4 else { throw LoRAError.format(path: path, reason: "too short") }
        let magic = raw.loadUnaligned(as: UInt32.self)
        var tensors: [(name: String, dims: [Int], values: [Float])] = []
        var headerRank: Int?, headerAlpha: Float?
        if magic == SeedAdapter.magic {
            var c = 4
            func u32(_ what: String) throws -> Int {
                guard c + 4 <= raw.count else { throw LoRAError.format(path: path, reason: "truncated at \(what) (offset \(c))") }
                defer { c += 4 }
                return Int(raw.loadUnaligned(fromByteOffset: c, as: UInt32.self))
            }
            guard try u32("version") == 1 else { throw LoRAError.format(path: path, reason: "ggla version is not 1") }
            headerRank = try u32("rank")
            headerAlpha = Float(try u32("alpha"))
            while c < raw.count {
                let nDims = try u32("dimension count"), nameLength = try u32("name length"), type = try u32("type")
                guard (1...2).contains(nDims), nameLength > 0, nameLength < 4096, type == 0 || type == 1 else {
                    throw LoRAError.format(path: path, reason: "bad tensor header at offset \(c - 12)")
                }
                var dims: [Int] = []
                for _ in 0..<nDims { dims.append(try u32("dimension")) }
                guard c + nameLength <= raw.count else { throw LoRAError.format(path: path, reason: "truncated tensor name") }
                let name = String(decoding: UnsafeRawBufferPointer(rebasing: raw[c..<(c + nameLength)]), as: UTF8.self)
                c += nameLength
                c = (c + 31) / 32 * 32
                // Range first: the product of two unchecked 32-bit dimensions can overflow.
                guard dims.allSatisfy({ $0 > 0 && $0 < 1 << 24 }) else {
                    throw LoRAError.format(path: path, reason: "tensor '\(name)' has dimensions \(dims)")
                }
                let count = dims.reduce(1, *), size = type == 0 ? 4 : 2
                guard c + count * size <= raw.count else {
                    throw LoRAError.format(path: path, reason: "tensor '\(name)' runs past the end of the file")
                }
                let values: [Float] = (0..<count).map { i in
                    type == 0 ? Float(bitPattern: raw.loadUnaligned(fromByteOffset: c + 4 * i, as: UInt32.self))
                              : HalfPrecision.floatFromHalfBits(raw.loadUnaligned(fromByteOffset: c + 2 * i, as: UInt16.self))
                }
                c += count * size
                tensors.append((name.replacingSuffix(".loraA", ".lora_a").replacingSuffix(".loraB", ".lora_b"), dims, values))
            }
        } else {
            let gguf = try GGUFFile(bytes: file, name: path)
            guard try gguf.metadata.stringIfPresent("training.type") == "finetune_lora" else {
                throw LoRAError.format(path: path, reason: "neither a ggla adapter nor a finetune_lora checkpoint")
            }
            for t in gguf.tensors where t.name.hasSuffix(".lora_a") || t.name.hasSuffix(".lora_b") {
                tensors.append((t.name, t.dimensions, try gguf.floats(of: t)))
            }
        }
        var byBase: [String: (a: (dims: [Int], values: [Float])?, b: (dims: [Int], values: [Float])?)] = [:]
        for t in tensors {
            let isA = t.name.hasSuffix(".lora_a")
            let base = String(t.name.dropLast(".weight.lora_a".count))
            var e = byBase[base] ?? (nil, nil)
            if isA { e.a = (t.dims, t.values) } else { e.b = (t.dims, t.values) }
            byBase[base] = e
        }
        let adapter = LoRAAdapter<Float>()
        var norms: [(String, [Float])] = []
        var rankCounts: [Int: Int] = [:]
        for base in byBase.keys.sorted(by: AdapterFile.tensorOrder) {
            guard let a = byBase[base]!.a, let b = byBase[base]!.b, a.dims.count == 2, b.dims.count == 2, a.dims[0] == b.dims[0] else {
                throw LoRAError.format(path: path, reason: "'\(base)': lora_a and lora_b are missing or disagree on the rank")
            }
            let r = a.dims[0], x = a.dims[1], y = b.dims[1]  // a data [x][r], b data [y][r]
            if base.hasSuffix("_norm") {
                // Δw[e] = Σⱼ a[e][j]·b[0][j]
                norms.append((base, (0..<x).map { e in (0..<r).reduce(Float(0)) { $0 + a.values[e * r + $1] * b.values[$1] } }))
                continue
            }
            rankCounts[r, default: 0] += 1
            let pair: LoRAPair<Float>
            if base == "token_embd" {
                // ΔE[v][e] = Σⱼ b[v][j]·a[e][j]:  our B [embd, r] = a, our A [r, vocab] = bᵀ.
                var at = [Float](repeating: 0, count: r * y)
                for v in 0..<y { for j in 0..<r { at[j * y + v] = b.values[v * r + j] } }
                pair = try LoRAPair(name: base, rank: r, inFeatures: y, outFeatures: x, scale: 1, a: at, b: a.values)
            } else {
                // ΔW (out × in) = B·A with our A [r, in] = aᵀ, B [out, r] = b.
                var at = [Float](repeating: 0, count: r * x)
                for i in 0..<x { for j in 0..<r { at[j * x + i] = a.values[i * r + j] } }
                pair = try LoRAPair(name: base, rank: r, inFeatures: x, outFeatures: y, scale: 1, a: at, b: b.values)
            }
            adapter.add(pair)
        }
        let rank = headerRank ?? rankCounts.max { $0.value < $1.value }?.key ?? 8
        return Result(adapter: adapter, normDeltas: norms, rank: rank, headerAlpha: headerAlpha)
    }
}

extension String {
    func replacingSuffix(_ suffix: String, _ with: String) -> String {
        hasSuffix(suffix) ? String(dropLast(suffix.count)) + with : self
    }
}
