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
        discussion: "Adapters may be llama.cpp adapter GGUFs or the 2023 finetune's ggla files and checkpoints (whose norm deltas are merged too). Untouched tensors and all metadata are copied."
    )

    @Option(name: [.customShort("m"), .long], help: "The base model.") var model: String
    @Option(name: .customLong("lora"), help: "Adapter to merge with scale 1; repeatable.") var lora: [String] = []
    @Option(name: .customLong("lora-scaled"), parsing: .upToNextOption, help: ArgumentHelp("Adapter and scale: --lora-scaled FILE S; repeatable.", valueName: "FILE S"))
    var loraScaled: [String] = []
    @Option(name: [.customShort("o"), .long], help: "Output model (GGUF).") var output: String
    @Option(name: .customLong("type"), help: "Type of merged tensors: keep (each tensor's own type), f32, f16, bf16, q8_0, q4_0, q4_1.")
    var type = "keep"
    @Option(name: .customLong("eval"), help: "Also print the perplexity of base, base + adapters at run time, and the merged model on this text.")
    var eval: String?
    @Option(name: [.customShort("t"), .long], help: "Threads.") var threads: Int?

    func validate() throws {
        if lora.isEmpty && loraScaled.isEmpty { throw ValidationError("give at least one --lora or --lora-scaled") }
        if loraScaled.count % 2 != 0 || stride(from: 1, to: loraScaled.count, by: 2).contains(where: { Float(loraScaled[$0]) == nil }) {
            throw ValidationError("--lora-scaled takes a file and a number: --lora-scaled FILE S")
        }
        if type != "keep" && TensorType(name: type).map({ Quantize.supportedTypes.contains($0) }) != true {
            throw ValidationError("--type must be keep, f32, f16, bf16, q8_0, q4_0 or q4_1")
        }
    }

    var adapters: [(String, Float)] {
        lora.map { ($0, 1) } + stride(from: 0, to: loraScaled.count, by: 2).map { (loraScaled[$0], Float(loraScaled[$0 + 1])!) }
    }

    func run() throws {
        do { try merge() } catch let e as CLIError { throw e } catch { throw CLIError(String(describing: error)) }
    }

    /// An adapter file as pairs with their effective scales, plus norm deltas (seed files only).
    static func load(_ path: String) throws -> (LoRAAdapter<Float>, [(String, [Float])]) {
        if let f = try? GGUFFile(path: path), try f.metadata.stringIfPresent("general.type") == "adapter" {
            return (try AdapterFile.read(path: path, as: Float.self).0, [])
        }
        let seed = try SeedAdapter.read(path: path)
        return (seed.adapter, seed.normDeltas)
    }

    func merge() throws {
        BLAS.setThreadsIfGiven(threads)
        let base = try CLI.open(model)
        let llama = try LlamaModel<Float>(file: base)
        let loaded = try adapters.map { (path, scale) -> (LoRAAdapter<Float>, [(String, [Float])], Float) in
            let (a, norms) = try MergeCommand.load(path)
            try llama.validate(a, source: path)
            return (a, norms, scale)
        }
        var writer = GGUFWriter(metadata: base.metadata)
        writer.metadata.remove("general.alignment")
        var merged = 0
        var newTensors: [String: TensorInfo] = [:]
        for t in base.tensors { newTensors[t.name] = t }
        // A head adapter on a tied model needs its own output.weight: token_embd plus the delta.
        let needsOutput = llama.config.tiedEmbeddings && loaded.contains { $0.0["output"] != nil }
        var names = base.tensors.map(\.name)
        if needsOutput, let i = names.firstIndex(of: "output_norm.weight") { names.insert("output.weight", at: i + 1) }
        for name in names {
            let baseName = String(name.dropLast(".weight".count))
            let sourceName = name == "output.weight" && needsOutput ? "token_embd.weight" : name
            let info = try base.requireTensor(sourceName)
            let pairs = loaded.compactMap { a -> (LoRAPair<Float>, Float)? in a.0[baseName].map { ($0, a.2) } }
            let norms = loaded.compactMap { a -> ([Float], Float)? in a.1.first { $0.0 == baseName }.map { ($0.1, a.2) } }
            if pairs.isEmpty && norms.isEmpty && !(name == "output.weight" && needsOutput) {
                try writer.addTensor(name: name, type: info.type, dimensions: info.dimensions, bytes: Array(base.data(of: info)))
                continue
            }
            var w = try base.floats(of: info)  // [rows, cols] = [out, in]
            let cols = info.rowLength, rows = info.rowCount
            for (p, scale) in pairs {
                let s = p.scale * scale
                var delta = [Float](repeating: 0, count: p.outFeatures * p.inFeatures)  // B·A [out, in]
                Float.gemm(transA: false, transB: false, m: p.outFeatures, n: p.inFeatures, k: p.rank, alpha: s, a: p.b, lda: p.rank,
                           b: p.a, ldb: p.inFeatures, beta: 0, c: &delta, ldc: p.inFeatures)
                if baseName == "token_embd" {
                    // The embedding table is [vocabulary, embedding]: add the transpose of B·A [embedding, vocabulary].
                    for v in 0..<rows { for e in 0..<cols { w[v * cols + e] += delta[e * p.inFeatures + v] } }
                } else {
                    for i in 0..<w.count { w[i] += delta[i] }
                }
            }
            for (d, scale) in norms where d.count == w.count { for i in 0..<w.count { w[i] += scale * d[i] } }
            var outType: TensorType = type == "keep" ? info.type : TensorType(name: type)!
            if !Quantize.supportedTypes.contains(outType) || cols % outType.blockSize != 0 {
                CLI.printError("warning: \(name): \(outType) cannot be written by LoRAKit's quantizers; writing F16")
                outType = .f16
            }
            if info.dimensions.count == 1 { outType = .f32 }
            try writer.addTensor(name: name, dimensions: info.dimensions, values: w, type: outType)
            merged += 1
        }
        if type != "keep", let ft: UInt32 = ["f32": 0, "f16": 1, "q4_0": 2, "q4_1": 3, "q8_0": 7, "bf16": 32][type] {
            writer.metadata.set("general.file_type", .uint32(ft))
        }
        try writer.write(to: output)
        print("merged \(merged) tensors from \(adapters.count) adapter(s) into \(output)")
        if let eval { try evaluate(eval) }
    }

    func evaluate(_ path: String) throws {
        guard let data = FileManager.default.contents(atPath: path) else { throw CLIError("\(path): cannot read") }
        func ppl(_ modelPath: String, _ adapters: [(String, Float)]) throws -> Double {
            let file = try GGUFFile(path: modelPath)
            let m = try LlamaModel<Float>(file: file)
            for (p, s) in adapters { try m.attach(try MergeCommand.load(p).0, multiplier: s, source: p) }
            let tokens = try Tokenizer(file: file).encode(bytes: Array(data), addSpecial: false)
            let ctx = 256, chunks = min(8, tokens.count / ctx)
            guard chunks > 0 else { throw CLIError("\(path): too short for one chunk of \(ctx) tokens") }
            let input = Array(tokens[0..<(chunks * ctx)])
            let nll = try m.negativeLogLikelihoods(tokens: input, batch: chunks, scored: (ctx / 2)..<(ctx - 1))
            return exp(nll.reduce(0, +) / Double(nll.count))
        }
        print(String(format: "perplexity on %@ (up to 8 chunks of 256):", path))
        print(String(format: "  base                     %.4f", try ppl(model, [])))
        print(String(format: "  base + adapters at run   %.4f", try ppl(model, adapters)))
        print(String(format: "  merged (%@)         %.4f", type, try ppl(output, [])))
    }
}
