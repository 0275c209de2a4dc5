// swift-tools-version:6.0
import PackageDescription

let package = Package(
    name: "LoRAKit",
    platforms: [.macOS(.v13)],
    products: [
        .library(name: "GGUF", targets: ["GGUF"]),
        .library(name: "Tokenizer", targets: ["Tokenizer"]),
        .library(name: "LoRAKit", targets: ["GGUF", "Tokenizer", "Kernels", "LoRA", "Llama", "Training", "Distributed"]),
        .executable(name: "lorakit", targets: ["lorakit"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.5.0"),
    ],
    targets: [
        .target(name: "GGUF"),
        .target(name: "Tokenizer", dependencies: ["GGUF"]),
        .target(name: "CKernels"),
        .target(name: "Kernels", dependencies: ["CKernels"]),
        .target(name: "LoRA", dependencies: ["GGUF", "Kernels"]),
        .target(name: "Llama", dependencies: ["GGUF", "Kernels", "CKernels", "LoRA", "Tokenizer"]),
        .target(name: "Distributed"),
        .target(name: "Training", dependencies: ["GGUF", "Kernels", "LoRA", "Llama", "Tokenizer", "Distributed"]),
        .executableTarget(
            name: "lorakit",
            dependencies: [
                "GGUF",
                "Tokenizer",
                "Kernels",
                "LoRA",
                "Llama",
                "Training",
                "Distributed",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
            ]
        ),
        .executableTarget(
            name: "lorakit-bench",
            dependencies: ["GGUF", "Tokenizer", "Kernels", "CKernels", "LoRA", "Llama", "Training", "Distributed", .product(name: "ArgumentParser", package: "swift-argument-parser")]
        ),
        .executableTarget(
            name: "lorakit-example",
            dependencies: ["GGUF", "Tokenizer", "LoRA", "Llama", "Training"],
            path: "Examples/FineTune"
        ),
        .executableTarget(name: "lorakit-fuzz", dependencies: ["GGUF", "Tokenizer", "LoRA", "Llama", "Training"]),
        .target(name: "TestSupport", dependencies: ["GGUF", "LoRA"]),
        .testTarget(name: "GGUFTests", dependencies: ["GGUF", "TestSupport"], exclude: ["Fixtures"]),
        .testTarget(name: "TokenizerTests", dependencies: ["Tokenizer", "GGUF", "TestSupport"]),
        .testTarget(name: "LlamaTests", dependencies: ["Llama", "LoRA", "Kernels", "GGUF", "Tokenizer", "TestSupport"]),
        .testTarget(name: "KernelsTests", dependencies: ["Kernels", "CKernels", "GGUF"]),
        .testTarget(name: "TrainingTests", dependencies: ["Training", "LoRA", "Tokenizer", "GGUF", "TestSupport"]),
        .testTarget(name: "AdapterTests", dependencies: ["LoRA", "Llama", "GGUF", "Kernels", "TestSupport", "lorakit"], exclude: ["Fixtures"]),
        .testTarget(name: "CLITests", dependencies: ["lorakit", "GGUF", "Kernels", "LoRA", "TestSupport"]),
    ],
    swiftLanguageModes: [.v5]
)
