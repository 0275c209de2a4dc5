// swift-tools-version:6.0
import PackageDescription

let package = Package(
    name: "LoRAKit",
    platforms: [.macOS(.v13)],
    products: [
        .library(name: "GGUF", targets: ["GGUF"]),
        .executable(name: "lorakit", targets: ["lorakit"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.5.0"),
    ],
    targets: [
        .target(name: "GGUF"),
        .executableTarget(
            name: "lorakit",
            dependencies: [
                "GGUF",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
            ]
        ),
        .target(name: "TestSupport", dependencies: ["GGUF"]),
        .testTarget(name: "GGUFTests", dependencies: ["GGUF", "TestSupport"], exclude: ["Fixtures"]),
        .testTarget(name: "CLITests", dependencies: ["lorakit", "GGUF", "TestSupport"]),
    ],
    swiftLanguageModes: [.v5]
)
