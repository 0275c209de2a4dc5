import Foundation
import GGUF
import TestSupport
import XCTest

/// Every GGUF the project is given opens, and SmolLM2 reads as documented.
final class SharedFilesTests: XCTestCase {
    func testEverySharedGGUFOpens() throws {
        // The repository's test data, the fetched tokenizer oracles, and ../shared's files when it is there.
        let roots = [TestData.packageRoot + "/testdata", TestData.packageRoot + "/models/vocab", TestData.sharedRoot + "/testdata"]
        let files = roots.flatMap { root in
            (FileManager.default.enumerator(atPath: root)?.compactMap { $0 as? String } ?? []).filter { $0.hasSuffix(".gguf") }
                .map { root + "/" + $0 }
        }
        XCTAssertGreaterThanOrEqual(files.count, 8)
        for path in files {
            let relative = path
            let file = try GGUFFile(path: path)
            XCTAssertGreaterThan(file.metadata.count, 0, relative)
            for t in file.tensors where t.type.isDequantizable && t.elementCount <= 1 << 16 {
                XCTAssertEqual(try file.floats(of: t).count, t.elementCount)
            }
        }
    }

    func testVocabularyFilesHaveNoTensors() throws {
        let file = try GGUFFile(path: try Paths.requireShared("testdata/vocab/ggml-vocab-llama-spm.gguf"))
        XCTAssertEqual(file.tensors.count, 0)
        XCTAssertEqual(try file.metadata.string("tokenizer.ggml.model"), "llama")
        XCTAssertGreaterThan(try file.metadata.stringArray("tokenizer.ggml.tokens").count, 30000)
    }

    func testSmolLM2() throws {
        let file = try GGUFFile(path: try Paths.requireSmolLM2())
        XCTAssertEqual(try file.metadata.string("general.architecture"), "llama")
        XCTAssertEqual(try file.metadata.uint32("llama.block_count"), 30)
        XCTAssertEqual(file.tensors.count, 272)
        XCTAssertEqual(file.tensors.filter { $0.type == .q4_1 }.count, 210)
        XCTAssertEqual(file.tensors.filter { $0.type == .f32 }.count, 61)
        XCTAssertEqual(file.tensors.filter { $0.type == .q8_0 }.count, 1)
        XCTAssertEqual(file.parameterCount, 134_515_008)
        XCTAssertEqual(file.tensor(named: "token_embd.weight")?.dimensions, [576, 49152])
        XCTAssertNil(file.tensor(named: "output.weight"))
        // The reference logits file's input ids are the first tokens of Shakespeare, readable as I32.
        let ref = try GGUFFile(path: try Paths.requireShared("testdata/reference/smollm2-base-logits-compact.gguf"))
        XCTAssertEqual(try ref.int32s(of: ref.requireTensor("input_ids")).count, 64)
    }
}
