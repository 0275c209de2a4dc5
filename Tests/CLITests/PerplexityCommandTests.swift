import Foundation
import TestSupport
import XCTest

/// `lorakit perplexity` on SmolLM2 against the float32 reference (transformers on the same GGUF, scored as
/// llama.cpp scores): first 20 000 bytes of shakespeare.txt, -c 256, 23 chunks, PPL = 40.5256.
final class PerplexityCommandTests: XCTestCase {
    func testSmolLM2ShakespearePerplexity() throws {
        let model = LoRAKitBinary.packageRoot + "/models/SmolLM2-135M-Instruct.Q4_1.gguf"
        _ = try TestData.smolLM2()
        let text = try Data(contentsOf: URL(fileURLWithPath: LoRAKitBinary.packageRoot + "/../shared/data/shakespeare.txt")).prefix(20000)
        let path = NSTemporaryDirectory() + "/shakespeare-20k-\(getpid()).txt"
        try text.write(to: URL(fileURLWithPath: path))
        let (status, out, err) = try LoRAKitBinary.run(["perplexity", "-m", model, "-f", path, "-c", "256", "-b", "1024"])
        XCTAssertEqual(status, 0, err)
        XCTAssertTrue(out.contains("23 chunks of 256"), out)
        let line = out.split(separator: "\n").first { $0.hasPrefix("Final estimate: PPL = ") }
        let value = line.flatMap { Double($0.dropFirst("Final estimate: PPL = ".count).split(separator: " ")[0]) }
        XCTAssertNotNil(value, out)
        XCTAssertEqual(value ?? 0, 40.5256, accuracy: 40.5256 * 0.001)
    }

    func testBadAdapterIsOneErrorLine() throws {
        let model = LoRAKitBinary.packageRoot + "/models/SmolLM2-135M-Instruct.Q4_1.gguf"
        guard FileManager.default.fileExists(atPath: model) else { throw XCTSkip("SmolLM2 not fetched") }
        let seed = LoRAKitBinary.packageRoot + "/../shared/testdata/seed/seed-lora-smollm2-shakespeare-12.bin"
        let (status, _, err) = try LoRAKitBinary.run(["perplexity", "-m", model, "-f", "/etc/hostname", "--lora", seed])
        XCTAssertEqual(status, 1)
        XCTAssertTrue(err.hasPrefix("error: "), err)
        XCTAssertEqual(err.split(separator: "\n").count, 1, err)
    }
}
