import Foundation
import GGUF
import TestSupport
import Tokenizer
import XCTest

enum SharedData {
    static func require(_ relative: String) throws -> String { try TestData.shared(relative) }
    static func requireModel() throws -> String { try TestData.smolLM2() }
}

/// llama.cpp's own tokenizer tests: every `.inp` case must give the ids of the matching `.out` line
/// (tokenized without BOS and without parsing special tokens, as llama.cpp's test does).
final class VocabularyOracleTests: XCTestCase {
    func check(_ name: String, fetched: Bool = false) throws {
        let base = fetched ? try TestData.vocabOracle(name) : try SharedData.require("testdata/vocab/ggml-vocab-\(name).gguf")
        let tokenizer = try Tokenizer(file: GGUFFile(path: base))
        let input = try String(contentsOfFile: base + ".inp", encoding: .utf8)
        let output = try String(contentsOfFile: base + ".out", encoding: .utf8)
        var cases = input.components(separatedBy: "\n__ggml_vocab_test__\n")
        if cases.last == "" { cases.removeLast() }
        let expected = output.split(separator: "\n", omittingEmptySubsequences: false).map {
            $0.split(separator: " ").compactMap { Int32($0) }
        }
        XCTAssertEqual(cases.count, expected.count - 1, name)  // the .out file ends with a newline
        XCTAssertGreaterThan(cases.count, 40, name)
        var failures = 0
        for (i, text) in cases.enumerated() {
            let ids = tokenizer.encode(text, addSpecial: false, parseSpecial: false)
            if ids != expected[i] {
                failures += 1
                XCTFail("\(name) case \(i) \(text.debugDescription): got \(ids), expected \(expected[i])")
            }
        }
        XCTAssertEqual(failures, 0, name)
    }

    func testLlamaSentencePiece() throws { try check("llama-spm") }
    func testPhi3() throws { try check("phi-3") }
    func testGPT2() throws { try check("gpt-2") }
    func testFalcon() throws { try check("falcon") }
    func testDeepSeekCoder() throws { try check("deepseek-coder") }

    // Fetched from llama.cpp's sources (scripts/fetch-vocab-oracles.sh).
    func testLlama3() throws { try check("llama-bpe", fetched: true) }
    func testQwen2() throws { try check("qwen2", fetched: true) }
    func testDeepSeekLLM() throws { try check("deepseek-llm", fetched: true) }
    func testCommandR() throws { try check("command-r", fetched: true) }
    func testMPT() throws { try check("mpt", fetched: true) }
    func testRefact() throws { try check("refact", fetched: true) }
    func testStarCoder() throws { try check("starcoder", fetched: true) }

}
