import ArgumentParser
import Foundation
import GGUF
import Tokenizer

/// Benchmarks that print figures (not timed tests). Build in release mode:
/// `swift build -c release --product lorakit-bench && .build/release/lorakit-bench tokenize`.
@main
struct Bench: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "lorakit-bench",
        abstract: "Measure LoRAKit's speed on this machine.",
        subcommands: [TokenizeBench.self, StepBench.self, MatVecBench.self, DequantizeBench.self, AllreduceBench.self, StudyBench.self,
                      MakeModelBench.self, Bf16AccuracyBench.self, SplitBench.self]
    )
}

func seconds(_ body: () throws -> Void) rethrows -> Double {
    let start = DispatchTime.now().uptimeNanoseconds
    try body()
    return Double(DispatchTime.now().uptimeNanoseconds - start) / 1e9
}

struct TokenizeBench: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "tokenize", abstract: "Tokenizer throughput (one core).")

    @Option(name: .shortAndLong, help: "Model or vocabulary GGUF.")
    var model = "models/SmolLM2-135M-Instruct.Q4_1.gguf"

    @Option(name: .shortAndLong, help: "Text file to tokenize.")
    var file = "../shared/data/shakespeare.txt"

    @Option(help: "Repetitions (the best is reported).")
    var repeats = 5

    func run() throws {
        var tokenizer: Tokenizer!
        let load = try seconds { tokenizer = try Tokenizer(file: GGUFFile(path: model)) }
        guard let data = FileManager.default.contents(atPath: file) else { throw ValidationError("cannot read \(file)") }
        let bytes = Array(data)
        var best = Double.infinity, count = 0
        var decodeBest = Double.infinity
        for _ in 0..<repeats {
            var ids: [Int32] = []
            best = min(best, seconds { ids = tokenizer.encode(bytes: bytes, addSpecial: false) })
            count = ids.count
            decodeBest = min(decodeBest, seconds { _ = tokenizer.decodeBytes(ids) })
        }
        let mb = Double(bytes.count) / 1e6
        print("tokenizer load: \(String(format: "%.3f", load)) s")
        print("encode: \(bytes.count) bytes -> \(count) tokens in \(String(format: "%.3f", best)) s = \(String(format: "%.1f", mb / best)) MB/s (best of \(repeats))")
        print("decode: \(String(format: "%.3f", decodeBest)) s = \(String(format: "%.1f", mb / decodeBest)) MB/s")
    }
}
