import Foundation
import GGUF
import Llama
import LoRA
import TestSupport
import XCTest

/// Inputs libFuzzer found (scripts/fuzz.sh), each once a trap or a hang: now an error, at once.
final class FuzzFindingsTests: XCTestCase {
    func fixture(_ name: String) -> String {
        URL(fileURLWithPath: #filePath).deletingLastPathComponent().appendingPathComponent("Fixtures/fuzz/" + name).path
    }

    /// A ggla tensor whose two dimensions multiplied past Int.max (an overflow trap).
    func testGGLADimensionOverflow() {
        XCTAssertThrowsError(try AdapterLoader.load(fixture("adapter-ggla-dimension-overflow.bin")))
    }

    /// block_count in the millions: the shape check named every tensor of every block first (a 12 s hang).
    func testHugeBlockCount() throws {
        let start = Date()
        let file = try GGUFFile(path: fixture("gguf-huge-block-count.bin"))
        XCTAssertThrowsError(try LlamaConfig(file: file))
        XCTAssertLessThan(Date().timeIntervalSince(start), 1)
    }

    /// adapter_config.json with r = 666…62 (past Int): converting it trapped. Input: config, NUL, safetensors.
    func testPEFTConfigWithAHugeRank() throws {
        let bytes = try Data(contentsOf: URL(fileURLWithPath: fixture("peft-huge-rank.bin")))
        let split = bytes.firstIndex(of: 0) ?? bytes.count
        let dir = temporaryDirectory("lorakit-fuzz-peft")
        try bytes[..<split].write(to: URL(fileURLWithPath: dir + "/adapter_config.json"))
        try bytes[min(split + 1, bytes.count)...].write(to: URL(fileURLWithPath: dir + "/adapter_model.safetensors"))
        XCTAssertThrowsError(try AdapterLoader.load(dir, heads: PEFT.Heads(heads: 4, kvHeads: 2)))
    }
}
