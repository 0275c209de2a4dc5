import Foundation
import GGUF
import Tokenizer
import XCTest

/// The real SmolLM2 tokenizer against ids and pieces from Hugging Face's tokenizer on the same GGUF.
final class SmolLM2TokenizerTests: XCTestCase {
    static var cached: Tokenizer?

    func tokenizer() throws -> Tokenizer {
        if let t = Self.cached { return t }
        let t = try Tokenizer(file: GGUFFile(path: try SharedData.requireModel()))
        Self.cached = t
        return t
    }

    func testReferenceCases() throws {
        let tokenizer = try tokenizer()
        let path = try SharedData.require("testdata/reference/smollm2-tokens.json")
        let json = try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: path))) as! [String: Any]
        let cases = json["cases"] as! [[String: Any]]
        XCTAssertGreaterThan(cases.count, 10)
        for c in cases {
            let name = c["name"] as! String
            let text = c["text"] as! String
            let noBOS = (c["ids_no_bos"] as! [Int]).map(Int32.init)
            let withBOS = (c["ids_with_bos"] as! [Int]).map(Int32.init)
            let pieces = c["pieces"] as! [String]
            let ids = tokenizer.encode(text, addSpecial: false, parseSpecial: true)
            XCTAssertEqual(ids, noBOS, name)
            XCTAssertEqual(tokenizer.encode(text, addSpecial: true, parseSpecial: true), noBOS, "\(name): SmolLM2 adds no BOS")
            XCTAssertEqual([tokenizer.vocabulary.bos!] + ids, withBOS, name)
            XCTAssertEqual(ids.map(tokenizer.tokenText), pieces, name)
            if c["decode_roundtrip_ok"] as? Bool == true {
                XCTAssertEqual(tokenizer.decode(ids, special: true), text, name)
            }
        }
    }

    func testSpecialTokens() throws {
        let t = try tokenizer()
        XCTAssertEqual(t.vocabulary.bos, 1)
        XCTAssertEqual(t.vocabulary.eos, 2)
        XCTAssertFalse(t.vocabulary.addBOS)
        XCTAssertTrue(t.isEndOfGeneration(2))
        XCTAssertEqual(t.encode("<|im_start|>user", addSpecial: false, parseSpecial: true).first, 1)
        XCTAssertNotEqual(t.encode("<|im_start|>user", addSpecial: false, parseSpecial: false).first, 1)
    }

    func testShakespeareRoundTrip() throws {
        let t = try tokenizer()
        let path = try SharedData.require("data/shakespeare.txt")
        let bytes = Array(try Data(contentsOf: URL(fileURLWithPath: path)))
        let ids = t.encode(bytes: bytes, addSpecial: false, parseSpecial: false)
        XCTAssertGreaterThan(ids.count, 200_000)
        XCTAssertEqual(t.decodeBytes(ids), bytes)
    }

    func testStreamingDecoderNeverSplitsCharacters() throws {
        let t = try tokenizer()
        let text = "naïve café 日本語 👍🏽 done"
        let ids = t.encode(text, addSpecial: false)
        var decoder = StreamingDecoder(tokenizer: t)
        var streamed = ""
        for id in ids {
            let chunk = decoder.append(id)
            XCTAssertFalse(chunk.contains("\u{FFFD}"), "chunk split a character")
            streamed += chunk
        }
        streamed += decoder.finish()
        XCTAssertEqual(streamed, text)
    }
}
