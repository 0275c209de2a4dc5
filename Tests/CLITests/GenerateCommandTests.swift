import Foundation
import Kernels
import TestSupport
import XCTest

final class GenerateCommandTests: XCTestCase {
    var model: String { LoRAKitBinary.packageRoot + "/models/SmolLM2-135M-Instruct.Q4_1.gguf" }

    func requireModel() throws {
        _ = try TestData.smolLM2()
    }

    func testGreedyGenerationAndSpeedReport() throws {
        try requireModel()
        let (status, out, err) = try LoRAKitBinary.run(["generate", "-m", model, "-p", "The capital of France is", "-n", "8", "--temp", "0"])
        XCTAssertEqual(status, 0, err)
        XCTAssertTrue(out.hasPrefix("The capital of France is Paris."), out)
        XCTAssertTrue(err.contains("tokens/s"), err)
        // Piped together (`2>&1`), the text and its newline come before the speed line, not inside it.
        let (_, both, _) = try LoRAKitBinary.run(["generate", "-m", model, "-p", "The capital of France is", "-n", "8", "--temp", "0"],
                                                  combined: true)
        let lines = both.split(separator: "\n").map(String.init)
        XCTAssertTrue(lines.contains { $0.hasPrefix("The capital of France is Paris.") }, both)
        XCTAssertTrue(lines.last?.hasPrefix("prompt:") == true, both)
        // With --ids the ids get a line of their own after the text's.
        let (_, withIDs, _) = try LoRAKitBinary.run(["generate", "-m", model, "-p", "The capital of France is", "-n", "8", "--temp", "0",
                                                     "--ids"], combined: true)
        let idLines = withIDs.split(separator: "\n").map(String.init)
        XCTAssertEqual(idLines.filter { $0.hasPrefix("ids: ") }.count, 1, withIDs)
        XCTAssertTrue(idLines.contains { $0.hasPrefix("The capital of France is Paris.") && !$0.contains("ids:") }, withIDs)
    }

    /// The model read into memory (the default) and mapped (`--mmap`) generate the same text.
    func testMappedModelGeneratesTheSame() throws {
        try requireModel()
        let arguments = ["generate", "-m", model, "-p", "The capital of France is", "-n", "8", "--temp", "0"]
        let (status, out, err) = try LoRAKitBinary.run(arguments)
        let (mappedStatus, mappedOut, mappedErr) = try LoRAKitBinary.run(arguments + ["--mmap"])
        XCTAssertEqual(status, 0, err)
        XCTAssertEqual(mappedStatus, 0, mappedErr)
        XCTAssertEqual(out, mappedOut)
    }

    /// 8-bit activations: still Paris, and an unknown mode is one error line.
    func testInt8ActivationsAndABadMode() throws {
        try requireModel()
        let (status, out, err) = try LoRAKitBinary.run(["generate", "-m", model, "-p", "The capital of France is", "-n", "8",
                                                        "--temp", "0", "--activations", "int8"])
        XCTAssertEqual(status, 0, err)
        XCTAssertTrue(out.hasPrefix("The capital of France is Paris."), out)
        let (bad, _, badErr) = try LoRAKitBinary.run(["generate", "-m", model, "-p", "Hi", "--activations", "int4"])
        XCTAssertNotEqual(bad, 0)
        XCTAssertTrue(badErr.contains("int4"), badErr)
    }

    /// --precision bf16 runs the prompt's batched products in bf16 where the CPU has them (still Paris, said on
    /// standard error, not in the generated text) and in float32, saying so, where it does not: then the output is
    /// float32's exactly.
    func testBf16PromptPrecision() throws {
        try requireModel()
        let arguments = ["generate", "-m", model, "-p", "The capital of France is", "-n", "8", "--temp", "0", "--ids"]
        let (_, float32, float32Err) = try LoRAKitBinary.run(arguments)
        let (status, fallback, fallbackErr) = try LoRAKitBinary.run(arguments + ["--precision", "bf16"], environment: ["LORAKIT_BF16": "off"])
        XCTAssertEqual(status, 0, fallbackErr)
        XCTAssertTrue(fallbackErr.contains("precision: float32: bf16 was asked for, but bf16 products are turned off"), fallbackErr)
        XCTAssertEqual(fallback, float32)
        let ids = { (err: String) in err.split(separator: "\n").first { $0.hasPrefix("ids:") } }
        XCTAssertEqual(ids(fallbackErr), ids(float32Err))
        guard BFloat16GEMM.isAvailable else { return }
        let (bf16Status, bf16, bf16Err) = try LoRAKitBinary.run(arguments + ["--precision", "bf16"])
        XCTAssertEqual(bf16Status, 0, bf16Err)
        XCTAssertTrue(bf16Err.contains("precision: bf16 products on oneDNN"), bf16Err)
        XCTAssertFalse(bf16.contains("precision"), bf16)
        XCTAssertTrue(bf16.hasPrefix("The capital of France is Paris."), bf16)
    }

    /// Two turns through standard input: the second answer sees the first turn (kept in the KV cache).
    func testChatRemembersTheConversation() throws {
        try requireModel()
        let script = "My name is Zorblax. Please remember it.\nWhat is my name?\n/quit\n"
        let (status, out, err) = try LoRAKitBinary.run(["generate", "-m", model, "--chat", "--temp", "0", "-n", "24"], stdin: script)
        XCTAssertEqual(status, 0, err)
        let answers = out.components(separatedBy: "> ").filter { !$0.isEmpty }
        XCTAssertGreaterThanOrEqual(answers.count, 2, out)
        XCTAssertTrue(answers[1].contains("Zorblax"), out)
        let reset = "My name is Zorblax. Please remember it.\n/reset\nWhat is my name?\n/quit\n"
        let (_, out2, _) = try LoRAKitBinary.run(["generate", "-m", model, "--chat", "--temp", "0", "-n", "24"], stdin: reset)
        let answers2 = out2.components(separatedBy: "> ").filter { !$0.isEmpty }
        XCTAssertFalse(answers2.count > 2 && answers2[2].contains("Zorblax"), "after /reset the name is forgotten: \(out2)")
    }
}
