import Foundation
import GGUF
import TestSupport
import XCTest

/// Runs the built `lorakit` binary as a user would.
enum LoRAKitBinary {
    static var path: String {
        let dir = URL(fileURLWithPath: CommandLine.arguments[0]).deletingLastPathComponent()
        var candidate = dir.appendingPathComponent("lorakit").path
        if !FileManager.default.fileExists(atPath: candidate) {
            candidate = dir.deletingLastPathComponent().appendingPathComponent("lorakit").path
        }
        return candidate
    }

    static let packageRoot = URL(fileURLWithPath: #filePath).deletingLastPathComponent()
        .deletingLastPathComponent().deletingLastPathComponent().path

    /// Runs `lorakit args…` (or another program, such as mpirun), returning (status, stdout, stderr);
    /// `combined`: both streams into one pipe, as `2>&1` does (returned as stdout, stderr empty).
    static func run(_ args: [String], stdin: String? = nil, executable: String? = nil,
                    environment: [String: String] = [:], combined: Bool = false) throws -> (Int32, String, String) {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: executable ?? path)
        process.arguments = args
        if !environment.isEmpty {
            process.environment = ProcessInfo.processInfo.environment.merging(environment) { $1 }
        }
        let out = Pipe(), err = Pipe()
        process.standardOutput = out
        process.standardError = combined ? out : err
        if let stdin {
            let input = Pipe()
            process.standardInput = input
            input.fileHandleForWriting.write(stdin.data(using: .utf8)!)
            try? input.fileHandleForWriting.close()
        }
        try process.run()
        let outData = out.fileHandleForReading.readDataToEndOfFile()
        try? err.fileHandleForWriting.close()  // unused when combined: its reader must see the end
        let errData = err.fileHandleForReading.readDataToEndOfFile()
        process.waitUntilExit()
        return (process.terminationStatus, String(decoding: outData, as: UTF8.self), String(decoding: errData, as: UTF8.self))
    }
}

/// Collapses runs of spaces so checks do not depend on column widths.
func squeezed(_ s: String) -> String {
    s.split(separator: "\n", omittingEmptySubsequences: false)
        .map { $0.split(separator: " ").joined(separator: " ") }.joined(separator: "\n")
}

final class InfoCommandTests: XCTestCase {
    var smolLM2: String { LoRAKitBinary.packageRoot + "/models/SmolLM2-135M-Instruct.Q4_1.gguf" }

    func testInfoOnTinyModel() throws {
        let path = temporaryDirectory() + "/tiny.gguf"
        var model = TinyLlama()
        model.weightType = .q8_0
        try model.write(to: path)
        let (status, raw, err) = try LoRAKitBinary.run(["info", path, "--tensors"])
        let out = squeezed(raw)
        XCTAssertEqual(status, 0, err)
        XCTAssertTrue(out.contains("architecture llama"), out)
        XCTAssertTrue(out.contains("block_count"), out)
        XCTAssertTrue(out.contains("blk.1.ffn_down.weight"), out)
        XCTAssertTrue(out.contains("Q8_0"), out)
    }

    func testInfoOnSmolLM2() throws {
        _ = try TestData.smolLM2()
        let start = Date()
        let (status, raw, err) = try LoRAKitBinary.run(["info", smolLM2])
        let out = squeezed(raw)
        let elapsed = Date().timeIntervalSince(start)
        XCTAssertEqual(status, 0, err)
        XCTAssertTrue(out.contains("llama"))
        XCTAssertTrue(out.contains("block_count 30"), out)
        XCTAssertTrue(out.contains("272 (210 Q4_1, 61 F32, 1 Q8_0)"), out)
        XCTAssertTrue(out.contains("134.5 M"), out)
        XCTAssertTrue(out.contains("chat template present"), out)
        XCTAssertLessThan(elapsed, 5, "info reads no tensor data")

        let (jsonStatus, json, _) = try LoRAKitBinary.run(["info", smolLM2, "--json", "--tensors", "--metadata"])
        XCTAssertEqual(jsonStatus, 0)
        let object = try JSONSerialization.jsonObject(with: Data(json.utf8)) as! [String: Any]
        XCTAssertEqual(object["architecture"] as? String, "llama")
        XCTAssertEqual(object["tensor_count"] as? Int, 272)
        XCTAssertEqual(object["parameter_count"] as? Int, 134_515_008)
        XCTAssertEqual((object["tensor_types"] as? [String: Int])?["Q4_1"], 210)
        XCTAssertEqual((object["hyperparameters"] as? [String: Any])?["llama.block_count"] as? Int, 30)
        XCTAssertEqual((object["tensors"] as? [Any])?.count, 272)
        XCTAssertNotNil((object["metadata"] as? [String: Any])?["tokenizer.ggml.tokens"])
    }

    func testInfoOnVocabularyOnlyFile() throws {
        let vocab = try TestData.shared("testdata/vocab/ggml-vocab-gpt-2.gguf")
        guard FileManager.default.fileExists(atPath: vocab) else { throw XCTSkip("shared data missing") }
        let (status, raw, err) = try LoRAKitBinary.run(["info", vocab, "--metadata"])
        let out = squeezed(raw)
        XCTAssertEqual(status, 0, err)
        XCTAssertTrue(out.contains("kind vocabulary"), out)
        XCTAssertTrue(out.contains("tensors 0"), out)
        XCTAssertTrue(out.contains("tokenizer.ggml.tokens [array of string]"), out)
    }

    func testInfoOnAdapterFile() throws {
        let adapter = try TestData.shared("testdata/reference/smollm2-lora-init.gguf")
        guard FileManager.default.fileExists(atPath: adapter) else { throw XCTSkip("shared data missing") }
        let (status, raw, err) = try LoRAKitBinary.run(["info", adapter])
        let out = squeezed(raw)
        XCTAssertEqual(status, 0, err)
        XCTAssertTrue(out.contains("kind adapter"), out)
        XCTAssertTrue(out.contains("alpha 16"), out)
        XCTAssertTrue(out.contains("420"), out)
    }

    func testBrokenFileExitsOneWithErrorLine() throws {
        let dir = temporaryDirectory()
        var model = TinyLlama()
        model.blockCount = 1
        let bytes = try model.writer().serialized()
        let cases: [(String, [UInt8])] = [
            ("truncated", Array(bytes.prefix(bytes.count / 2))),
            ("header-cut", Array(bytes.prefix(20))),
            ("empty", []),
            ("garbage", Array("hello world, not a model".utf8)),
        ]
        for (name, content) in cases {
            let path = dir + "/\(name).gguf"
            XCTAssertTrue(FileManager.default.createFile(atPath: path, contents: Data(content)))
            let (status, out, err) = try LoRAKitBinary.run(["info", path])
            XCTAssertEqual(status, 1, name)
            XCTAssertEqual(out, "", name)
            XCTAssertTrue(err.hasPrefix("error: "), "\(name): \(err)")
            XCTAssertEqual(err.split(separator: "\n").count, 1, "\(name): \(err)")
        }
    }
}
