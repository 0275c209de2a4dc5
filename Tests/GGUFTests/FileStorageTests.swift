import Foundation
import GGUF
import XCTest

/// A file read into memory (`.inMemory`, generation's choice) holds the bytes a mapping of it holds, and reading
/// fails with one line where mapping does.
final class FileStorageTests: XCTestCase {
    var directory: String!

    override func setUpWithError() throws {
        directory = NSTemporaryDirectory() + "lorakit-storage-\(UUID().uuidString)"
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
    }

    override func tearDownWithError() throws {
        try? FileManager.default.removeItem(atPath: directory)
    }

    /// A file larger than one read (64 MiB) and not a multiple of a page or a huge page.
    func testReadBytesEqualTheMappedBytes() throws {
        let path = directory + "/large.bin"
        var generator = SystemRandomNumberGenerator()
        let count = (64 << 20) + 4096 * 3 + 17
        let bytes = (0..<count / 8 + 1).flatMap { _ in withUnsafeBytes(of: generator.next()) { Array($0) } }.prefix(count)
        try Data(bytes).write(to: URL(fileURLWithPath: path))
        let read = try FileBytes(reading: path), mapped = try FileBytes(mapping: path)
        XCTAssertEqual(read.bytes.count, count)
        XCTAssertTrue(read.bytes.elementsEqual(mapped.bytes))
        // The data starts on a 2 MiB boundary, so that huge pages can back all of it.
        XCTAssertEqual(Int(bitPattern: read.bytes.baseAddress!) % (2 << 20), 0)
    }

    func testAModelReadIntoMemoryParsesAsMapped() throws {
        var writer = GGUFWriter()
        writer.metadata.set("general.architecture", .string("llama"))
        try writer.addTensor(name: "w", dimensions: [64, 3], values: (0..<192).map { Float($0) / 7 }, type: .q8_0)
        let path = directory + "/tiny.gguf"
        try Data(writer.serialized()).write(to: URL(fileURLWithPath: path))
        let read = try GGUFFile(path: path, storage: .inMemory), mapped = try GGUFFile(path: path)
        XCTAssertEqual(try read.floats(of: read.requireTensor("w")), try mapped.floats(of: mapped.requireTensor("w")))
        XCTAssertEqual(try read.metadata.string("general.architecture"), "llama")
    }

    func testReadingFailsWithOneLine() throws {
        let empty = directory + "/empty.gguf"
        FileManager.default.createFile(atPath: empty, contents: Data())
        XCTAssertEqual(try FileBytes(reading: empty).bytes.count, 0)
        for (path, expected) in [(directory + "/missing.gguf", "No such file"), (directory!, "is a directory"), (empty, "empty.gguf")] {
            XCTAssertThrowsError(try GGUFFile(path: path, storage: .inMemory)) { error in
                let text = String(describing: error)
                XCTAssertTrue(text.contains(expected), text)
                XCTAssertFalse(text.contains("\n"), text)
            }
        }
    }
}
