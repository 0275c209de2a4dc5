import ArgumentParser
import Foundation
import GGUF
import Llama
import LoRA

struct InfoCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "info",
        abstract: "Describe a GGUF file: architecture, hyperparameters, tokenizer, tensors and their types.",
        discussion: "Works on models, vocabulary-only files and adapter files (reading no tensor data). With -m, an adapter (GGUF, PEFT directory or a 2023 finetune file) is checked against the model and its change of every layer, ‖ΔW‖, is listed."
    )

    @Argument(help: "The GGUF file, or an adapter (with -m).")
    var file: String

    @Option(name: [.customShort("m"), .long], help: "The base model: say whether the adapter fits it, and how much it changes each layer.")
    var model: String?

    @Flag(help: "List every tensor (name, type, shape).")
    var tensors = false

    @Flag(help: "Print every metadata key (arrays summarized).")
    var metadata = false

    @Flag(help: "Print the report as one JSON object.")
    var json = false

    func run() throws {
        if let model {
            do { try describeAdapter(model: model) } catch let e as CLIError { throw e } catch { throw CLIError(String(describing: error)) }
            return
        }
        let gguf = try CLI.open(file)
        let summary = GGUFSummary(gguf)
        if json {
            print(summary.json(includeTensors: tensors, includeMetadata: metadata).text)
        } else {
            print(CLI.printable(summary.text(includeTensors: tensors, includeMetadata: metadata), oneLine: false), terminator: "")
        }
    }
}

extension InfoCommand {
    /// An adapter against its base model: whether it fits, what it holds, and ‖ΔW‖ by layer (where training changed
    /// the model most).
    func describeAdapter(model path: String) throws {
        let base = try LlamaModel<Float>(file: CLI.open(path))
        let loaded = try AdapterLoader.load(file, heads: PEFT.Heads(config: base.config))
        let adapter = loaded.adapter
        print("adapter      \(file)")
        print("holds        \(loaded.summary)")
        print("parameters   \(adapter.parameterCount) (\(String(format: "%.1f", Double(adapter.parameterCount * 4) / 1e6)) MB as float32)")
        do { try base.validate(adapter, source: file) } catch { throw CLIError("the adapter does not fit \(path): \(error)") }
        print("fits         yes: every tensor matches a weight of \(path)")
        var byLayer: [String: [(String, Double)]] = [:]
        for name in adapter.order {
            let parts = name.split(separator: ".")
            let layer = parts.count == 3 ? String(parts[1]) : name
            byLayer[layer, default: []].append((parts.last.map(String.init) ?? name, adapter[name]!.deltaNorm()))
        }
        print("‖ΔW‖ by layer (Frobenius norm of scale·B·A; the largest target in brackets):")
        let layers = byLayer.keys.sorted { (Int($0) ?? Int.max, $0) < (Int($1) ?? Int.max, $1) }
        for layer in layers {
            let entries = byLayer[layer]!
            let total = entries.reduce(0) { $0 + $1.1 * $1.1 }.squareRoot()
            let top = entries.max { $0.1 < $1.1 }!
            let label = Int(layer) != nil ? "layer " + layer : layer
            print("  " + label.padding(toLength: 12, withPad: " ", startingAt: 0)
                  + String(format: " %10.4f   [%@ %.4f]", total, top.0 as NSString, top.1))
        }
    }
}

/// The facts `lorakit info` reports about a GGUF file.
struct GGUFSummary {
    let file: GGUFFile
    let architecture: String?
    let fileType: String
    let hyperparameters: [(String, MetadataValue)]
    let typeCounts: [(TensorType, Int)]

    init(_ file: GGUFFile) {
        self.file = file
        let md = file.metadata
        architecture = md["general.architecture"]?.stringValue
        if let t = md["general.type"]?.stringValue { fileType = t }
        else if md["training.type"] != nil { fileType = "training checkpoint" }
        else if file.tensors.isEmpty { fileType = "vocabulary" }
        else { fileType = "model" }
        let prefix = (architecture ?? "") + "."
        hyperparameters = architecture == nil ? [] : md.entries.filter { $0.key.hasPrefix(prefix) }.map { ($0.key, $0.value) }
        var counts: [TensorType: Int] = [:]
        for t in file.tensors { counts[t.type, default: 0] += 1 }
        typeCounts = counts.sorted { $0.value != $1.value ? $0.value > $1.value : $0.key.rawValue < $1.key.rawValue }
    }

    var name: String? { file.metadata["general.name"]?.stringValue }
    var tokenizerModel: String? { file.metadata["tokenizer.ggml.model"]?.stringValue }
    var vocabularySize: Int? {
        if case let .array(_, items)? = file.metadata["tokenizer.ggml.tokens"] { return items.count }
        return nil
    }
    var hasChatTemplate: Bool { file.metadata["tokenizer.chat_template"] != nil }

    static func shape(_ dims: [Int]) -> String { "[" + dims.map(String.init).joined(separator: ", ") + "]" }

    static func humanCount(_ n: Int) -> String {
        if n >= 1_000_000_000 { return String(format1: Double(n) / 1e9) + " B" }
        if n >= 1_000_000 { return String(format1: Double(n) / 1e6) + " M" }
        if n >= 1_000 { return String(format1: Double(n) / 1e3) + " K" }
        return "\(n)"
    }

    static func humanBytes(_ n: Int) -> String {
        if n >= 1 << 30 { return String(format1: Double(n) / Double(1 << 30)) + " GiB" }
        if n >= 1 << 20 { return String(format1: Double(n) / Double(1 << 20)) + " MiB" }
        if n >= 1 << 10 { return String(format1: Double(n) / Double(1 << 10)) + " KiB" }
        return "\(n) B"
    }

    func text(includeTensors: Bool, includeMetadata: Bool) -> String {
        var out = ""
        let width = max(22, hyperparameters.map { $0.0.count - (architecture?.count ?? 0) + 2 }.max() ?? 0)
        func line(_ label: String, _ value: String) { out += label.padding(toLength: width) + value + "\n" }
        line("file", file.path)
        line("GGUF version", "\(file.version)")
        line("kind", fileType)
        line("architecture", architecture ?? "(none)")
        if let name { line("name", name) }
        for (key, value) in hyperparameters { line("  " + key.dropPrefix((architecture ?? "") + "."), value.description) }
        if let model = tokenizerModel {
            line("tokenizer", model + (file.metadata["tokenizer.ggml.pre"]?.stringValue.map { " (pre: \($0))" } ?? ""))
            line("vocabulary size", vocabularySize.map(String.init) ?? "(none)")
            line("chat template", hasChatTemplate ? "present" : "absent")
        }
        if fileType == "adapter", let alpha = file.metadata["adapter.lora.alpha"] {
            line("adapter", (file.metadata["adapter.type"]?.stringValue ?? "?") + ", alpha \(alpha)")
        }
        line("tensors", "\(file.tensors.count)" + (typeCounts.isEmpty ? "" : " (" + typeCounts.map { "\($0.1) \($0.0)" }.joined(separator: ", ") + ")"))
        line("parameters", "\(file.parameterCount) (\(GGUFSummary.humanCount(file.parameterCount)))")
        line("file size", "\(file.fileSize) bytes (\(GGUFSummary.humanBytes(file.fileSize)))")
        line("metadata keys", "\(file.metadata.count)")
        if includeMetadata {
            out += "\nmetadata:\n"
            for (key, value) in file.metadata.entries {
                var shown = value.description
                if case .string = value, shown.count > 120 || shown.contains("\n") {
                    shown = "(string, \(shown.utf8.count) bytes)"
                }
                out += "  \(key) [\(value.typeName)] = \(shown)\n"
            }
        }
        if includeTensors {
            out += "\ntensors:\n"
            let width = file.tensors.map(\.name.count).max() ?? 0
            for t in file.tensors {
                out += "  " + t.name.padding(toLength: width + 2) + t.type.name.padding(toLength: 6) + GGUFSummary.shape(t.dimensions) + "\n"
            }
        }
        return out
    }

    func json(includeTensors: Bool, includeMetadata: Bool) -> JSON {
        var pairs: [(String, JSON)] = [
            ("file", .string(file.path)),
            ("gguf_version", .int(Int64(file.version))),
            ("kind", .string(fileType)),
            ("architecture", architecture.map(JSON.string) ?? .null),
            ("name", name.map(JSON.string) ?? .null),
            ("hyperparameters", .object(hyperparameters.map { ($0.0, GGUFSummary.jsonValue($0.1, summarize: false)) })),
            ("tokenizer", tokenizerModel.map(JSON.string) ?? .null),
            ("vocabulary_size", vocabularySize.map { .int(Int64($0)) } ?? .null),
            ("chat_template", .bool(hasChatTemplate)),
            ("tensor_count", .int(Int64(file.tensors.count))),
            ("tensor_types", .object(typeCounts.map { ($0.0.name, .int(Int64($0.1))) })),
            ("parameter_count", .int(Int64(file.parameterCount))),
            ("file_size", .int(Int64(file.fileSize))),
        ]
        if includeMetadata {
            pairs.append(("metadata", .object(file.metadata.entries.map { ($0.key, GGUFSummary.jsonValue($0.value, summarize: true)) })))
        }
        if includeTensors {
            pairs.append(("tensors", .array(file.tensors.map { t in
                .object([("name", .string(t.name)), ("type", .string(t.type.name)),
                         ("shape", .array(t.dimensions.map { .int(Int64($0)) }))])
            })))
        }
        return .object(pairs)
    }

    static func jsonValue(_ value: MetadataValue, summarize: Bool) -> JSON {
        switch value {
        case let .float32(f): return .double(Double(f))
        case let .float64(d): return .double(d)
        case let .bool(b): return .bool(b)
        case let .string(s): return .string(s)
        case let .uint64(u): return Int64(exactly: u).map(JSON.int) ?? .double(Double(u))
        case let .array(type, items):
            if summarize && items.count > 16 {
                return .object([("type", .string("array of \(type)")), ("count", .int(Int64(items.count))),
                                ("first", .array(items.prefix(8).map { jsonValue($0, summarize: true) }))])
            }
            return .array(items.map { jsonValue($0, summarize: summarize) })
        default: return value.integerValue.map(JSON.int) ?? .null
        }
    }
}

extension String {
    init(format1 value: Double) {
        let scaled = (value * 10).rounded() / 10
        self = scaled == scaled.rounded() ? String(Int(scaled)) + ".0" : String(scaled)
    }

    func padding(toLength length: Int) -> String {
        count >= length ? self + " " : self + String(repeating: " ", count: length - count)
    }

    func dropPrefix(_ prefix: String) -> String { hasPrefix(prefix) ? String(dropFirst(prefix.count)) : self }
}
