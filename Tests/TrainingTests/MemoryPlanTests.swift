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
        let kept = 4 * tokens * (576 + 576 + 2 * 192 + 2 * 1536)
        let working = 4 * (tokens * (3 * 576 + 576 + 3 * 1536) + 4 * 9 * 256 * 256)
        XCTAssertEqual(plan.parts[1].bytes, working + 30 * kept)
        XCTAssertEqual(plan.parts[2].bytes, 4_884_480 * 16, "A, B, their gradients and two moments in float32")
        XCTAssertEqual(plan.parts[0].bytes, 100_000_000 + 49152 * 576 * 4 + (134_515_008 - 49152 * 576) / 30 * 4)
        XCTAssertEqual(plan.total, plan.parts.reduce(0) { $0 + $1.bytes })
        let checkpointed = MemoryPlan(inputs(), checkpointing: true)
        XCTAssertEqual(checkpointed.parts[1].bytes, working + kept + 4 * tokens * 576 * 30)
        XCTAssertLessThan(checkpointed.total, plan.total)
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
}
