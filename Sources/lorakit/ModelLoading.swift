import ArgumentParser
import GGUF
import Kernels
import Llama
import LoRA
import Tokenizer

/// Adapters applied at run time (or merged): `--lora FILE` and `--lora-scaled FILE S`, repeatable. A file may be any
/// adapter `AdapterLoader` opens (llama.cpp GGUF, PEFT directory, the 2023 finetune's files).
struct AdapterOptions: ParsableArguments {
    @Option(name: .customLong("lora"), help: "Apply an adapter (llama.cpp GGUF, PEFT directory, or a 2023 finetune file); repeatable.")
    var lora: [String] = []

    @Option(name: .customLong("lora-scaled"), parsing: .unconditionalSingleValue,
            help: ArgumentHelp("Apply an adapter with a scale: --lora-scaled FILE S; repeatable.", valueName: "FILE S"))
    var loraScaled: [String] = []

    func validate() throws {
        if loraScaled.count % 2 != 0 { throw ValidationError("--lora-scaled takes a file and a scale: --lora-scaled FILE S") }
        for i in stride(from: 1, to: loraScaled.count, by: 2) where Float(loraScaled[i]).map({ $0.isFinite }) != true {
            throw ValidationError("--lora-scaled: '\(loraScaled[i])' is not a finite number (expected --lora-scaled FILE S)")
        }
    }

    var isEmpty: Bool { lora.isEmpty && loraScaled.isEmpty }

    /// (path, scale) of every adapter in command-line order.
    var list: [(path: String, scale: Float)] {
        lora.map { ($0, 1) } + stride(from: 0, to: loraScaled.count, by: 2).map { (loraScaled[$0], Float(loraScaled[$0 + 1])!) }
    }

    /// Loads every adapter for `model`, checking that it fits.
    func load(for model: LlamaModel<Float>, architecture: String) throws -> [(AdapterLoader.Loaded, Float)] {
        try list.map { path, scale in
            let loaded = try AdapterLoader.load(path, heads: PEFT.Heads(config: model.config))
            if let arch = loaded.architecture, arch != architecture {
                throw CLIError("\(path): adapter is for architecture '\(arch)', the model is '\(architecture)'")
            }
            try model.validate(loaded.adapter, source: path)
            CLI.printError("adapter \(path): \(loaded.summary), all matched, applied × \(scale)")
            return (loaded, scale)
        }
    }
}

/// Options shared by the commands that run a model: the model, runtime adapters, threads.
struct ModelOptions: ParsableArguments {
    @Option(name: [.customShort("m"), .long], help: "The base model (GGUF).")
    var model: String

    @OptionGroup var adapters: AdapterOptions

    @Option(name: [.customShort("t"), .long], parsing: .unconditional, help: "Threads for matrix products (default: all cores).")
    var threads: Int?

    @Flag(name: .customLong("cache-weights"), help: "Keep every weight dequantized in memory (faster, more memory).")
    var cacheWeights = false

    @Flag(name: .customLong("mmap"), help: "Map the model file instead of reading it into memory: starts sooner, peaks lower and lets the OS drop weights under memory pressure; generation 12-15 % slower.")
    var mapModel = false

    func validate() throws {
        if let threads, threads < 1 { throw ValidationError("--threads must be at least 1 (got \(threads))") }
    }

    func applyThreads() {
        BLAS.setThreads(threads ?? CLI.coreCount)
    }

    /// Opens the model, its tokenizer and the adapters; every failure is one `error:` line.
    func load() throws -> (GGUFFile, LlamaModel<Float>, Tokenizer) {
        applyThreads()
        let file = try CLI.open(model, storage: mapModel ? .mapped : .inMemory)
        do {
            let llama = try LlamaModel<Float>(file: file, cacheWeights: cacheWeights)
            let tokenizer = try Tokenizer(file: file)
            try llama.check(tokenizer: tokenizer)
            let architecture = try file.metadata.string("general.architecture")
            for (loaded, scale) in try adapters.load(for: llama, architecture: architecture) {
                try llama.attach(loaded.adapter, multiplier: scale, source: loaded.path)
            }
            return (file, llama, tokenizer)
        } catch let e as CLIError { throw e } catch { throw CLIError(String(describing: error)) }
    }
}
