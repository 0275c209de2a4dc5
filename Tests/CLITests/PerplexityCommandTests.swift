import Foundation
import Kernels
import TestSupport
import XCTest

/// `lorakit perplexity` prints llama.cpp's lines; the scoring itself (and the reference value) is tested through the
/// library in LibraryAlgorithmTests.
final class PerplexityCommandTests: XCTestCase {
    /// The first `bytes` of shakespeare.txt in a file of their own.
    func shakespeare(_ bytes: Int) throws -> String {
        let text = try Data(contentsOf: URL(fileURLWithPath: try TestData.shared("data/shakespeare.txt"))).prefix(bytes)
        let path = temporaryDirectory() + "/shakespeare-\(bytes).txt"
        try text.write(to: URL(fileURLWithPath: path))
        return path
    }

    /// Rows longer than the model's training context (the tiny model's 128) are scored and generated with a warning on
    /// standard error, the same line `train` reports; within it, none.
    func testContextBeyondTheModelsIsWarnedAbout() throws {
        let (_, model, text) = try tinyModelAndText("lorakit-ctx", repeats: 20)
        let warning = "warning: --ctx 160 is beyond the 128 tokens the model was trained on"
        for command in [["perplexity", "-f", text], ["generate", "-p", "THE QUICK", "-n", "2"]] {
            let (status, _, err) = try LoRAKitBinary.run(command + ["-m", model, "-c", "160"])
            XCTAssertEqual(status, 0, err)
            XCTAssertTrue(err.contains(warning), "\(command[0]): \(err)")
            let (within, _, quiet) = try LoRAKitBinary.run(command + ["-m", model, "-c", "64"])
            XCTAssertEqual(within, 0, quiet)
            XCTAssertFalse(quiet.contains("trained on"), "\(command[0]): \(quiet)")
        }
    }

    func testPrintsLlamaCppLines() throws {
        let model = try TestData.smolLM2(), path = try shakespeare(20000)
        let (status, out, err) = try LoRAKitBinary.run(["perplexity", "-m", model, "-f", path, "-c", "256", "-b", "512", "--chunks", "3"])
        XCTAssertEqual(status, 0, err)
        XCTAssertTrue(out.contains("3 chunks of 256"), out)
        XCTAssertTrue(out.contains("seconds per pass - ETA"), out)
        XCTAssertTrue(out.contains("[1]") && out.contains(",[2]") && out.contains("[3]"), out)
        let line = out.split(separator: "\n").first { $0.hasPrefix("Final estimate: PPL = ") }
        XCTAssertNotNil(line.flatMap { Double($0.dropFirst("Final estimate: PPL = ".count).split(separator: " ")[0]) }, out)
    }

    /// --precision bf16 scores within bf16's accuracy bar (0.5 %) of float32 where the CPU has bf16 products, and is
    /// float32 exactly, saying so, where it does not (forced with LORAKIT_BF16=off).
    func testBf16PrecisionScoresCloseOrFallsBack() throws {
        let model = try TestData.smolLM2(), path = try shakespeare(6000)
        func estimate(_ extra: [String], environment: [String: String] = [:]) throws -> (Double, String) {
            let (status, out, err) = try LoRAKitBinary.run(["perplexity", "-m", model, "-f", path, "-c", "256", "-t", "2"] + extra,
                                                           environment: environment)
            XCTAssertEqual(status, 0, err)
            let line = out.split(separator: "\n").first { $0.hasPrefix("Final estimate: PPL = ") }
            return (try XCTUnwrap(line.flatMap { Double($0.dropFirst("Final estimate: PPL = ".count).split(separator: " ")[0]) }, out), out)
        }
        let (float32, _) = try estimate([])
        let (fallback, said) = try estimate(["--precision", "bf16"], environment: ["LORAKIT_BF16": "off"])
        XCTAssertEqual(fallback, float32)
        XCTAssertTrue(said.contains("precision: float32: bf16 was asked for, but bf16 products are turned off"), said)
        guard BFloat16GEMM.isAvailable else { return }
        let (bf16, out) = try estimate(["--precision", "bf16"])
        XCTAssertTrue(out.contains("precision: bf16 products on oneDNN"), out)
        XCTAssertNotEqual(bf16, float32)
        XCTAssertEqual(bf16, float32, accuracy: float32 * 0.005)
    }

    /// --activations int8 scores token by token with 8-bit activations: a different, close estimate.
    func testInt8ActivationsScoreClose() throws {
        let model = try TestData.smolLM2(), path = try shakespeare(3000)
        func estimate(_ extra: [String]) throws -> Double {
            let (status, out, err) = try LoRAKitBinary.run(["perplexity", "-m", model, "-f", path, "-c", "128", "--chunks", "2"] + extra)
            XCTAssertEqual(status, 0, err)
            let line = out.split(separator: "\n").first { $0.hasPrefix("Final estimate: PPL = ") }
            return try XCTUnwrap(line.flatMap { Double($0.dropFirst("Final estimate: PPL = ".count).split(separator: " ")[0]) }, out)
        }
        let exact = try estimate([]), int8 = try estimate(["--activations", "int8"])
        XCTAssertNotEqual(exact, int8)
        // Rounding flips with the last bit of an activation, so on these 128 scored tokens the estimate moves by
        // about ±1 % between builds and thread counts; a wrong kernel is off by far more.
        XCTAssertEqual(int8, exact, accuracy: exact * 0.03)
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
