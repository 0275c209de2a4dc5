import ArgumentParser
import Foundation
import GGUF
import Kernels
import Llama
import LoRA
import Tokenizer

struct MergeCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "merge",
        abstract: "Merge adapters into the base model: W' = W + Σ sᵢ·(alphaᵢ/rᵢ)·Bᵢ·Aᵢ, written as a new GGUF.",
        discussion: "Adapters may be llama.cpp adapter GGUFs, PEFT directories, or the 2023 finetune's ggla files and checkpoints (whose norm deltas are merged too). Untouched tensors and all metadata are copied."
    )

    @Option(name: [.customShort("m"), .long], help: "The base model.") var model: String
    @OptionGroup var adapters: AdapterOptions
    @Option(name: [.customShort("o"), .long], help: "Output model (GGUF).") var output: String
    @Option(name: .customLong("type"), help: "Type of merged tensors: auto (float tensors keep their type, quantized ones become F16 as llama-export-lora writes them, so nothing of the adapter is rounded away), keep (each tensor requantized into its own type: the file's size, but much of a small adapter rounded away; --eval shows how much), f32, f16, bf16, q8_0, q4_0, q4_1, q5_0, q5_1, q2_k, q3_k, q4_k, q5_k, q6_k (quantized as llama-quantize does without an importance matrix).")
    var type = "auto"
    @Option(name: .customLong("eval"), help: "Also print the perplexity of base, base + adapters at run time, and the merged model on this text.")
    var eval: String?
    @Option(name: [.customShort("t"), .long], parsing: .unconditional, help: "Threads.") var threads: Int?

    var storage: Merger.Storage? {
        switch type {
        case "auto": return .widened
        case "keep": return .keep
        default: return TensorType(name: type).flatMap { Quantize.supportedTypes.contains($0) ? .type($0) : nil }
        }
    }

    func validate() throws {
        if adapters.isEmpty { throw ValidationError("give at least one --lora or --lora-scaled") }
        if storage == nil {
            throw ValidationError("--type must be auto, keep, " + Quantize.supportedTypes.map(\.name).joined(separator: ", ").lowercased())
        }
    }

    func run() throws {
        do { try merge() } catch let e as CLIError { throw e } catch { throw CLIError(String(describing: error)) }
    }

    func merge() throws {
        BLAS.setThreadsIfGiven(threads)
        try OutputGuard.check(outputs: [OutputGuard.File("-o", output)],
                              inputs: [OutputGuard.File("the model", model)] + adapters.list.map {
                                  OutputGuard.File("the adapter", $0.path, contents: ["adapter_model.safetensors", "adapter_config.json"])
                              } + (eval.map { [OutputGuard.File("--eval", $0)] } ?? []))
        let base = try CLI.open(model)
        let llama = try LlamaModel<Float>(file: base)
        let loaded = try adapters.load(for: llama, architecture: try base.metadata.string("general.architecture"))
        let inputs = loaded.map { Merger.Input(adapter: $0.0.adapter, multiplier: $0.1, normDeltas: $0.0.normDeltas) }
        guard let storage else { throw CLIError("--type \(type) is not a type merged tensors can be written in") }
        let result = try Merger(storage: storage).merge(model: llama, inputs: inputs, to: output)
        // One line per kind of fallback, not per tensor (a 7B model has hundreds).
        var kinds: [String: [String]] = [:], order: [String] = []
        for (tensor, requested, rowLength, written) in result.fallbacks {
            let kind = "rows of \(rowLength) are not whole \(requested.name) blocks of \(requested.blockSize); wrote \(written.name)"
            if kinds[kind] == nil { order.append(kind) }
            kinds[kind, default: []].append(tensor)
        }
        for kind in order {
            let tensors = kinds[kind]!
            CLI.printError("warning: \(tensors.count == 1 ? tensors[0] : "\(tensors.count) tensors (\(tensors[0]), …)"): \(kind)")
        }
        print("merged \(result.mergedTensors) tensors from \(inputs.count) adapter(s) into \(output)")
        if let eval { try evaluate(eval, adapters: loaded) }
    }

    /// Perplexity of base, base + adapters at run time, and the merged model on the first 8 chunks of 256 tokens.
    func evaluate(_ path: String, adapters loaded: [(AdapterLoader.Loaded, Float)]) throws {
        let data: [UInt8]
        do { data = try FileReader.readAll(path) } catch { throw CLIError(String(describing: error)) }
        func perplexity(_ modelPath: String, _ adapters: [(AdapterLoader.Loaded, Float)]) throws -> Double {
            let file = try GGUFFile(path: modelPath)
            let m = try LlamaModel<Float>(file: file)
            for (a, s) in adapters { try m.attach(a.adapter, multiplier: s, source: a.path) }
            let tokenizer = try Tokenizer(file: file)
            let tokens = tokenizer.encode(bytes: Array(data), addSpecial: true, parseSpecial: false)
            let scoring = Perplexity(context: 256, maxChunks: 8, bos: tokenizer.vocabulary.addBOS ? tokenizer.vocabulary.bos : nil)
            return try scoring.evaluate(model: m, tokens: tokens).perplexity
        }
        print("perplexity on \(path) (up to 8 chunks of 256):")
        print(String(format: "  base                     %.4f", try perplexity(model, [])))
        print(String(format: "  base + adapters at run   %.4f", try perplexity(model, loaded)))
        print(String(format: "  merged (%@)         %.4f", type, try perplexity(output, [])))
    }
}
