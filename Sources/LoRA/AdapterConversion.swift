import GGUF

/// Writes a loaded adapter in another format: llama.cpp's adapter GGUF or a PEFT directory.
public enum AdapterConversion {
    public struct Report: Sendable {
        public var tensors: Int
        /// Tensors that no adapter of the target format can express (left out), each with the reason.
        public var leftOut: [String]
    }

    /// To llama.cpp's adapter GGUF. The 2023 finetune's files keep their scale-1 behaviour (alpha = r); their norm
    /// deltas, and (when `tiedHead`) head and embedding pairs that llama.cpp cannot apply to a tied model, are left
    /// out and reported.
    public static func toGGUF(_ loaded: AdapterLoader.Loaded, tiedHead: Bool = false, architecture: String? = nil,
                              to path: String) throws -> Report {
        var leftOut = loaded.normDeltas.map { "\($0.0) (a norm delta)" }
        var kept = loaded.adapter
        if loaded.format == .seed && tiedHead {
            kept = LoRAAdapter<Float>()
            for name in loaded.adapter.order {
                if name == LoRATarget.output.rawValue {
                    leftOut.append("output (the model's head is tied to token_embd; llama.cpp cannot load an output LoRA for it)")
                } else if name == LoRATarget.tokenEmbedding.rawValue {
                    leftOut.append("token_embd (on a tied model llama.cpp also applies it to the head and fails)")
                } else {
                    kept.add(loaded.adapter[name]!)
                }
            }
        }
        var d = AdapterFile.Description(alpha: loaded.alpha)
        d.rsLoRA = loaded.rsLoRA
        d.baseModelName = loaded.baseModelName
        d.heads = loaded.heads.map { ($0.heads, $0.kvHeads) }
        if let arch = architecture ?? loaded.architecture { d.architecture = arch }
        d.extra = [("converted_from", .string(loaded.path))]
        try AdapterFile.write(kept, description: d, to: path)
        return Report(tensors: kept.order.count, leftOut: leftOut)
    }

    /// To a PEFT directory (`adapter_config.json` + `adapter_model.safetensors`); Q/K rows go back to Hugging
    /// Face's order, which needs the base model's heads (`heads`, or those the file records).
    public static func toPEFT(_ loaded: AdapterLoader.Loaded, heads: PEFT.Heads? = nil, to directory: String) throws -> Report {
        guard let h = heads ?? loaded.heads else {
            throw LoRAError.format(path: loaded.path, reason: "the attention head counts are needed to reorder Q/K rows: give the base model")
        }
        // A file without alpha means scale 1, which PEFT expresses as alpha = r.
        let alpha = loaded.alpha == 0 ? Float(loaded.adapter.order.first.flatMap { loaded.adapter[$0]?.rank } ?? 1) : loaded.alpha
        try PEFT.write(loaded.adapter, alpha: alpha, rsLoRA: loaded.rsLoRA, baseModel: loaded.baseModelName, heads: h, to: directory)
        return Report(tensors: loaded.adapter.order.count, leftOut: loaded.normDeltas.map { "\($0.0) (a norm delta)" })
    }
}
