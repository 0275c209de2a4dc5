import Foundation
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
