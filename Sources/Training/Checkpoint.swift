import GGUF
import Kernels
import LoRA

/// A training checkpoint: the seed's GGUF layout (`training.type = finetune_lora`, `training.*` and
/// `optimizer.*` keys) holding the adapter, the AdamW moments of every tensor, the step, the data position and
/// what is needed to continue bit for bit.
public struct Checkpoint {
    public var adapter: LoRAAdapter<Float>
    public var moments: [String: AdamMoments]
    public var iteration: Int
    public var batcher: Batcher.State
    public var seed: UInt64
    public var alpha: Float
    public var rsLoRA: Bool
    public var tokensSeen: Int
    public var bestLoss: Float
    public var previousLoss: Float
    public var noImprovement: Int
    /// What the frozen products computed in ("float32", "bf16"; `FrozenProductInputs`), nil in older checkpoints: a
    /// run resumed in the same precision continues bit for bit.
    public var frozenProducts: String? = nil

    static func momentKey(_ name: String, _ half: String) -> String { name + ".weight." + half }

    public func write(to path: String) throws {
        var md = Metadata()
        md.set("training.type", .string("finetune_lora"))
        md.set("general.architecture", .string("llama"))
        md.set("training.file_version", .uint32(1))
        md.set("training.iteration_count", .uint64(UInt64(iteration)))
        md.set("training.token_count", .uint64(UInt64(tokensSeen)))
        md.set("training.epoch_count", .uint64(UInt64(batcher.epoch)))
        md.set("training.shuffle.next_sample", .uint64(UInt64(batcher.cursor)))
        md.set("training.shuffle.rng_state", .string(String(seed)))
        md.set("optimizer.file_version", .uint32(0))
        md.set("optimizer.type", .string("adam"))
        md.set("optimizer.iteration_count", .uint32(UInt32(iteration)))
        md.set("optimizer.parameter_count", .uint64(UInt64(adapter.parameterCount)))
        md.set("optimizer.just_initialized", .bool(iteration == 0))
        md.set("optimizer.adam.best_loss", .float32(bestLoss))
        md.set("optimizer.adam.previous_loss", .float32(previousLoss))
        md.set("optimizer.adam.no_improvement_count", .uint32(UInt32(noImprovement)))
        md.set("lorakit.alpha", .float32(alpha))
        md.set("lorakit.rslora", .bool(rsLoRA))
        if let frozenProducts { md.set("lorakit.frozen_products", .string(frozenProducts)) }
        var writer = GGUFWriter(metadata: md)
        for name in adapter.order {
            let p = adapter[name]!
            try writer.addTensor(name: name + ".weight.lora_a", dimensions: [p.inFeatures, p.rank], values: p.a)
            try writer.addTensor(name: name + ".weight.lora_b", dimensions: [p.rank, p.outFeatures], values: p.b)
            let m = moments[name] ?? AdamMoments(count: p.a.count + p.b.count)
            try writer.addTensor(name: name + ".weight.adam_m", dimensions: [m.m.count], values: m.m)
            try writer.addTensor(name: name + ".weight.adam_v", dimensions: [m.v.count], values: m.v)
        }
        try writer.write(to: path)
    }

    /// Reads a checkpoint written by `write`. Pair scales are set from alpha and rank.
    public static func read(path: String) throws -> Checkpoint {
        let file = try GGUFFile(path: path)
        let md = file.metadata
        guard try md.stringIfPresent("training.type") == "finetune_lora" else {
            throw LoRAError.format(path: path, reason: "not a training checkpoint (training.type is not finetune_lora)")
        }
        guard md.contains("lorakit.alpha") else {
            throw LoRAError.format(path: path, reason: "a checkpoint of the 2023 finetune cannot be resumed (its LoRA has no alpha scaling and trains norms); convert its adapter with `lorakit convert`")
        }
        let alpha = try md.float("lorakit.alpha"), rs = try md.boolIfPresent("lorakit.rslora") ?? false
        let adapter = LoRAAdapter<Float>()
        var moments: [String: AdamMoments] = [:]
        let names = file.tensors.compactMap { t -> String? in
            t.name.hasSuffix(".weight.lora_a") ? String(t.name.dropLast(".weight.lora_a".count)) : nil
        }
        for name in names {
            let ta = try file.requireTensor(name + ".weight.lora_a"), tb = try file.requireTensor(name + ".weight.lora_b")
            guard ta.dimensions.count == 2, tb.dimensions.count == 2, ta.dimensions[1] == tb.dimensions[0] else {
                throw LoRAError.format(path: path, reason: "LoRA tensors of '\(name)' have inconsistent shapes")
            }
            let r = ta.dimensions[1]
            let pair = try LoRAPair<Float>(name: name, rank: r, inFeatures: ta.dimensions[0], outFeatures: tb.dimensions[1],
                                           scale: loraScale(alpha: alpha, rank: r, rsLoRA: rs),
                                           a: try file.floats(of: ta), b: try file.floats(of: tb))
            adapter.add(pair)
            let m = try file.floats(of: try file.requireTensor(name + ".weight.adam_m"))
            let v = try file.floats(of: try file.requireTensor(name + ".weight.adam_v"))
            guard m.count == pair.parameterCount, v.count == m.count else {
                throw LoRAError.format(path: path, reason: "optimizer moments of '\(name)' do not match its LoRA tensors")
            }
            moments[name] = AdamMoments(m: m, v: v)
        }
        return Checkpoint(adapter: adapter, moments: moments, iteration: try md.int("training.iteration_count"),
                          batcher: Batcher.State(epoch: try md.int("training.epoch_count"), cursor: try md.int("training.shuffle.next_sample")),
                          seed: UInt64(try md.string("training.shuffle.rng_state")) ?? 0, alpha: alpha, rsLoRA: rs,
                          tokensSeen: try md.int("training.token_count"),
                          bestLoss: try md.float("optimizer.adam.best_loss"), previousLoss: try md.float("optimizer.adam.previous_loss"),
                          noImprovement: try md.int("optimizer.adam.no_improvement_count"),
                          frozenProducts: try md.stringIfPresent("lorakit.frozen_products"))
    }
}

extension AdamMoments {
    public init(m: [Float], v: [Float]) {
        self.init(count: 0)
        self.m = m
        self.v = v
    }
}
