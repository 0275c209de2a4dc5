import GGUF
import Tokenizer
import XCTest

/// Each family renders a 3-message conversation exactly as its Jinja template does (expected strings written
/// from the templates' definitions), and reports the byte span of every message and completion.
final class ChatTemplateTests: XCTestCase {
    let conversation = [
        ChatMessage(.system, "You are terse."),
        ChatMessage(.user, "Hi there"),
        ChatMessage(.assistant, "Hello!"),
    ]

    func render(_ family: ChatTemplate.Family, bos: String = "<s>", eos: String = "</s>",
                _ messages: [ChatMessage]? = nil, generation: Bool = false) throws -> RenderedChat {
        try ChatTemplate(family: family, bosText: bos, eosText: eos).render(messages ?? conversation, addGenerationPrompt: generation)
    }

    func slice(_ r: RenderedChat, _ range: Range<Int>) -> String {
        String(decoding: Array(r.text.utf8)[range], as: UTF8.self)
    }

    func testChatML() throws {
        let r = try render(.chatml, generation: true)
        XCTAssertEqual(r.text, "<|im_start|>system\nYou are terse.<|im_end|>\n<|im_start|>user\nHi there<|im_end|>\n<|im_start|>assistant\nHello!<|im_end|>\n<|im_start|>assistant\n")
        XCTAssertEqual(slice(r, r.completionRanges[2]), "Hello!<|im_end|>")
        XCTAssertEqual(slice(r, r.messageRanges[1]), "<|im_start|>user\nHi there<|im_end|>\n")
        XCTAssertTrue(r.completionRanges[0].isEmpty && r.completionRanges[1].isEmpty)
    }

    func testLlama2() throws {
        let r = try render(.llama2)
        XCTAssertEqual(r.text, "<s>[INST] <<SYS>>\nYou are terse.\n<</SYS>>\n\nHi there [/INST] Hello! </s>")
        XCTAssertEqual(slice(r, r.completionRanges[2]), "Hello! </s>")
        XCTAssertEqual(r.messageRanges.count, 3)
    }

    func testLlama3() throws {
        let r = try render(.llama3, bos: "<|begin_of_text|>", eos: "<|eot_id|>", generation: true)
        XCTAssertEqual(r.text, "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nYou are terse.<|eot_id|><|start_header_id|>user<|end_header_id|>\n\nHi there<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\nHello!<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n")
        XCTAssertEqual(slice(r, r.completionRanges[2]), "Hello!<|eot_id|>")
    }

    func testMistral() throws {
        let r = try render(.mistral)
        XCTAssertEqual(r.text, "<s>[INST] You are terse.\n\nHi there [/INST]Hello!</s>")
        XCTAssertEqual(slice(r, r.completionRanges[2]), "Hello!</s>")
    }

    func testZephyr() throws {
        let r = try render(.zephyr, generation: true)
        XCTAssertEqual(r.text, "<|system|>\nYou are terse.</s>\n<|user|>\nHi there</s>\n<|assistant|>\nHello!</s>\n<|assistant|>\n")
        XCTAssertEqual(slice(r, r.completionRanges[2]), "Hello!</s>")
    }

    func testPhi3() throws {
        let r = try render(.phi3, generation: true)
        XCTAssertEqual(r.text, "<|system|>\nYou are terse.<|end|>\n<|user|>\nHi there<|end|>\n<|assistant|>\nHello!<|end|>\n<|assistant|>\n")
        XCTAssertEqual(slice(r, r.completionRanges[2]), "Hello!<|end|>")
    }

    func testGemma() throws {
        let r = try render(.gemma, bos: "<bos>", generation: true)
        XCTAssertEqual(r.text, "<bos><start_of_turn>user\nYou are terse.\n\nHi there<end_of_turn>\n<start_of_turn>model\nHello!<end_of_turn>\n<start_of_turn>model\n")
        XCTAssertEqual(slice(r, r.completionRanges[2]), "Hello!<end_of_turn>")
    }

    func testSmolLM2TemplateAddsDefaultSystemMessage() throws {
        let file = try GGUFFile(path: try SharedData.requireModel())
        let tokenizer = try Tokenizer(file: file)
        let template = try tokenizer.chatTemplate(templateText: file.metadata["tokenizer.chat_template"]?.stringValue)
        XCTAssertEqual(template.family, .chatml)
        let r = try template.render([ChatMessage(.user, "Hi"), ChatMessage(.assistant, "Yo")], addGenerationPrompt: false)
        // As the template's Jinja renders it (checked with jinja2 on the GGUF's template text).
        XCTAssertEqual(r.text, "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\nYo<|im_end|>\n")
    }

    func testUnrecognizedTemplateIsAnError() {
        XCTAssertThrowsError(try ChatTemplate(template: "{{ messages | tojson }}")) {
            XCTAssertEqual(String(describing: $0), "unrecognized chat template; name its family with --chat-template (chatml, llama2, llama3, mistral, zephyr, phi3, gemma)")
        }
        XCTAssertThrowsError(try ChatTemplate(name: "vicuna"))
        XCTAssertThrowsError(try render(.gemma, [ChatMessage(.assistant, "first")]))
    }

    func testRecognizesFamiliesFromTemplateText() throws {
        XCTAssertEqual(try ChatTemplate(template: "{% for m in messages %}<|start_header_id|>{{ m.role }}<|end_header_id|>").family, .llama3)
        XCTAssertEqual(try ChatTemplate(template: "[INST] <<SYS>>").family, .llama2)
        XCTAssertEqual(try ChatTemplate(template: "{{ '[INST] ' + m + ' [/INST]' }}").family, .mistral)
        XCTAssertEqual(try ChatTemplate(template: "<start_of_turn>user").family, .gemma)
        XCTAssertEqual(try ChatTemplate(template: "<|user|>\n{{ c }}<|end|>\n<|assistant|>").family, .phi3)
        XCTAssertEqual(try ChatTemplate(template: "<|user|>\n{{ c }}</s>\n<|assistant|>").family, .zephyr)
    }
}
