import TestSupport

/// Locations of this target's fixtures; the model and shared data come from TestSupport's `TestData`.
enum Paths {
    static let fixtures = TestData.packageRoot + "/Tests/GGUFTests/Fixtures"
    static func requireSmolLM2() throws -> String { try TestData.smolLM2() }
    static func requireShared(_ relative: String) throws -> String { try TestData.shared(relative) }
}
