import GGUF
import Tokenizer
import XCTest

/// Behaviour on small hand-made vocabularies: errors, special tokens, BOS handling, byte fallback.
final class TokenizerBehaviourTests: XCTestCase {
    func bpeMetadata(pre: String?, addBOS: Bool? = nil) -> Metadata {
        var md = Metadata(source: "tiny.gguf")
        md.set("tokenizer.ggml.model", .string("gpt2"))
        if let pre { md.set("tokenizer.ggml.pre", .string(pre)) }
        let tokens = ["h", "i", "Ġ", "hi", "Ġhi", "<|end|>", "<s>"]
        md.set("tokenizer.ggml.tokens", .array(.string, tokens.map { .string($0) }))
        md.set("tokenizer.ggml.token_type", .array(.int32, [1, 1, 1, 1, 1, 3, 3].map { .int32($0) }))
        md.set("tokenizer.ggml.merges", .array(.string, [.string("h i"), .string("Ġ hi")]))
        md.set("tokenizer.ggml.bos_token_id", .uint32(6))
        md.set("tokenizer.ggml.eos_token_id", .uint32(5))
        if let addBOS { md.set("tokenizer.ggml.add_bos_token", .bool(addBOS)) }
        return md
    }

    func testUnknownPreTokenizerIsAnErrorNamingIt() {
        XCTAssertThrowsError(try Vocabulary(metadata: bpeMetadata(pre: "bogus-pre"))) { error in
            let text = String(describing: error)
            XCTAssertTrue(text.contains("'bogus-pre'") && text.contains("smollm"), text)
        }
    }

    func testMissingTokenizerIsAnError() {
        XCTAssertThrowsError(try Vocabulary(metadata: Metadata(source: "empty.gguf"))) {
            XCTAssertEqual(String(describing: $0), "empty.gguf: tokenizer key 'tokenizer.ggml.model' is missing")
        }
        var md = Metadata()
        md.set("tokenizer.ggml.model", .string("t5"))
        XCTAssertThrowsError(try Vocabulary(metadata: md))
    }

    func testMergesSpecialTokensAndBOS() throws {
        let t = Tokenizer(vocabulary: try Vocabulary(metadata: bpeMetadata(pre: "gpt-2", addBOS: true)))
        XCTAssertEqual(t.encode("hi hi", addSpecial: false), [3, 4])
        XCTAssertEqual(t.encode("hi", addSpecial: true), [6, 3], "BOS added when the metadata asks")
        XCTAssertEqual(t.encode("hi<|end|>", addSpecial: false, parseSpecial: true), [3, 5])
        XCTAssertEqual(t.decode([6, 3, 4, 5]), "hi hi", "control tokens are not rendered by default")
        XCTAssertEqual(t.decode([3, 5], special: true), "hi<|end|>")
        XCTAssertTrue(t.isEndOfGeneration(5))
        let noBOS = Tokenizer(vocabulary: try Vocabulary(metadata: bpeMetadata(pre: "gpt-2", addBOS: false)))
        XCTAssertEqual(noBOS.encode("hi", addSpecial: true), [3])
    }

    func testSentencePieceByteFallbackAndSpacePrefix() throws {
        var md = Metadata()
        md.set("tokenizer.ggml.model", .string("llama"))
        var tokens = ["<unk>", "<s>", "</s>"] + (0..<256).map { String(format2hex: $0) }
        tokens += ["▁", "a", "b", "▁a", "ab", "▁ab"]
        md.set("tokenizer.ggml.tokens", .array(.string, tokens.map { .string($0) }))
        let scores: [Float] = [0, 0, 0] + [Float](repeating: 0, count: 256) + [-1, -2, -3, -1.5, -0.5, -0.2]
        md.set("tokenizer.ggml.scores", .array(.float32, scores.map { .float32($0) }))
        let types: [Int32] = [2, 3, 3] + [Int32](repeating: 6, count: 256) + [Int32](repeating: 1, count: 6)
        md.set("tokenizer.ggml.token_type", .array(.int32, types.map { .int32($0) }))
        let t = Tokenizer(vocabulary: try Vocabulary(metadata: md))
        let ab = Int32(3 + 256 + 5), byteE9 = Int32(3 + 0xE9)
        XCTAssertEqual(t.encode("ab", addSpecial: true), [1, ab], "SentencePiece adds BOS and a space prefix by default")
        // 'é' is no token: its two UTF-8 bytes become byte tokens.
        XCTAssertEqual(t.encode("é", addSpecial: false), [Int32(3 + 256), byteE9 - 0xE9 + 0xC3, Int32(3 + 0xA9)])
        // llama.cpp's detokenizer drops the prefix space of the first piece, unless a BOS came first.
        XCTAssertEqual(t.decode(t.encode("ab é", addSpecial: false)), "ab é")
        XCTAssertEqual(t.decode(t.encode("ab é", addSpecial: true), removeSpecial: true), " ab é")
        _ = byteE9
    }
}

extension String {
    init(format2hex value: Int) {
        let digits = Array("0123456789ABCDEF")
        self = "<0x" + String(digits[value >> 4]) + String(digits[value & 15]) + ">"
    }
}
