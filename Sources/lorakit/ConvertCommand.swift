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

    func run() throws {
        do { try convert() } catch let e as CLIError { throw e } catch { throw CLIError(String(describing: error)) }
    }

    func convert() throws {
        let base = try model.map { try LlamaModel<Float>(file: GGUFFile(path: $0)) }
        let heads = base.map { PEFT.Heads(config: $0.config) }
        let loaded = try AdapterLoader.load(input, heads: heads)
        try base?.validate(loaded.adapter, source: input)
        let target = to ?? (loaded.format == .gguf ? "peft" : "gguf")
        let peftFiles = ["adapter_config.json", "adapter_model.safetensors"]
        try OutputGuard.check(outputs: [OutputGuard.File("the output", output, directory: target == "peft", contents: peftFiles)],
                              inputs: [OutputGuard.File("the input", input, contents: peftFiles)]
                                  + (model.map { [OutputGuard.File("the model", $0)] } ?? []))
        let report: AdapterConversion.Report
        if target == "peft" {
            report = try AdapterConversion.toPEFT(loaded, heads: heads, to: output)
            print("converted \(loaded.format.rawValue) (\(report.tensors) tensors) → PEFT directory \(output)")
        } else {
            guard loaded.format != .gguf else { throw CLIError("\(input) is already a llama.cpp adapter; use --to peft") }
            report = try AdapterConversion.toGGUF(loaded, tiedHead: base?.config.tiedEmbeddings ?? false,
                                                 architecture: base?.config.architecture, to: output)
            print("converted \(loaded.summary)\(loaded.format == .seed ? ", scale 1 as trained" : "") → \(output)")
        }
        if !report.leftOut.isEmpty {
            CLI.printError("warning: \(report.leftOut.count) tensors cannot be expressed in an adapter and were left out: "
                           + report.leftOut.prefix(6).joined(separator: ", ") + (report.leftOut.count > 6 ? ", …" : "")
                           + "; `lorakit merge -m BASE --lora \(input) -o OUT.gguf` applies them all")
        }
    }
}
