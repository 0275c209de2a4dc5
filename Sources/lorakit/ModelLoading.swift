import ArgumentParser
import GGUF
import Kernels
import Llama
import LoRA
import Tokenizer

/// Options shared by the commands that run a model: the model, runtime adapters, threads.
struct ModelOptions: ParsableArguments {
    @Option(name: [.customShort("m"), .long], help: "The base model (GGUF).")
    var model: String

    @Option(name: .customLong("lora"), help: "Apply a LoRA adapter (llama.cpp GGUF) at run time; repeatable.")
    var lora: [String] = []

    @Option(name: .customLong("lora-scaled"), parsing: .upToNextOption,
            help: ArgumentHelp("Apply an adapter with a scale: --lora-scaled FILE S; repeatable.", valueName: "FILE S"))
    var loraScaled: [String] = []

    @Option(name: [.customShort("t"), .long], help: "Threads for matrix products (default: all cores).")
    var threads: Int?

    @Flag(name: .customLong("cache-weights"), help: "Keep every weight dequantized in memory (faster, more memory).")
    var cacheWeights = false

    func validate() throws {
        if loraScaled.count % 2 != 0 { throw ValidationError("--lora-scaled takes a file and a scale: --lora-scaled FILE S") }
        for i in stride(from: 1, to: loraScaled.count, by: 2) where Float(loraScaled[i]) == nil {
            throw ValidationError("--lora-scaled: '\(loraScaled[i])' is not a number (expected --lora-scaled FILE S)")
        }
        if let threads, threads < 1 { throw ValidationError("--threads must be at least 1") }
    }

    /// (path, scale) of every runtime adapter in command-line order.
    var adapterList: [(String, Float)] {
        lora.map { ($0, 1) } + stride(from: 0, to: loraScaled.count, by: 2).map { (loraScaled[$0], Float(loraScaled[$0 + 1])!) }
    }

    func applyThreads() {
        BLAS.setThreads(threads ?? CLI.coreCount)
    }

    /// Opens the model, its tokenizer and the adapters; every failure is one `error:` line.
    func load() throws -> (GGUFFile, LlamaModel<Float>, Tokenizer) {
        applyThreads()
        let file = try CLI.open(model)
        do {
            let llama = try LlamaModel<Float>(file: file, cacheWeights: cacheWeights)
            let tokenizer = try Tokenizer(file: file)
            for (path, scale) in adapterList {
                let (adapter, info) = try AdapterFile.read(path: path, as: Float.self)
                let arch = try file.metadata.string("general.architecture")
                if !info.architecture.isEmpty && info.architecture != arch {
                    throw CLIError("\(path): adapter is for architecture '\(info.architecture)', the model is '\(arch)'")
                }
                try llama.attach(adapter, multiplier: scale, source: path)
            }
            return (file, llama, tokenizer)
        } catch let e as CLIError { throw e } catch { throw CLIError(String(describing: error)) }
    }
}
