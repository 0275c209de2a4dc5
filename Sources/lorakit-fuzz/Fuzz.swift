// Fuzz targets for every parser a user's file reaches. Built with libFuzzer (`scripts/fuzz.sh`, which compiles
// with -sanitize=fuzzer,address and -D FUZZING) the target is chosen by LORAKIT_FUZZ_TARGET; built normally,
// `lorakit-fuzz TARGET FILE…` replays inputs (a corpus, or a crash that became a test).
//
// Targets: gguf (metadata, tensor infos, dequantization of what they point to), adapter (llama.cpp adapter GGUF, the
// 2023 finetune's ggla and checkpoint files), peft (adapter_config.json + safetensors header), jsonl (training data
// with chat rendering and masks), tokenizer (SentencePiece and byte-level BPE on arbitrary bytes).
#if canImport(Glibc)
import Glibc
#endif
import Foundation
import GGUF
import LoRA
import Llama
import Tokenizer
import Training

enum Fuzz {
    static let scratch = "/dev/shm/lorakit-fuzz-\(getpid())"
    static let packageRoot = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
        .deletingLastPathComponent().path
    static let shared = ProcessInfo.processInfo.environment["LORAKIT_SHARED"] ?? packageRoot + "/../shared"

    /// One of llama.cpp's tokenizer test vocabularies: fetched into models/vocab, or in the shared test data.
    static func vocabulary(_ name: String) -> String {
        let fetched = packageRoot + "/models/vocab/ggml-vocab-\(name).gguf"
        return FileManager.default.fileExists(atPath: fetched) ? fetched : shared + "/testdata/vocab/ggml-vocab-\(name).gguf"
    }

    /// Writes `bytes` where the path-based readers can open them.
    static func file(_ bytes: UnsafeRawBufferPointer, _ name: String = "input") -> String {
        mkdir(scratch, 0o700)
        let path = scratch + "/" + name
        let fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0o600)
        if let base = bytes.baseAddress, bytes.count > 0 { _ = write(fd, base, bytes.count) }
        close(fd)
        return path
    }

    static func gguf(_ bytes: UnsafeRawBufferPointer) {
        guard let file = try? GGUFFile(path: file(bytes)) else { return }
        _ = try? LlamaConfig(file: file)
        for t in file.tensors.prefix(16) {
            let rows = min(t.rowCount, 4)
            guard t.type.isDequantizable, rows > 0, t.rowLength > 0, t.rowLength <= 1 << 16 else { continue }
            var out = [Float](repeating: 0, count: rows * t.rowLength)
            out.withUnsafeMutableBufferPointer {
                Dequantize.rows(t.type, from: file.data(of: t), rowLength: t.rowLength, rows: 0..<rows, into: $0.baseAddress!)
            }
        }
    }

    static func adapter(_ bytes: UnsafeRawBufferPointer) {
        let path = file(bytes)
        if let loaded = try? AdapterLoader.load(path, heads: PEFT.Heads(heads: 4, kvHeads: 2)) {
            _ = loaded.summary
            _ = try? AdapterConversion.toPEFT(loaded, to: scratch + "/peft-out")
        }
    }

    /// The input is split at the first NUL: JSON config before it, safetensors after.
    static func peft(_ bytes: UnsafeRawBufferPointer) {
        let split = bytes.firstIndex(of: 0) ?? bytes.count
        mkdir(scratch + "/peft", 0o700)
        _ = file(UnsafeRawBufferPointer(rebasing: bytes[0..<split]), "peft/adapter_config.json")
        _ = file(UnsafeRawBufferPointer(rebasing: bytes[min(split + 1, bytes.count)...]), "peft/adapter_model.safetensors")
        _ = try? AdapterLoader.load(scratch + "/peft", heads: PEFT.Heads(heads: 4, kvHeads: 2))
    }

    /// A tiny model's tokenizer with a ChatML template, built once.
    static let chat: (Tokenizer, ChatTemplate?) = {
        let path = vocabulary("gpt-2")
        let tokenizer = try! Tokenizer(file: GGUFFile(path: path))
        let template = try? tokenizer.chatTemplate(templateText: nil, override: "chatml")
        return (tokenizer, template)
    }()

    static func jsonl(_ bytes: UnsafeRawBufferPointer) {
        let data = Array(bytes)
        let (tokenizer, template) = chat
        for format in [DataFormat.jsonlText, .completion, .chat] {
            let reader = JSONLReader(tokenizer: tokenizer, chatTemplate: template, trainOnPrompt: format == .jsonlText)
            if let examples = try? reader.read(bytes: data, path: "fuzz.jsonl", format: format) {
                _ = TokenStream(examples: examples)
            }
        }
        _ = try? JSONLReader.detectFormat(bytes: data, path: "fuzz.jsonl")
    }

    static let tokenizers: [Tokenizer] = ["llama-spm", "gpt-2", "phi-3", "falcon", "deepseek-coder"].map {
        try! Tokenizer(file: GGUFFile(path: vocabulary($0)))
    }

    static func tokenizer(_ bytes: UnsafeRawBufferPointer) {
        let data = Array(bytes)
        for t in tokenizers {
            let ids = t.encode(bytes: data, addSpecial: true, parseSpecial: true)
            var decoder = StreamingDecoder(tokenizer: t)
            for id in ids { _ = decoder.append(id) }
            _ = decoder.finish()
        }
    }

    /// Seed corpora for every target, written as the real files are: a small model with tensors of many types, an
    /// adapter, a ggla file, a PEFT directory (config, NUL, safetensors), JSONL of each format, text.
    static func writeSeeds(to folder: String) throws {
        func put(_ target: String, _ name: String, _ bytes: [UInt8]) throws {
            try FileManager.default.createDirectory(atPath: folder + "/" + target, withIntermediateDirectories: true)
            try Data(bytes).write(to: URL(fileURLWithPath: folder + "/" + target + "/" + name))
        }
        var md = Metadata()
        md.set("general.architecture", .string("llama"))
        for (k, v) in [("block_count", 1), ("embedding_length", 32), ("feed_forward_length", 64), ("attention.head_count", 4),
                       ("attention.head_count_kv", 2), ("context_length", 64)] { md.set("llama." + k, .uint32(UInt32(v))) }
        md.set("llama.rope.freq_base", .float32(10000))
        md.set("tokenizer.ggml.model", .string("gpt2"))
        md.set("tokenizer.ggml.tokens", .array(.string, (0..<64).map { .string(String(UnicodeScalar(UInt8(32 + $0)))) }))
        md.set("tokenizer.ggml.merges", .array(.string, [.string("A B")]))
        var writer = GGUFWriter(metadata: md)
        let values: [Float] = (0..<(32 * 64)).map { (i: Int) -> Float in Float((i * 7919) % 201) / 100 - 1 }
        try writer.addTensor(name: "token_embd.weight", dimensions: [32, 64], values: values, type: .q8_0)
        try writer.addTensor(name: "output_norm.weight", dimensions: [32], values: Array(values.prefix(32)))
        for (i, type) in [TensorType.f32, .f16, .bf16, .q4_0, .q4_1, .q5_0, .q5_1, .q8_0].enumerated() {
            try writer.addTensor(name: "blk.0.t\(i).weight", dimensions: [32, 64], values: values, type: type)
        }
        try put("gguf", "model.gguf", writer.serialized())

        let adapter = LoRAAdapter<Float>()
        adapter.add(try LoRAPair(name: "blk.0.attn_q", rank: 2, inFeatures: 32, outFeatures: 32, scale: 2,
                                 a: Array(values.prefix(64)), b: Array(values.suffix(64))))
        adapter.add(try LoRAPair(name: "token_embd", rank: 2, inFeatures: 64, outFeatures: 32, scale: 2,
                                 a: Array(values.prefix(128)), b: Array(values.suffix(64))))
        var d = AdapterFile.Description(alpha: 4)
        d.heads = (4, 2)
        try AdapterFile.write(adapter, description: d, to: scratch + "-seed.gguf")
        try put("adapter", "adapter.gguf", try FileReader.readAll(scratch + "-seed.gguf"))
        var ggla: [UInt8] = []
        func u32(_ v: Int) { withUnsafeBytes(of: UInt32(v).littleEndian) { ggla += $0 } }
        u32(0x6767_6C61); u32(1); u32(2); u32(4)
        for name in ["blk.0.attn_q.weight.loraA", "blk.0.attn_q.weight.loraB"] {
            u32(2); u32(name.utf8.count); u32(0); u32(2); u32(32)
            ggla += name.utf8
            ggla += [UInt8](repeating: 0, count: (32 - ggla.count % 32) % 32)
            for v in values.prefix(64) { withUnsafeBytes(of: v.bitPattern.littleEndian) { ggla += $0 } }
        }
        try put("adapter", "seed.bin", ggla)
        try PEFT.write(adapter, alpha: 4, rsLoRA: false, baseModel: nil, heads: PEFT.Heads(heads: 4, kvHeads: 2), to: scratch + "-peft")
        try put("peft", "peft.bin", try FileReader.readAll(scratch + "-peft/adapter_config.json") + [0]
                + FileReader.readAll(scratch + "-peft/adapter_model.safetensors"))

        try put("jsonl", "text.jsonl", Array("{\"text\": \"hello world\"}\n{\"text\": \"SELECT 1\"}\n".utf8))
        try put("jsonl", "completion.jsonl", Array("{\"prompt\": \"Q: 2+2?\", \"completion\": \" 4\"}\n".utf8))
        try put("jsonl", "chat.jsonl", Array(("{\"messages\": [{\"role\": \"system\", \"content\": \"Be brief.\"}, "
            + "{\"role\": \"user\", \"content\": \"Hi\"}, {\"role\": \"assistant\", \"content\": \"Hello!\"}]}\n").utf8))
        try put("tokenizer", "text.txt", Array("Hello world! <|im_start|>user\n 3.14 ₿ 🙂 \t\r\n  ÄÖÜ 日本語 don't".utf8))
    }

    static let targets: [String: (UnsafeRawBufferPointer) -> Void] = [
        "gguf": gguf, "adapter": adapter, "peft": peft, "jsonl": jsonl, "tokenizer": tokenizer,
    ]
}

#if FUZZING
let selected: (UnsafeRawBufferPointer) -> Void = {
    let name = ProcessInfo.processInfo.environment["LORAKIT_FUZZ_TARGET"] ?? ""
    guard let target = Fuzz.targets[name] else {
        fputs("LORAKIT_FUZZ_TARGET must be one of \(Fuzz.targets.keys.sorted())\n", stderr)
        exit(2)
    }
    return target
}()

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzOne(_ data: UnsafePointer<UInt8>?, _ count: Int) -> CInt {
    selected(UnsafeRawBufferPointer(start: data, count: count))
    return 0
}

/// libFuzzer's driver, entered from the executable's main (SwiftPM names it `<module>_main`).
@_silgen_name("LLVMFuzzerRunDriver")
func runDriver(_ argc: UnsafeMutablePointer<CInt>, _ argv: UnsafeMutablePointer<UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?>,
               _ callback: @convention(c) (UnsafePointer<UInt8>?, Int) -> CInt) -> CInt

@_cdecl("lorakit_fuzz_main")
public func fuzzMain(_ argc: CInt, _ argv: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?) -> CInt {
    var count = argc, arguments = argv
    return runDriver(&count, &arguments, fuzzOne)
}
#else
@main
struct Replay {
    static func main() {
        do { try run() } catch {
            print("error: \(error)")
            exit(1)
        }
    }

    static func run() throws {
        let args = CommandLine.arguments.dropFirst()
        if args.first == "seeds", let folder = args.dropFirst().first {
            try Fuzz.writeSeeds(to: folder)
            print("seed corpora written to \(folder)")
            return
        }
        guard let name = args.first, let target = Fuzz.targets[name] else {
            print("usage: lorakit-fuzz \(Fuzz.targets.keys.sorted().joined(separator: "|")) FILE…  |  lorakit-fuzz seeds FOLDER")
            exit(2)
        }
        for path in args.dropFirst() {
            let bytes = try FileReader.readAll(path)
            bytes.withUnsafeBytes { target($0) }
        }
        print("replayed \(args.count - 1) input(s) through \(name)")
    }
}
#endif
