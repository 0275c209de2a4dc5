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
        let path = NSTemporaryDirectory() + "/chat-\(getpid()).jsonl"
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
        let path = NSTemporaryDirectory() + "/pc-\(getpid()).jsonl"
        try #"{"prompt": "Q: 2+2?\nA:", "completion": " 4"}"#.appending("\n").write(toFile: path, atomically: true, encoding: .utf8)
        XCTAssertEqual(try JSONLReader.detectFormat(path: path), .completion)
        let e = try JSONLReader(tokenizer: tokenizer, chatTemplate: nil, trainOnPrompt: false).read(path: path, format: .completion)[0]
        let learned = zip(e.tokens, e.trained).filter { $0.1 }.map { $0.0 }
        XCTAssertEqual(tokenizer.decode(learned, special: true), " 4<|im_end|>", "completion plus EOS so the model learns to stop")
    }
}
