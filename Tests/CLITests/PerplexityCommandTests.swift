import Foundation
import TestSupport
import XCTest

/// `lorakit perplexity` prints llama.cpp's lines; the scoring itself (and the reference value) is tested through the
/// library in LibraryAlgorithmTests.
final class PerplexityCommandTests: XCTestCase {
    func testPrintsLlamaCppLines() throws {
        let model = LoRAKitBinary.packageRoot + "/models/SmolLM2-135M-Instruct.Q4_1.gguf"
        _ = try TestData.smolLM2()
        let text = try Data(contentsOf: URL(fileURLWithPath: try TestData.shared("data/shakespeare.txt"))).prefix(20000)
        let path = temporaryDirectory() + "/shakespeare-20k.txt"
        try text.write(to: URL(fileURLWithPath: path))
        let (status, out, err) = try LoRAKitBinary.run(["perplexity", "-m", model, "-f", path, "-c", "256", "-b", "512", "--chunks", "3"])
        XCTAssertEqual(status, 0, err)
        XCTAssertTrue(out.contains("3 chunks of 256"), out)
        XCTAssertTrue(out.contains("seconds per pass - ETA"), out)
        XCTAssertTrue(out.contains("[1]") && out.contains(",[2]") && out.contains("[3]"), out)
        let line = out.split(separator: "\n").first { $0.hasPrefix("Final estimate: PPL = ") }
        XCTAssertNotNil(line.flatMap { Double($0.dropFirst("Final estimate: PPL = ".count).split(separator: " ")[0]) }, out)
    }

    func testBadAdapterIsOneErrorLine() throws {
        let model = LoRAKitBinary.packageRoot + "/models/SmolLM2-135M-Instruct.Q4_1.gguf"
        guard FileManager.default.fileExists(atPath: model) else { throw XCTSkip("SmolLM2 not fetched") }
        // A GGUF that is no adapter at all.
        let notAnAdapter = try TestData.shared("testdata/reference/smollm2-base-logits-compact.gguf")
        let (status, _, err) = try LoRAKitBinary.run(["perplexity", "-m", model, "-f", try TestData.shared("data/shakespeare.txt"),
                                                      "--lora", notAnAdapter])
        XCTAssertEqual(status, 1)
        XCTAssertTrue(err.hasPrefix("error: "), err)
        XCTAssertEqual(err.split(separator: "\n").count, 1, err)
    }
}
