import Foundation
import XCTest

/// Locations of the project's fixtures, the shared test data beside the project, and the SmolLM2 model.
enum Paths {
    static let packageRoot = URL(fileURLWithPath: #filePath).deletingLastPathComponent()
        .deletingLastPathComponent().deletingLastPathComponent().path
    static let fixtures = packageRoot + "/Tests/GGUFTests/Fixtures"
    static let shared = ProcessInfo.processInfo.environment["LORAKIT_SHARED"] ?? packageRoot + "/../shared"
    static let smolLM2 = ProcessInfo.processInfo.environment["LORAKIT_MODEL"]
        ?? packageRoot + "/models/SmolLM2-135M-Instruct.Q4_1.gguf"

    /// The SmolLM2 model path; the test fails when `LORAKIT_REQUIRE_MODEL=1` (as in CI) and it is missing,
    /// and is skipped otherwise.
    static func requireSmolLM2() throws -> String {
        if FileManager.default.fileExists(atPath: smolLM2) { return smolLM2 }
        if ProcessInfo.processInfo.environment["LORAKIT_REQUIRE_MODEL"] == "1" {
            XCTFail("SmolLM2 model missing at \(smolLM2): run scripts/fetch-model.sh")
        }
        throw XCTSkip("SmolLM2 model not found at \(smolLM2) (scripts/fetch-model.sh fetches it)")
    }

    static func requireShared(_ relative: String) throws -> String {
        let path = shared + "/" + relative
        guard FileManager.default.fileExists(atPath: path) else {
            throw XCTSkip("shared test data missing: \(path)")
        }
        return path
    }
}
