import Foundation
import GGUF
import TestSupport
import Tokenizer
import Training
import XCTest

/// Chat and prompt/completion data learn only the assistant / completion tokens, by token spans.
final class ChatMaskTests: XCTestCase {
    func smolLM2() throws -> (GGUFFile, Tokenizer) {
        let file = try GGUFFile(path: try TestData.smolLM2())
        return (file, try Tokenizer(file: file))
    }

    func testOnlyAssistantTokensAreLearned() throws {
        let (file, tokenizer) = try smolLM2()
        let path = temporaryDirectory() + "/chat.jsonl"
        let line = #"{"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Capital of Zorbia?"}, {"role": "assistant", "content": "Quillton."}]}"#
        try (line + "\n").write(toFile: path, atomically: true, encoding: .utf8)
        XCTAssertEqual(try JSONLReader.detectFormat(path: path), .chat)
        let template = try tokenizer.chatTemplate(templateText: file.metadata["tokenizer.chat_template"]?.stringValue)
        let examples = try JSONLReader(tokenizer: tokenizer, chatTemplate: template, trainOnPrompt: false).read(path: path, format: .chat)
        let e = examples[0]
        let learned = zip(e.tokens, e.trained).filter { $0.1 }.map { $0.0 }
        XCTAssertEqual(tokenizer.decode(learned, special: true), "Quillton.<|im_end|>")
        XCTAssertEqual(tokenizer.decode(e.tokens, special: true),
                       "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nCapital of Zorbia?<|im_end|>\n<|im_start|>assistant\nQuillton.<|im_end|>\n")
        let all = try JSONLReader(tokenizer: tokenizer, chatTemplate: template, trainOnPrompt: true).read(path: path, format: .chat)[0]
        XCTAssertTrue(all.trained.allSatisfy { $0 })
    }

    func testCompletionMaskAndEOS() throws {
        let (_, tokenizer) = try smolLM2()
        let path = temporaryDirectory() + "/pc.jsonl"
        try #"{"prompt": "Q: 2+2?\nA:", "completion": " 4"}"#.appending("\n").write(toFile: path, atomically: true, encoding: .utf8)
        XCTAssertEqual(try JSONLReader.detectFormat(path: path), .completion)
        let e = try JSONLReader(tokenizer: tokenizer, chatTemplate: nil, trainOnPrompt: false).read(path: path, format: .completion)[0]
        let learned = zip(e.tokens, e.trained).filter { $0.1 }.map { $0.0 }
        XCTAssertEqual(tokenizer.decode(learned, special: true), " 4<|im_end|>", "completion plus EOS so the model learns to stop")
    }

    /// Chat data for a model without a template (Gemma 3 270M's base file has none) is an error naming the line and
    /// the families `--chat-template` takes, not a guess.
    func testChatDataWithoutATemplateNamesTheFamilies() throws {
        let (_, tokenizer) = try smolLM2()
        let path = temporaryDirectory() + "/chat.jsonl"
        try #"{"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]}"#.appending("\n")
            .write(toFile: path, atomically: true, encoding: .utf8)
        XCTAssertThrowsError(try JSONLReader(tokenizer: tokenizer, chatTemplate: nil, trainOnPrompt: false).read(path: path, format: .chat)) {
            XCTAssertEqual("\($0)", "\(path):1: chat data needs a chat template: the model has none; name its family with --chat-template (chatml, llama2, llama3, mistral, zephyr, phi3, gemma)")
        }
    }

    /// Data whose masks leave nothing to learn is an error naming the file, not a run that trains nothing; with
    /// --train-on-prompt the same file trains.
    func testDataWithNothingToLearnIsAnError() throws {
        let model = try TestData.smolLM2()
        let dir = temporaryDirectory("lorakit-mask")
        let path = dir + "/questions.jsonl"
        try #"{"messages": [{"role": "user", "content": "Capital of Zorbia?"}]}"#.appending("\n")
            .write(toFile: path, atomically: true, encoding: .utf8)
        var c = TrainingConfiguration(model: model, trainData: path, adapterOut: dir + "/a.gguf")
        c.context = 32
        c.batch = 1
        c.iterations = 1
        c.threads = 1
        XCTAssertThrowsError(try Trainer(configuration: c).run { _ in true }) { error in
            XCTAssertTrue(String(describing: error).hasPrefix(path + ": no token is learned"), String(describing: error))
        }
        XCTAssertFalse(FileManager.default.fileExists(atPath: c.adapterOut))
        c.trainOnPrompt = true
        XCTAssertEqual(try Trainer(configuration: c).run { _ in true }.steps, 1)

        // Completions with empty prompts leave nothing masked: trained, with a warning.
        try #"{"prompt": "", "completion": "Quillton."}"#.appending("\n").write(toFile: path, atomically: true, encoding: .utf8)
        c.trainOnPrompt = false
        var warnings: [String] = []
        _ = try Trainer(configuration: c).run { event in
            if case let .warning(w) = event { warnings.append(w) }
            return true
        }
        XCTAssertEqual(warnings, [path + ": every token is learned, although only completions or assistant messages should be"])
    }
}
