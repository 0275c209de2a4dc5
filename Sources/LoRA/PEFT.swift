import Foundation
import GGUF
import Kernels

/// Hugging Face PEFT adapters (`adapter_config.json` + `adapter_model.safetensors`) ⇄ our LoRA pairs.
///
/// Names: `base_model.model.model.layers.N.self_attn.q_proj.lora_A.weight` ⇄ `blk.N.attn_q`, embeddings as
/// `lora_embedding_A/B`, the head as `lm_head`. In llama GGUF files the rows of Q and K are permuted for RoPE
/// relative to Hugging Face, so B of `attn_q` / `attn_k` is permuted on the way in and un-permuted on the way out;
/// the other architectures (Qwen, Gemma) keep Hugging Face's order.
public enum PEFT {
    static let layerModules: [(String, String)] = [
        ("attn_q", "self_attn.q_proj"), ("attn_k", "self_attn.k_proj"), ("attn_v", "self_attn.v_proj"),
        ("attn_output", "self_attn.o_proj"), ("ffn_gate", "mlp.gate_proj"), ("ffn_up", "mlp.up_proj"), ("ffn_down", "mlp.down_proj"),
        // Phi-3's fused weights.
        ("attn_qkv", "self_attn.qkv_proj"), ("ffn_up", "mlp.gate_up_proj"),
    ]

    /// What of the base model's layout the Hugging Face names and row order depend on: the heads and whether
    /// its Q/K rows are permuted (llama), and whether `ffn_up` is Phi-3's fused gate+up (`gate_up_proj`).
    public struct Heads: Sendable {
        public var heads: Int
        public var kvHeads: Int
        public var permuted: Bool
        public var fusedGateUp: Bool
        public init(heads: Int, kvHeads: Int, permuted: Bool = true, fusedGateUp: Bool = false) {
            self.heads = heads
            self.kvHeads = kvHeads
            self.permuted = permuted
            self.fusedGateUp = fusedGateUp
        }

        /// Only llama's converter permutes Q and K.
        public static func permuted(architecture: String?) -> Bool { architecture == nil || architecture == "llama" }
        /// Only Phi-3 fuses gate and up.
        public static func fusedGateUp(architecture: String?) -> Bool { architecture == "phi3" }

        /// Q/K rows can be reordered only when the heads split them into equal, even-sized heads.
        func check<T>(_ pair: LoRAPair<T>) throws {
            guard permuted else { return }
            let isQ = pair.name.hasSuffix("attn_q"), isK = pair.name.hasSuffix("attn_k")
            guard isQ || isK else { return }
            let n = isQ ? heads : kvHeads
            guard n > 0, pair.outFeatures % n == 0, (pair.outFeatures / n) % 2 == 0 else {
                throw LoRAError.shape(tensor: pair.name, reason: "\(pair.outFeatures) rows cannot be split into \(n) heads "
                                      + "(\(heads) query / \(kvHeads) key-value heads); give the base model with -m")
            }
        }
    }

    /// GGUF row of Hugging Face row `row` for `n` heads of `rows / n` dimensions (convert_hf_to_gguf's permute).
    static func ggufRow(_ hfRow: Int, rows: Int, heads n: Int) -> Int {
        let d = rows / n, half = d / 2
        let h = hfRow / d, within = hfRow % d
        let s = within / half, i = within % half
        return h * d + 2 * i + s
    }

    /// Reorders rows of B [out, r] between Hugging Face and GGUF order.
    static func permuteRows(_ b: [Float], rows: Int, rank: Int, heads: Int, toGGUF: Bool) -> [Float] {
        var out = b
        for hf in 0..<rows {
            let g = ggufRow(hf, rows: rows, heads: heads)
            let (src, dst) = toGGUF ? (hf, g) : (g, hf)
            for j in 0..<rank { out[dst * rank + j] = b[src * rank + j] }
        }
        return out
    }

    static func ggufName(_ module: String) -> String? {
        if module == "model.embed_tokens" { return "token_embd" }
        if module == "lm_head" { return "output" }
        guard module.hasPrefix("model.layers.") else { return nil }
        let rest = module.dropFirst("model.layers.".count)
        guard let dot = rest.firstIndex(of: "."), let layer = Int(rest[..<dot]) else { return nil }
        let sub = String(rest[rest.index(after: dot)...])
        guard let target = layerModules.first(where: { $0.1 == sub })?.0 else { return nil }
        return "blk.\(layer).\(target)"
    }

    static func hfModule(_ name: String, fusedGateUp: Bool = false) -> String? {
        if name == "token_embd" { return "model.embed_tokens" }
        if name == "output" { return "lm_head" }
        let parts = name.split(separator: ".")
        guard parts.count == 3, parts[0] == "blk", let layer = Int(parts[1]),
              let sub = layerModules.first(where: { $0.0 == parts[2] })?.1 else { return nil }
        return "model.layers.\(layer).\(fusedGateUp && parts[2] == "ffn_up" ? "mlp.gate_up_proj" : sub)"
    }

    /// PEFT's pattern rule: a key matches a module name when the name ends with it at a dot boundary.
    static func matches(_ key: String, _ module: String) -> Bool {
        module == key || module.hasSuffix("." + key) || (try? NSRegularExpression(pattern: "^(.*\\.)?" + key + "$"))
            .map { $0.firstMatch(in: module, range: NSRange(module.startIndex..., in: module)) != nil } == true
    }

    /// Reads a PEFT adapter directory.
    public static func read(directory: String, heads: Heads) throws -> (LoRAAdapter<Float>, alpha: Float, rsLoRA: Bool, baseModel: String?) {
        let configPath = directory + "/adapter_config.json"
        guard let data = FileManager.default.contents(atPath: configPath) else {
            throw LoRAError.format(path: configPath, reason: "missing or unreadable")
        }
        let parsed: Any
        do { parsed = try JSONSerialization.jsonObject(with: data) } catch {
            throw LoRAError.format(path: configPath, reason: "not valid JSON (\(String(decoding: data.prefix(1), as: UTF8.self).isEmpty ? "empty file" : "a syntax error or invalid UTF-8"))")
        }
        guard let config = parsed as? [String: Any] else {
            throw LoRAError.format(path: configPath, reason: "the top level is not a JSON object")
        }
        guard (config["peft_type"] as? String)?.uppercased() == "LORA" else {
            throw LoRAError.format(path: configPath, reason: "peft_type is not LORA")
        }
        if config["use_dora"] as? Bool == true { throw LoRAError.unsupported("\(configPath): DoRA adapters cannot be represented as llama.cpp LoRA") }
        if let bias = config["bias"] as? String, bias != "none" { throw LoRAError.unsupported("\(configPath): bias = \(bias): LoRA biases cannot be represented") }
        if let m = config["modules_to_save"] as? [Any], !m.isEmpty { throw LoRAError.unsupported("\(configPath): modules_to_save (full weights) cannot be represented in a LoRA adapter") }
        if config["fan_in_fan_out"] as? Bool == true { throw LoRAError.unsupported("\(configPath): fan_in_fan_out adapters are not supported") }
        func number(_ key: String, _ value: Any?) throws -> Double? {
            guard let value, !(value is NSNull) else { return nil }
            guard let n = value as? NSNumber, n.doubleValue.isFinite else {
                throw LoRAError.format(path: configPath, reason: "\(key) is not a finite number")
            }
            return n.doubleValue
        }
        let alpha = Float(try number("lora_alpha", config["lora_alpha"]) ?? 8)
        let rValue = try number("r", config["r"])
        if let rValue, !(1...65536).contains(rValue) || rValue != rValue.rounded() {
            throw LoRAError.format(path: configPath, reason: "r = \(rValue) must be a whole number from 1 to 65536")
        }
        let configRank = rValue.map { Int($0) }
        let rs = config["use_rslora"] as? Bool ?? false
        guard config["alpha_pattern"] == nil || config["alpha_pattern"] is NSNull || config["alpha_pattern"] is [String: Any] else {
            throw LoRAError.format(path: configPath, reason: "alpha_pattern is not an object")
        }
        var alphaPattern: [String: NSNumber] = [:]
        for (key, value) in (config["alpha_pattern"] as? [String: Any]) ?? [:] {
            alphaPattern[key] = NSNumber(value: try number("alpha_pattern.\(key)", value) ?? Double(alpha))
        }
        let rankPattern = (config["rank_pattern"] as? [String: Any]) ?? [:]
        // target_modules: a list of names, or a regular expression (PEFT matches a string as a full-name regex).
        let targetModules = config["target_modules"]

        let tensorsPath = directory + "/adapter_model.safetensors"
        guard let raw = FileManager.default.contents(atPath: tensorsPath) else {
            throw LoRAError.format(path: tensorsPath, reason: "missing (only safetensors adapters are read)")
        }
        let bytes = Array(raw)
        let (tensors, _, dataStart) = try SafeTensors.parse(bytes, path: tensorsPath)
        var halves: [String: (a: SafeTensors.Tensor?, b: SafeTensors.Tensor?, embedding: Bool)] = [:]
        for t in tensors {
            var n = t.name
            if n.hasPrefix("base_model.model.") { n = String(n.dropFirst("base_model.model.".count)) }
            let suffixes = [(".lora_A.weight", true, false), (".lora_B.weight", false, false),
                            (".lora_embedding_A", true, true), (".lora_embedding_B", false, true),
                            (".lora_A.default.weight", true, false), (".lora_B.default.weight", false, false)]
            guard let (suffix, isA, isEmbedding) = suffixes.first(where: { n.hasSuffix($0.0) }) else {
                throw LoRAError.unsupported("\(tensorsPath): tensor '\(t.name)' is not a LoRA A/B weight (biases, DoRA magnitudes and full weights cannot be represented)")
            }
            let module = String(n.dropLast(suffix.count))
            var e = halves[module] ?? (nil, nil, isEmbedding)
            if isA { e.a = t } else { e.b = t }
            halves[module] = e
        }
        let adapter = LoRAAdapter<Float>()
        for module in halves.keys.sorted(by: { (ggufName($0) ?? $0, $1).0 < (ggufName($1) ?? $1) }) {
            let e = halves[module]!
            guard let name = ggufName(module) else { throw LoRAError.unsupported("\(tensorsPath): module '\(module)' has no llama GGUF equivalent") }
            guard let ta = e.a, let tb = e.b, ta.shape.count == 2, tb.shape.count == 2 else {
                throw LoRAError.format(path: tensorsPath, reason: "module '\(module)' needs 2-D lora_A and lora_B")
            }
            let a = try SafeTensors.floats(ta, in: bytes, dataStart: dataStart, path: tensorsPath)
            var b = try SafeTensors.floats(tb, in: bytes, dataStart: dataStart, path: tensorsPath)
            let r = ta.shape[0], inF = ta.shape[1], outF = tb.shape[0]
            guard tb.shape[1] == r else { throw LoRAError.format(path: tensorsPath, reason: "module '\(module)': lora_A \(ta.shape) and lora_B \(tb.shape) disagree on the rank") }
            let moduleAlpha = alphaPattern.first(where: { matches($0.key, module) }).map { Float($0.value.doubleValue) } ?? alpha
            let patternRank = rankPattern.first(where: { matches($0.key, module) }).flatMap { ($0.value as? NSNumber)?.intValue }
            if let expected = patternRank ?? configRank, expected != r {
                throw LoRAError.mismatch("\(tensorsPath): module '\(module)' has rank \(r), but adapter_config.json says \(expected)")
            }
            if let list = targetModules as? [String], !list.contains(where: { module == $0 || module.hasSuffix("." + $0) }) {
                throw LoRAError.mismatch("\(tensorsPath): module '\(module)' is not among target_modules \(list) of adapter_config.json")
            }
            if heads.permuted, name.hasSuffix("attn_q") || name.hasSuffix("attn_k") {
                let n = name.hasSuffix("attn_q") ? heads.heads : heads.kvHeads
                guard n > 0, outF % n == 0, (outF / n) % 2 == 0 else {
                    throw LoRAError.mismatch("\(tensorsPath): '\(module)' has \(outF) rows, not a whole number of \(n) heads")
                }
                b = permuteRows(b, rows: outF, rank: r, heads: n, toGGUF: true)
            }
            adapter.add(try LoRAPair(name: name, rank: r, inFeatures: inF, outFeatures: outF,
                                     scale: loraScale(alpha: moduleAlpha, rank: r, rsLoRA: rs), a: a, b: b))
        }
        guard !adapter.order.isEmpty else { throw LoRAError.format(path: tensorsPath, reason: "no LoRA tensors") }
        let sortedOrder = adapter.order.sorted(by: AdapterFile.tensorOrder)
        let ordered = LoRAAdapter<Float>()
        for n in sortedOrder { ordered.add(adapter[n]!) }
        return (ordered, alpha, rs, config["base_model_name_or_path"] as? String)
    }

    /// Writes a PEFT adapter directory; mixed ranks and per-tensor alphas go to rank_pattern / alpha_pattern.
    public static func write(_ adapter: LoRAAdapter<Float>, alpha: Float, rsLoRA: Bool, baseModel: String?, heads: Heads,
                             to directory: String) throws {
        for name in adapter.order { try heads.check(adapter[name]!) }
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        var ranks: [Int: Int] = [:]
        for n in adapter.order { ranks[adapter[n]!.rank, default: 0] += 1 }
        let r = ranks.max { $0.value < $1.value }?.key ?? 8
        var rankPattern: [String: Int] = [:], alphaPattern: [String: Float] = [:]
        var targets = Set<String>()
        var tensors: [(name: String, shape: [Int], values: [Float])] = []
        for name in adapter.order {
            let p = adapter[name]!
            guard let module = hfModule(name, fusedGateUp: heads.fusedGateUp) else { throw LoRAError.unsupported("'\(name)' has no PEFT module name") }
            targets.insert(String(module.split(separator: ".").last!))
            if p.rank != r { rankPattern[module] = p.rank }
            let expected = loraScale(alpha: alpha, rank: p.rank, rsLoRA: rsLoRA)
            if abs(p.scale - expected) > 1e-6 * max(1, abs(expected)) {
                alphaPattern[module] = rsLoRA ? p.scale * Float(p.rank).squareRoot() : p.scale * Float(p.rank)
            }
            var b = p.b
            if heads.permuted, name.hasSuffix("attn_q") || name.hasSuffix("attn_k") {
                b = permuteRows(b, rows: p.outFeatures, rank: p.rank, heads: name.hasSuffix("attn_q") ? heads.heads : heads.kvHeads, toGGUF: false)
            }
            if name == "token_embd" {
                tensors.append(("base_model.model.\(module).lora_embedding_A", [p.rank, p.inFeatures], p.a))
                tensors.append(("base_model.model.\(module).lora_embedding_B", [p.outFeatures, p.rank], b))
            } else {
                tensors.append(("base_model.model.\(module).lora_A.weight", [p.rank, p.inFeatures], p.a))
                tensors.append(("base_model.model.\(module).lora_B.weight", [p.outFeatures, p.rank], b))
            }
        }
        let config: [String: Any] = [
            "peft_type": "LORA", "task_type": "CAUSAL_LM", "r": r, "lora_alpha": alpha, "use_rslora": rsLoRA,
            "target_modules": targets.sorted(), "rank_pattern": rankPattern, "alpha_pattern": alphaPattern,
            "base_model_name_or_path": baseModel ?? NSNull(), "bias": "none", "fan_in_fan_out": false,
            "lora_dropout": 0.0, "inference_mode": true, "init_lora_weights": true, "modules_to_save": NSNull(),
            "use_dora": false, "revision": NSNull(),
        ]
        guard JSONSerialization.isValidJSONObject(config), alpha.isFinite, alphaPattern.values.allSatisfy(\.isFinite) else {
            throw LoRAError.format(path: directory + "/adapter_config.json", reason: "alpha is not a finite number")
        }
        let json = try JSONSerialization.data(withJSONObject: config, options: [.prettyPrinted, .sortedKeys])
        try AtomicFile.write(Array(json), to: directory + "/adapter_config.json")
        try SafeTensors.write(tensors, metadata: ["format": "pt"], to: directory + "/adapter_model.safetensors")
    }
}
