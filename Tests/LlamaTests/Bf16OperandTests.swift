import Foundation
import GGUF
import Kernels
import Llama
import TestSupport
import XCTest

/// `FrozenProductInputs.bf16`: the frozen-weight products multiply both operands rounded to bf16 (round to nearest
/// even) and accumulate in float32, as a bf16 matrix product does.
final class Bf16OperandTests: XCTestCase {
    /// A tiny model with TinyLlama's shapes and metadata; the tensors named by `zero` hold zeros.
    func tinyModel(zero: (String) -> Bool = { _ in false }, _ configure: (inout TinyLlama) -> Void) throws -> (LlamaModel<Float>, GGUFFile) {
        var tiny = TinyLlama()
        configure(&tiny)
        var writer = GGUFWriter(metadata: tiny.metadata)
        for (index, (name, shape)) in tiny.tensorShapes.enumerated() {
            let count = shape.reduce(1, *)
            let values: [Float] = zero(name) ? [Float](repeating: 0, count: count)
                : (0..<count).map { k in (shape.count == 1 ? 1 : 0) + 0.3 * sin(0.37 * Float(k) + 0.0007 * Float(k * k) + Float(index)) }
            try writer.addTensor(name: name, dimensions: shape, values: values)
        }
        let file = try GGUFFile(bytes: FileBytes(copying: writer.serialized()), name: "tiny.gguf")
        return (try LlamaModel<Float>(file: file), file)
    }

    static func bf16(_ x: Float) -> Float { HalfPrecision.floatFromBFloat16Bits(HalfPrecision.bfloat16Bits(from: x)) }

    /// With a block whose output weights are zero, a logit is one frozen product: the final norm of the token's
    /// embedding times a head row.
    /// Computed here from the file's tensors with both operands rounded, it equals the model's bf16 logits (up to
    /// summation order), and differs from the float32 ones by no more than bf16's rounding allows.
    func testOneProductEqualsTheRoundedOperandsDotProduct() throws {
        let (model, file) = try tinyModel(zero: { $0.hasSuffix("attn_output.weight") || $0.hasSuffix("ffn_down.weight") }) {
            $0.blockCount = 1; $0.embeddingLength = 64; $0.vocabularySize = 48
        }
        let tokens: [Int32] = [3, 17, 40]
        let float32 = try model.logits(tokens: tokens)
        model.frozenProductInputs = .bf16
        let rounded = try model.logits(tokens: tokens)
        let C = 64, V = 48
        let embedding = try file.floats(of: try file.requireTensor("token_embd.weight"))
        let norm = try file.floats(of: try file.requireTensor("output_norm.weight"))
        let head = try file.floats(of: try file.requireTensor("output.weight"))
        let epsilon = model.config.rmsEpsilon
        var largestChange: Float = 0
        for (n, token) in tokens.enumerated() {
            let e = Array(embedding[(Int(token) * C)..<(Int(token) * C + C)])
            let meanSquare = e.reduce(0) { $0 + Double($1) * Double($1) } / Double(C)
            let scale = Float(1 / (meanSquare + Double(epsilon)).squareRoot())
            let x = (0..<C).map { e[$0] * scale * norm[$0] }
            for v in 0..<V {
                var expected = 0.0, magnitude = 0.0, largestTerm = 0.0
                for k in 0..<C {
                    expected += Double(Self.bf16(x[k])) * Double(Self.bf16(head[v * C + k]))
                    magnitude += Double(abs(x[k] * head[v * C + k]))
                    largestTerm = max(largestTerm, Double(abs(x[k] * head[v * C + k])))
                }
                let got = rounded[n * V + v], exact = float32[n * V + v]
                // The model's norm may differ from this one in float32's last bit, which can move one x[k] to the
                // neighbouring bf16 value: one term's 2⁻⁸ is allowed besides the summation order.
                XCTAssertEqual(Double(got), expected, accuracy: 1e-5 * magnitude + largestTerm / 256, "token \(n), row \(v)")
                // |Δ| ≤ (2u + u²)·Σ|x·w| with u = 2⁻⁸ (bf16 keeps 8 significant bits), plus float32's own rounding.
                XCTAssertLessThanOrEqual(Double(abs(got - exact)), (2.0 / 256 + 1.0 / 65536 + 1e-5) * magnitude, "token \(n), row \(v)")
                largestChange = max(largestChange, abs(got - exact))
            }
        }
        XCTAssertGreaterThan(largestChange, 1e-4, "the bf16 setting changes the products")
    }

    /// Through whole blocks (every linear weight, GQA) and the loss: bf16 operands move the logits by a fraction of
    /// a percent, never more than bf16's rounding of every product allows, and the LoRA gradients stay close.
    func testWholeModelStaysCloseToFloat32() throws {
        let (model, _) = try tinyModel { $0.blockCount = 2 }
        let tokens: [Int32] = (0..<12).map { Int32(($0 * 7 + 3) % 64) }
        let float32 = try model.logits(tokens: tokens)
        model.frozenProductInputs = .bf16
        let rounded = try model.logits(tokens: tokens)
        let scale = float32.map { abs($0) }.max()!
        let change = zip(float32, rounded).map { abs($0 - $1) }.max()!
        XCTAssertGreaterThan(change, 1e-5 * scale, "the setting reaches the products")
        XCTAssertLessThan(change, 0.05 * scale)
        model.frozenProductInputs = .float32
        XCTAssertEqual(try model.logits(tokens: tokens), float32, "and float32 again is float32 exactly")
    }

    /// On a CPU with bf16 products the model keeps its weights in bf16 and multiplies on them; its logits equal the
    /// float32 computation on rounded operands (the reference, `BFloat16GEMM.disabled`) up to summation order.
    func testBf16InstructionsMatchTheRoundedOperandsInFloat32() throws {
        guard BFloat16GEMM.isAvailable else { throw XCTSkip("no bf16 products here: \(BFloat16GEMM.unavailableReason ?? "")") }
        let (model, _) = try tinyModel { $0.blockCount = 2 }
        let tokens: [Int32] = (0..<12).map { Int32(($0 * 5 + 1) % 64) }
        model.frozenProductInputs = .bf16
        XCTAssertTrue(model.keepsBF16Weights)
        let instructions = try model.logits(tokens: tokens)
        BFloat16GEMM.disabled = true
        defer { BFloat16GEMM.disabled = false }
        XCTAssertFalse(model.keepsBF16Weights)
        let emulated = try model.logits(tokens: tokens)
        let scale = emulated.map { abs($0) }.max()!
        for (a, b) in zip(instructions, emulated) { XCTAssertEqual(a, b, accuracy: 1e-4 * scale) }
    }

    /// What each `--precision` resolves to: fp32 always float32; bf16 and auto float32 where bf16 products are
    /// unavailable, saying why; bf16 on them where they are.
    func testPrecisionResolution() {
        XCTAssertEqual(ProductPrecision.fp32.resolved(embedding: 64, hidden: 128).inputs, .float32)
        let available = BFloat16GEMM.isAvailable
        BFloat16GEMM.disabled = true
        let off = ProductPrecision.bf16.resolved(embedding: 64, hidden: 128)
        let autoOff = ProductPrecision.auto.resolved(embedding: 64, hidden: 128)
        BFloat16GEMM.disabled = false
        XCTAssertEqual(off.inputs, .float32)
        XCTAssertTrue(off.note.hasPrefix("float32: bf16 was asked for, but bf16 products are turned off"), off.note)
        XCTAssertEqual(autoOff.inputs, .float32)
        if available {
            let on = ProductPrecision.bf16.resolved(embedding: 64, hidden: 128)
            XCTAssertEqual(on.inputs, .bf16)
            XCTAssertTrue(on.note.hasPrefix("bf16 products on oneDNN"), on.note)
        } else {
            XCTAssertEqual(ProductPrecision.bf16.resolved(embedding: 64, hidden: 128).inputs, .float32)
        }
    }
}
