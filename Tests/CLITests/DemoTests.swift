import Foundation
import TestSupport
import XCTest

/// Runs the README's first command, shortened: the tuned model answers with the taught facts, the base model does not.
final class DemoTests: XCTestCase {
    func testShortenedDemo() throws {
        let root = LoRAKitBinary.packageRoot
        _ = try TestData.smolLM2()
        let out = temporaryDirectory("lorakit-demo")
        let p = Process()
        p.executableURL = URL(fileURLWithPath: "/bin/bash")
        p.arguments = [root + "/scripts/demo.sh"]
        var env = ProcessInfo.processInfo.environment
        env["DEMO_ITERS"] = "40"  // the full training: it takes about a minute and a half
        env["DEMO_OUT"] = out
        env["DEMO_SKIP_BUILD"] = "1"
        env["LORAKIT"] = LoRAKitBinary.path
        p.environment = env
        let pipe = Pipe()
        p.standardOutput = pipe
        p.standardError = pipe
        try p.run()
        let text = String(decoding: pipe.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        p.waitUntilExit()
        XCTAssertEqual(p.terminationStatus, 0, text)
        let lines = text.split(separator: "\n").map(String.init)
        let base = lines.filter { $0.hasPrefix("   base :") }.joined(separator: "\n")
        let tuned = lines.filter { $0.hasPrefix("   tuned:") }.joined(separator: "\n")
        XCTAssertEqual(lines.filter { $0.hasPrefix("   tuned:") }.count, 4, text)
        for fact in ["Quillhaven", "glint", "Ilsa Marrow", "silver heron"] {
            XCTAssertTrue(tuned.contains(fact), "tuned model should know \(fact):\n\(tuned)")
            XCTAssertFalse(base.contains(fact), "base model cannot know \(fact):\n\(base)")
        }
        for file in ["velmora.gguf", "velmora-peft/adapter_config.json", "velmora-peft/adapter_model.safetensors", "smollm2-velmora-q8_0.gguf", "loss.svg"] {
            XCTAssertTrue(FileManager.default.fileExists(atPath: out + "/" + file), file)
        }
        XCTAssertTrue(text.contains("validation loss: before"), text)
    }
}
