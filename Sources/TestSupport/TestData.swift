import Foundation
import XCTest

/// Where tests find the SmolLM2 model and the shared test data beside the project.
public enum TestData {
    /// The package's root folder.
    public static let packageRoot = URL(fileURLWithPath: #filePath).deletingLastPathComponent()
        .deletingLastPathComponent().deletingLastPathComponent().path

    /// `../shared` beside the project (LORAKIT_SHARED overrides).
    public static let sharedRoot = ProcessInfo.processInfo.environment["LORAKIT_SHARED"] ?? packageRoot + "/../shared"

    /// The SmolLM2 model (LORAKIT_MODEL overrides). Missing, the test fails when `LORAKIT_REQUIRE_MODEL=1` (as in
    /// CI) and is skipped otherwise.
    public static func smolLM2() throws -> String {
        let path = ProcessInfo.processInfo.environment["LORAKIT_MODEL"] ?? packageRoot + "/models/SmolLM2-135M-Instruct.Q4_1.gguf"
        if FileManager.default.fileExists(atPath: path) { return path }
        if ProcessInfo.processInfo.environment["LORAKIT_REQUIRE_MODEL"] == "1" {
            XCTFail("SmolLM2 model missing at \(path): run scripts/fetch-model.sh")
        }
        throw XCTSkip("SmolLM2 model not found at \(path) (scripts/fetch-model.sh fetches it)")
    }

    /// One of the other real models scripts/fetch-model.sh fetches (`qwen2.5`, `gemma3`), by file name in models/.
    /// Missing, the test fails when `LORAKIT_REQUIRE_MODEL=1` (as in CI) and is skipped otherwise.
    public static func realModel(_ file: String) throws -> String {
        let path = packageRoot + "/models/" + file
        if FileManager.default.fileExists(atPath: path) { return path }
        if ProcessInfo.processInfo.environment["LORAKIT_REQUIRE_MODEL"] == "1" {
            XCTFail("model missing at \(path): run scripts/fetch-model.sh all")
        }
        throw XCTSkip("model not found at \(path) (scripts/fetch-model.sh all fetches it)")
    }

    /// A file or folder of the test data (`testdata/…`, `data/…`): the repository's own copy, or llama.cpp's tokenizer
    /// oracles fetched into models/vocab, or else `../shared`. What only `../shared` holds (the 2023 finetune's files)
    /// is skipped when missing, with the reason — and fails under CI, where a reference test must not be skipped.
    public static func shared(_ relative: String) throws -> String {
        var candidates = [packageRoot + "/" + relative]
        if relative.hasPrefix("testdata/vocab/") {
            candidates.append(packageRoot + "/models/vocab/" + relative.dropFirst("testdata/vocab/".count))
        }
        candidates.append(sharedRoot + "/" + relative)
        if let found = candidates.first(where: { FileManager.default.fileExists(atPath: $0) }) { return found }
        let reason = "test data missing: \(relative) (not in the repository; set LORAKIT_SHARED to the shared test data)"
        if ProcessInfo.processInfo.environment["CI"] == "true" { XCTFail(reason) }
        throw XCTSkip(reason)
    }

    /// One of llama.cpp's tokenizer test vocabularies beyond those in ../shared (`ggml-vocab-NAME.gguf` with its
    /// `.inp` and `.out`), fetched into models/vocab by scripts/fetch-vocab-oracles.sh. Missing, the test fails when
    /// `LORAKIT_REQUIRE_MODEL=1` (as in CI) and is skipped otherwise.
    public static func vocabOracle(_ name: String) throws -> String {
        let path = packageRoot + "/models/vocab/ggml-vocab-\(name).gguf"
        if FileManager.default.fileExists(atPath: path) { return path }
        if ProcessInfo.processInfo.environment["LORAKIT_REQUIRE_MODEL"] == "1" {
            XCTFail("tokenizer oracle missing at \(path): run scripts/fetch-vocab-oracles.sh")
        }
        throw XCTSkip("tokenizer oracle not found at \(path) (scripts/fetch-vocab-oracles.sh fetches it)")
    }
}

/// A fresh temporary directory for a test, inside one directory per test process that is removed when the process
/// exits, so test runs leave nothing behind in /tmp.
public func temporaryDirectory(_ name: String = "lorakit-test") -> String {
    let path = "\(testProcessDirectory)/\(name)-\(UInt64.random(in: 0...UInt64.max))"
    try? FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true)
    return path
}

private let testProcessDirectory: String = {
    atexit { try? FileManager.default.removeItem(atPath: processDirectoryPath()) }
    return processDirectoryPath()
}()

private func processDirectoryPath() -> String { "/tmp/lorakit-tests-\(getpid())" }

/// A new temporary directory holding `m.gguf`, the tiny model with its 66-token tokenizer, and `d.txt`, a pangram
/// repeated `repeats` times: what the tests that train or run commands on something small start from.
public func tinyModelAndText(_ name: String, repeats: Int) throws -> (dir: String, model: String, text: String) {
    let dir = temporaryDirectory(name)
    var tiny = TinyLlama()
    tiny.addTinyTokenizer()
    try tiny.write(to: dir + "/m.gguf")
    try String(repeating: "THE QUICK BROWN FOX JUMPS OVER THE LAZY DOG. ", count: repeats)
        .write(toFile: dir + "/d.txt", atomically: true, encoding: .utf8)
    return (dir, dir + "/m.gguf", dir + "/d.txt")
}
