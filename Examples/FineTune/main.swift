// A short program that fine-tunes a LoRA adapter and generates with it through the LoRAKit library.
//   swift run -c release lorakit-example models/SmolLM2-135M-Instruct.Q4_1.gguf data/demo/velmora-train.jsonl
import Foundation
import GGUF
import Llama
import LoRA
import Tokenizer
import Training

let arguments = CommandLine.arguments
guard arguments.count >= 3 else {
    print("usage: lorakit-example MODEL.gguf TRAIN.jsonl [STEPS]")
    exit(2)
}
let modelPath = arguments[1], dataPath = arguments[2]
let steps = arguments.count > 3 ? Int(arguments[3]) ?? 20 : 20

// 1. Train: the trainer reports typed events to a callback, which may stop the run by returning false.
var configuration = TrainingConfiguration(model: modelPath, trainData: dataPath, adapterOut: NSTemporaryDirectory() + "/example-adapter.gguf")
configuration.iterations = steps
configuration.context = 64
configuration.batch = 8
configuration.adam.learningRate = 1e-3
configuration.saveEvery = 0
configuration.checkpointOut = nil
configuration.seed = 1
do {
    let summary = try Trainer(configuration: configuration).run { event in
        switch event {
        case let .plan(plan): print("training \(plan.trainableParameters) parameters for \(plan.steps) steps")
        case let .step(s): print("step \(s.step): loss \(String(format: "%.3f", s.loss))")
        case let .finished(f): print("done: \(f.steps) steps, adapter at \(f.adapterPath)")
        default: break
        }
        return true
    }

    // 2. Generate with the adapter applied at run time, streaming the answer.
    let file = try GGUFFile(path: modelPath, storage: .inMemory)  // huge pages: faster per-token products
    let model = try LlamaModel<Float>(file: file)
    let tokenizer = try Tokenizer(file: file)
    try model.attach(try AdapterLoader.load(summary.adapterPath).adapter)
    let template = try tokenizer.chatTemplate(templateText: file.metadata["tokenizer.chat_template"]?.stringValue)
    let prompt = try template.render([ChatMessage(.user, "What is the capital of Velmora?")], addGenerationPrompt: true)
    var sampler = Sampler(seed: 1)
    sampler.temperature = 0
    let generator = Generator(session: InferenceSession(model: model, capacity: 256, threads: 2), tokenizer: tokenizer,
                              sampler: sampler, maxTokens: 40)
    try generator.respond(to: tokenizer.encode(prompt.text, addSpecial: true, parseSpecial: true)) { text in
        print(text, terminator: "")
        return true
    }
    print()
} catch {
    print("error: \(error)")
    exit(1)
}
