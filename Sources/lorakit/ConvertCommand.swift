import ArgumentParser
import Foundation
import GGUF
import Llama
import LoRA

struct ConvertCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "convert",
        abstract: "Convert adapters: PEFT ⇄ llama.cpp GGUF, and the 2023 finetune's ggla files and checkpoints → GGUF.",
        discussion: """
        IN may be a PEFT directory (adapter_config.json + adapter_model.safetensors), a llama.cpp adapter GGUF, a \
        ggla file or a finetune_lora checkpoint. Q/K rows need the model's head counts: give -m for PEFT input, \
        or for GGUF adapters not written by LoRAKit.
        """
    )

    @Argument(help: "The adapter to convert.") var input: String
    @Argument(help: "Output: a .gguf file, or a directory for --to peft.") var output: String
    @Option(name: .customLong("to"), help: "gguf or peft (default: peft for a GGUF adapter, gguf otherwise).") var to: String?
    @Option(name: [.customShort("m"), .long], help: "The base model (for head counts and shape checks).") var model: String?

    func validate() throws {
        if let to, to != "gguf" && to != "peft" { throw ValidationError("--to must be gguf or peft") }
    }

    func heads(adapterMetadata: Metadata?) throws -> (PEFT.Heads, LlamaModel<Float>?) {
        if let model {
            let m = try LlamaModel<Float>(file: GGUFFile(path: model))
            return (PEFT.Heads(heads: m.config.heads, kvHeads: m.config.kvHeads), m)
        }
        if let md = adapterMetadata, let h = try md.intIfPresent("lorakit.attention.head_count"),
           let kv = try md.intIfPresent("lorakit.attention.head_count_kv") {
            return (PEFT.Heads(heads: h, kvHeads: kv), nil)
        }
        throw CLIError("the attention head counts are needed to reorder Q/K rows: give the base model with -m")
    }

    func run() throws {
        do { try convert() } catch let e as CLIError { throw e } catch { throw CLIError(String(describing: error)) }
    }

    func convert() throws {
        var isDirectory: ObjCBool = false
        guard FileManager.default.fileExists(atPath: input, isDirectory: &isDirectory) else { throw CLIError("\(input): no such file or directory") }
        if isDirectory.boolValue {
            let (h, model) = try heads(adapterMetadata: nil)
            let (adapter, alpha, rs, base) = try PEFT.read(directory: input, heads: h)
            try model?.validate(adapter, source: input)
            var d = AdapterFile.Description(alpha: alpha)
            d.rsLoRA = rs
            d.baseModelName = base
            d.heads = (h.heads, h.kvHeads)
            try AdapterFile.write(adapter, description: d, to: output)
            print("converted PEFT adapter (\(adapter.order.count) tensors, alpha \(alpha)\(rs ? ", rsLoRA" : "")) → \(output)")
            return
        }
        let file = try? GGUFFile(path: input)
        if let file, try file.metadata.stringIfPresent("general.type") == "adapter" {
            guard (to ?? "peft") == "peft" else { throw CLIError("\(input) is already a llama.cpp adapter; use --to peft") }
            let (adapter, info) = try AdapterFile.read(path: input, as: Float.self)
            let (h, model) = try heads(adapterMetadata: info.metadata)
            try model?.validate(adapter, source: input)
            let rs = try info.metadata.boolIfPresent("lorakit.rslora") ?? false
            // Files without alpha use scale 1: PEFT expresses that as alpha = r.
            let alpha = info.alpha == 0 ? Float(adapter[adapter.order[0]]!.rank) : info.alpha
            try PEFT.write(adapter, alpha: alpha, rsLoRA: rs, baseModel: info.metadata["general.base_model.name"]?.stringValue,
                           heads: h, to: output)
            print("converted llama.cpp adapter (\(adapter.order.count) tensors) → PEFT directory \(output)")
            return
        }
        // The 2023 finetune's files.
        let seed = try SeedAdapter.read(path: input)
        var dropped: [String] = seed.normDeltas.map(\.0)
        if let model {
            let m = try LlamaModel<Float>(file: GGUFFile(path: model))
            if m.config.tiedEmbeddings, seed.adapter["output"] != nil {
                dropped.append("output (the model's head is tied to token_embd; llama.cpp cannot load an output LoRA for it)")
            }
            if m.config.tiedEmbeddings, seed.adapter["token_embd"] != nil {
                dropped.append("token_embd (on a tied model llama.cpp also applies it to the head and fails)")
            }
        }
        let kept = LoRAAdapter<Float>()
        for name in seed.adapter.order where !dropped.contains(where: { $0.hasPrefix(name + " ") }) {
            kept.add(seed.adapter[name]!)
        }
        // Scale 1 as trained: alpha = r makes llama.cpp's alpha/r equal 1 (other ranks are folded into B).
        var d = AdapterFile.Description(alpha: Float(seed.rank))
        d.extra = [("converted_from", .string(input))]
        try AdapterFile.write(kept, description: d, to: output)
        print("converted the finetune's adapter (\(kept.order.count) tensors, scale 1 as trained) → \(output)")
        if !dropped.isEmpty {
            CLI.printError("warning: \(dropped.count) tensors cannot be expressed in an adapter and were left out: "
                           + dropped.prefix(6).joined(separator: ", ") + (dropped.count > 6 ? ", …" : "")
                           + "; `lorakit merge -m BASE --lora \(input) -o OUT.gguf` applies them all")
        }
    }
}
