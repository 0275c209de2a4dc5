import Llama
import Training
import XCTest

final class MemoryPlanTests: XCTestCase {
    /// SmolLM2's shape: 30 layers, 576 wide, 9/3 heads of 64, FFN 1536, 49 152 tokens, tied.
    let smol = LlamaConfig(layers: 30, embedding: 576, heads: 9, kvHeads: 3, headDim: 64, feedForward: 1536,
                           vocabulary: 49152, contextLength: 8192, rmsEpsilon: 1e-5, ropeBase: 100000, ropeScale: 1,
                           tiedEmbeddings: true)

    func inputs(batch: Int = 4, context: Int = 256) -> MemoryPlan.Inputs {
        MemoryPlan.Inputs(config: smol, fileSize: 100_000_000, parameterCount: 134_515_008, batch: batch, context: context,
                          trainableParameters: 4_884_480, cacheWeights: false)
    }

    func testPartsFollowTheModelShape() {
        let plan = MemoryPlan(inputs(), checkpointing: false)
        let tokens = 4 * 256
        // x, xMid, q, attention output, k, v, gate, up, and the tiled attention's one value per row and head
        let kept = 4 * tokens * (576 + 576 + 576 + 576 + 2 * 192 + 2 * 1536 + 9)
        let working = 4 * tokens * (2 * 576 + 3 * 1536)
        let layer = (134_515_008 - 49152 * 576) / 30 * 4
        XCTAssertEqual(plan.parts[0].bytes, 100_000_000, "the file: a head without a trainable adapter is read in chunks")
        XCTAssertEqual(plan.parts[1].bytes, 30 * kept)
        XCTAssertEqual(plan.parts[2].bytes, max(working + layer, 4 * 4096 * (576 + tokens)),
                       "the larger of a layer in flight and a chunk of the head with its logits")
        XCTAssertTrue(plan.parts[2].name.hasPrefix("layer"), plan.parts[2].name)
        var trainedHead = inputs()
        trainedHead.trainsHead = true
        let dense = MemoryPlan(trainedHead, checkpointing: false)
        XCTAssertEqual(dense.parts[0].bytes, 100_000_000 + 49152 * 576 * 4, "a trained head: the file and the dense head")
        XCTAssertEqual(dense.parts[2].bytes, max(working + layer, 4 * 160 * 49152),
                       "the larger of a layer in flight and a block of the dense head's logits")
        XCTAssertEqual(plan.parts[3].bytes, 4_884_480 * 16, "A, B, their gradients and two moments in float32")
        XCTAssertEqual(plan.parts[4].bytes, 48 << 20)
        XCTAssertEqual(plan.total, plan.parts.reduce(0) { $0 + $1.bytes })
        let checkpointed = MemoryPlan(inputs(), checkpointing: true)
        XCTAssertEqual(checkpointed.parts[1].bytes, 4 * tokens * 576 * 30, "each layer's input")
        XCTAssertEqual(checkpointed.parts[2].bytes, working + kept + layer, "the layer being rebuilt keeps its activations")
        XCTAssertLessThan(checkpointed.total, plan.total)
        var cached = inputs()
        cached.cacheWeights = true
        XCTAssertEqual(MemoryPlan(cached, checkpointing: false).parts[0].bytes, 100_000_000 + 4 * (134_515_008 - 49152 * 576),
                       "--cache-weights: every block weight")
        cached.trainsHead = true
        XCTAssertEqual(MemoryPlan(cached, checkpointing: false).parts[0].bytes, 100_000_000 + 49152 * 576 * 4 + 4 * (134_515_008 - 49152 * 576),
                       "--cache-weights with a trained head: every block weight, the head once")
    }

    /// Long rows cost the attention one value per row and head, not the [T, T] probabilities.
    func testLongRowsArePlannedWithTiledAttention() {
        let plan = MemoryPlan(inputs(batch: 1, context: 4096), checkpointing: true)
        let tokens = 4096, kept = 4 * tokens * (576 + 576 + 576 + 576 + 2 * 192 + 2 * 1536 + 9)
        let working = 4 * tokens * (2 * 576 + 3 * 1536)
        XCTAssertEqual(plan.parts[2].bytes, working + kept + (134_515_008 - 49152 * 576) / 30 * 4)
    }

    /// A vocabulary head larger than 512 MB dequantized (Llama 3 8B: 128 256 × 4096) counts one chunk of it and
    /// that chunk's logits, not the whole head, and only when they outweigh a layer in flight.
    func testLargeHeadsArePlannedByChunk() {
        var llama3 = smol
        (llama3.layers, llama3.embedding, llama3.vocabulary, llama3.feedForward, llama3.tiedEmbeddings) = (32, 4096, 128_256, 14336, false)
        (llama3.heads, llama3.kvHeads, llama3.headDim) = (32, 8, 128)
        func plan(context: Int) -> MemoryPlan {
            MemoryPlan(MemoryPlan.Inputs(config: llama3, fileSize: 4_900_000_000, parameterCount: 8_030_261_248,
                                         batch: 1, context: context, trainableParameters: 20_000_000, cacheWeights: false),
                       checkpointing: true)
        }
        XCTAssertEqual(plan(context: 512).parts[0].bytes, 4_900_000_000, "no dense head")
        let layer = (8_030_261_248 - 2 * 128_256 * 4096) / 32 * 4
        XCTAssertGreaterThan(plan(context: 512).parts[2].bytes, layer, "a layer in flight outweighs the head's chunk")
        // A narrow model with a large vocabulary (Gemma 3 270M: 640 wide, 262 144 tokens) at 4096-token rows: the
        // chunk and its logits are counted.
        var gemma = smol
        (gemma.layers, gemma.embedding, gemma.vocabulary, gemma.feedForward) = (18, 640, 262_144, 2048)
        (gemma.heads, gemma.kvHeads, gemma.headDim) = (4, 1, 256)
        let long = MemoryPlan(MemoryPlan.Inputs(config: gemma, fileSize: 250_000_000, parameterCount: 268_098_176,
                                                batch: 1, context: 4096, trainableParameters: 1_000_000, cacheWeights: false),
                              checkpointing: true)
        XCTAssertGreaterThanOrEqual(long.parts[2].bytes, 4 * LlamaConfig.vocabularyChunk * (640 + 4096))
    }

    func testCheckpointingTurnsOnWhenNeeded() {
        XCTAssertFalse(MemoryPlan.choose(inputs(), checkpointing: nil, limit: 24 << 30).gradientCheckpointing)
        let plan = MemoryPlan(inputs(), checkpointing: false)
        XCTAssertTrue(MemoryPlan.choose(inputs(), checkpointing: nil, limit: plan.total).gradientCheckpointing,
                      "above 80 % of the memory")
        XCTAssertTrue(MemoryPlan.choose(inputs(batch: 16, context: 1024), checkpointing: nil, limit: 1 << 40).gradientCheckpointing,
                      "more than 1 GiB of kept activations")
        XCTAssertFalse(MemoryPlan.choose(inputs(batch: 16, context: 1024), checkpointing: false, limit: 1).gradientCheckpointing,
                       "an explicit choice is kept")
    }

    /// A plan that does not fit proposes the nearest one that does: checkpointing, then fewer rows, then shorter rows.
    func testSuggestionFits() throws {
        let full = MemoryPlan(inputs(batch: 8, context: 1024), checkpointing: false)
        let checkpointed = MemoryPlan(inputs(batch: 8, context: 1024), checkpointing: true)
        var fit = try XCTUnwrap(MemoryPlan.suggestion(inputs(batch: 8, context: 1024), limit: full.total))
        XCTAssertTrue(fit == (false, 8, 1024), "it fits as it is")
        fit = try XCTUnwrap(MemoryPlan.suggestion(inputs(batch: 8, context: 1024), limit: checkpointed.total + 1))
        XCTAssertTrue(fit.checkpointing || fit.batch < 8, "\(fit)")
        for limit in [checkpointed.total / 2, checkpointed.total / 8, checkpointed.total / 40] {
            guard let fit = MemoryPlan.suggestion(inputs(batch: 8, context: 1024), limit: limit) else { continue }
            var i = inputs(batch: fit.batch, context: fit.context)
            i.batch = fit.batch
            XCTAssertLessThanOrEqual(MemoryPlan(i, checkpointing: fit.checkpointing).total, limit, "\(fit) fits")
        }
        XCTAssertNil(MemoryPlan.suggestion(inputs(), limit: 1000), "nothing fits in 1000 bytes")
    }
}
