import GGUF
import Kernels

extension AdapterFile {
    /// What our own keys record beside what llama.cpp reads.
    public struct Description: Sendable {
        public var architecture: String = "llama"
        public var alpha: Float
        public var rsLoRA = false
        public var baseModelName: String?
        public var baseModelFingerprint: String?
        /// Attention heads of the base (needed to export Q/K to PEFT's row order).
        public var heads: (heads: Int, kvHeads: Int)?
        /// Extra keys (training summary and the like) written under `lorakit.`.
        public var extra: [(String, MetadataValue)] = []
        public init(alpha: Float) { self.alpha = alpha }
    }

    /// Writes `adapter` in llama.cpp's adapter format (F32), through a temporary file and a rename.
    ///
    /// llama.cpp scales every tensor by alpha / r; a pair whose own scale differs (rank-stabilized LoRA, a
    /// per-tensor alpha) has the ratio folded into B so that llama.cpp computes exactly our update.
    public static func write(_ adapter: LoRAAdapter<Float>, description d: Description, to path: String) throws {
        var md = Metadata()
        md.set("general.architecture", .string(d.architecture))
        md.set("general.type", .string("adapter"))
        md.set("adapter.type", .string("lora"))
        md.set("adapter.lora.alpha", .float32(d.alpha))
        if let name = d.baseModelName { md.set("general.base_model.name", .string(name)) }
        md.set("lorakit.rslora", .bool(d.rsLoRA))
        let targets = Set(adapter.order.map { name -> String in
            name.hasPrefix("blk.") ? String(name.split(separator: ".").dropFirst(2).joined(separator: ".")) : name
        }).sorted()
        md.set("lorakit.targets", .array(.string, targets.map { .string($0) }))
        md.set("lorakit.ranks", .array(.uint32, adapter.order.map { .uint32(UInt32(adapter[$0]!.rank)) }))
        if let fp = d.baseModelFingerprint { md.set("lorakit.base_model.fingerprint", .string(fp)) }
        if let h = d.heads {
            md.set("lorakit.attention.head_count", .uint32(UInt32(h.heads)))
            md.set("lorakit.attention.head_count_kv", .uint32(UInt32(h.kvHeads)))
        }
        for (k, v) in d.extra { md.set("lorakit." + k, v) }
        var writer = GGUFWriter(metadata: md)
        for name in adapter.order {
            let p = adapter[name]!
            let llamaScale = loraScale(alpha: d.alpha, rank: p.rank)
            let fold = p.scale / llamaScale
            let b = fold == 1 ? p.b : p.b.map { $0 * fold }
            if name == "token_embd" {
                // Flipped: lora_a ne [r, vocabulary] holds Aᵀ, lora_b ne [r, embedding] holds B.
                var at = [Float](repeating: 0, count: p.a.count)
                for j in 0..<p.rank { for v in 0..<p.inFeatures { at[v * p.rank + j] = p.a[j * p.inFeatures + v] } }
                try writer.addTensor(name: name + ".weight.lora_a", dimensions: [p.rank, p.inFeatures], values: at)
                try writer.addTensor(name: name + ".weight.lora_b", dimensions: [p.rank, p.outFeatures], values: b)
            } else {
                try writer.addTensor(name: name + ".weight.lora_a", dimensions: [p.inFeatures, p.rank], values: p.a)
                try writer.addTensor(name: name + ".weight.lora_b", dimensions: [p.rank, p.outFeatures], values: b)
            }
        }
        try writer.write(to: path)
    }

    /// A short fingerprint of a base model file: its size and tensor table (names, types, shapes, offsets).
    public static func fingerprint(of file: GGUFFile) -> String {
        var h: UInt64 = 0xcbf2_9ce4_8422_2325
        func mix(_ s: String) { for b in s.utf8 { h = (h ^ UInt64(b)) &* 0x100_0000_01b3 } }
        mix("\(file.fileSize)")
        for t in file.tensors { mix("\(t.name):\(t.type.rawValue):\(t.dimensions):\(t.offset);") }
        return String(h, radix: 16)
    }
}
