import Foundation
import GGUF
import Kernels

/// Opens any adapter LoRAKit knows — llama.cpp's adapter GGUF, a PEFT directory, the 2023 finetune's `ggla` files
/// and checkpoints — and says what it found. The one place that tells the formats apart.
public enum AdapterLoader {
    public enum Format: String, Sendable {
        case gguf = "llama.cpp adapter GGUF"
        case peft = "PEFT directory"
        case seed = "2023 finetune file"
    }

    /// An adapter as loaded, with what its file says about it.
    public struct Loaded {
        public var path: String
        public var format: Format
        /// Every pair, each with its own scale (alpha/r, or 1 for the finetune's files).
        public var adapter: LoRAAdapter<Float>
        public var alpha: Float
        public var rsLoRA: Bool
        /// The base architecture the file names (nil when it names none).
        public var architecture: String?
        public var baseModelName: String?
        /// Head counts recorded in the file (LoRAKit's adapters), needed to reorder Q/K rows for PEFT.
        public var heads: PEFT.Heads?
        /// Deltas of norm weights (the finetune's files only): no adapter carries them, a merge can.
        public var normDeltas: [(String, [Float])]
        /// The GGUF metadata (adapter GGUF only).
        public var metadata: Metadata?

        /// One line: format, tensor count, ranks, alpha, targets.
        public var summary: String {
            let ranks = Set(adapter.order.compactMap { adapter[$0]?.rank }).sorted().map(String.init).joined(separator: "/")
            let targets = Set(adapter.order.map { name -> String in
                name.hasPrefix("blk.") ? String(name.split(separator: ".").dropFirst(2).joined(separator: ".")) : name
            }).sorted().joined(separator: ",")
            return "\(format.rawValue), \(adapter.order.count) tensors, rank \(ranks), alpha \(alpha)\(rsLoRA ? " (rsLoRA)" : ""), targets \(targets)"
                + (normDeltas.isEmpty ? "" : ", \(normDeltas.count) norm deltas")
        }
    }

    /// Which format `path` holds, from its contents (a directory is read as PEFT).
    public static func format(of path: String) throws -> Format {
        var isDirectory: ObjCBool = false
        guard FileManager.default.fileExists(atPath: path, isDirectory: &isDirectory) else {
            throw LoRAError.format(path: path, reason: "no such file or directory")
        }
        let expected = "expected a llama.cpp adapter GGUF, a PEFT directory or a 2023 finetune ggla file or checkpoint"
        if isDirectory.boolValue {
            let config = (path as NSString).appendingPathComponent("adapter_config.json")
            guard FileManager.default.fileExists(atPath: config) else {
                throw LoRAError.format(path: path, reason: "a directory without adapter_config.json, so not a PEFT adapter (\(expected))")
            }
            return .peft
        }
        switch try leadingWord(path) {
        case GGUFFile.magic:
            let file = try GGUFFile(path: path)
            if try file.metadata.stringIfPresent("general.type") == "adapter" { return .gguf }
            if try file.metadata.stringIfPresent("training.type") == "finetune_lora" { return .seed }
            let kind = try file.metadata.stringIfPresent("general.type") ?? "model"
            throw LoRAError.format(path: path, reason: "a GGUF \(kind), not an adapter (\(expected))")
        case SeedAdapter.magic:
            return .seed
        default:
            throw LoRAError.format(path: path, reason: "not an adapter (\(expected))")
        }
    }

    /// The file's first four bytes as a little-endian UInt32, where formats keep their magic (nil when shorter).
    private static func leadingWord(_ path: String) throws -> UInt32? {
        guard let handle = FileHandle(forReadingAtPath: path) else {
            throw LoRAError.format(path: path, reason: "cannot be read")
        }
        defer { try? handle.close() }
        let bytes = [UInt8](try handle.read(upToCount: 4) ?? Data())
        guard bytes.count == 4 else { return nil }
        return bytes.reversed().reduce(0) { $0 << 8 | UInt32($1) }
    }

    /// Loads the adapter at `path`. `heads` (the base model's) is needed for PEFT directories, whose Q/K rows are
    /// in Hugging Face's order.
    public static func load(_ path: String, heads: PEFT.Heads? = nil) throws -> Loaded {
        switch try format(of: path) {
        case .gguf:
            let (adapter, info) = try AdapterFile.read(path: path, as: Float.self)
            var recorded: PEFT.Heads?
            if let h = try info.metadata.intIfPresent("lorakit.attention.head_count"),
               let kv = try info.metadata.intIfPresent("lorakit.attention.head_count_kv") {
                let architecture = info.architecture.isEmpty ? nil : info.architecture
                recorded = PEFT.Heads(heads: h, kvHeads: kv, permuted: PEFT.Heads.permuted(architecture: architecture),
                                      fusedGateUp: PEFT.Heads.fusedGateUp(architecture: architecture))
            }
            return Loaded(path: path, format: .gguf, adapter: adapter, alpha: info.alpha,
                          rsLoRA: try info.metadata.boolIfPresent("lorakit.rslora") ?? false,
                          architecture: info.architecture.isEmpty ? nil : info.architecture,
                          baseModelName: info.metadata["general.base_model.name"]?.stringValue, heads: recorded,
                          normDeltas: [], metadata: info.metadata)
        case .peft:
            guard let heads else {
                throw LoRAError.format(path: path, reason: "a PEFT adapter needs the base model's head counts (give the model)")
            }
            let (adapter, alpha, rsLoRA, base) = try PEFT.read(directory: path, heads: heads)
            return Loaded(path: path, format: .peft, adapter: adapter, alpha: alpha, rsLoRA: rsLoRA, architecture: nil,
                          baseModelName: base, heads: heads, normDeltas: [], metadata: nil)
        case .seed:
            let seed = try SeedAdapter.read(path: path)
            return Loaded(path: path, format: .seed, adapter: seed.adapter, alpha: Float(seed.rank), rsLoRA: false,
                          architecture: nil, baseModelName: nil, heads: nil, normDeltas: seed.normDeltas, metadata: nil)
        }
    }
}
