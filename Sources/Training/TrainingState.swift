import Kernels
import LoRA

/// Everything a run changes as it trains, and exactly what a checkpoint stores: the adapter, the AdamW moments, the
/// step, the data cursor, and the counters of the stop rules. The same state from a checkpoint continues bit for bit.
public struct TrainingState {
    public var adapter: LoRAAdapter<Float>
    public var moments: [String: AdamMoments] = [:]
    /// Optimizer steps taken.
    public var step = 0
    public var data: Batcher.State
    public var tokensSeen = 0
    /// The finetune's best and previous training losses and steps without a new best.
    public var bestLoss = Float.infinity
    public var previousLoss = Float.nan
    public var noImprovement = 0

    public init(adapter: LoRAAdapter<Float>, data: Batcher.State = Batcher.State(epoch: 0, cursor: 0)) {
        self.adapter = adapter
        self.data = data
    }

    public init(checkpoint cp: Checkpoint) {
        adapter = cp.adapter
        moments = cp.moments
        step = cp.iteration
        data = cp.batcher
        tokensSeen = cp.tokensSeen
        bestLoss = cp.bestLoss
        previousLoss = cp.previousLoss
        noImprovement = cp.noImprovement
    }

    public func checkpoint(seed: UInt64, alpha: Float, rsLoRA: Bool, frozenProducts: String? = nil) -> Checkpoint {
        Checkpoint(adapter: adapter, moments: moments, iteration: step, batcher: data, seed: seed, alpha: alpha,
                   rsLoRA: rsLoRA, tokensSeen: tokensSeen, bestLoss: bestLoss, previousLoss: previousLoss,
                   noImprovement: noImprovement, frozenProducts: frozenProducts)
    }

    /// One AdamW update of every pair from its accumulated gradients (clipped by the global norm); returns that
    /// norm. A non-finite gradient or update stops with the tensor's name, before anything is changed or written.
    mutating func update(options: AdamWOptions, schedule: Float) throws -> Double {
        let step = self.step + 1
        for name in adapter.order {
            let p = adapter[name]!
            if !p.gradA.allSatisfy({ $0.isFinite }) { throw TrainingError.nonFinite(step: step, what: "the gradient of \(name).lora_a") }
            if !p.gradB.allSatisfy({ $0.isFinite }) { throw TrainingError.nonFinite(step: step, what: "the gradient of \(name).lora_b") }
        }
        let norm = AdamW.gradientNorm(adapter.order.flatMap { [adapter[$0]!.gradA, adapter[$0]!.gradB] })
        let clip: Float = options.gradientClip > 0 && norm > Double(options.gradientClip) ? options.gradientClip / Float(norm) : 1
        for name in adapter.order {
            let p = adapter[name]!
            var m = moments[name] ?? AdamMoments(count: p.parameterCount)
            var params = p.a + p.b
            AdamW.update(params: &params, grads: p.gradA + p.gradB, moments: &m, options: options, step: step,
                         schedule: schedule, clipFactor: clip, decays: 2 >= options.decayMinDimensions)
            if !params.allSatisfy({ $0.isFinite }) { throw TrainingError.nonFinite(step: step, what: "the update of \(name)") }
            p.a = Array(params[0..<p.a.count])
            p.b = Array(params[p.a.count...])
            moments[name] = m
        }
        self.step = step
        return norm
    }
}

/// The rules that end a run early: the finetune's convergence tests on the training loss (--adam-epsf,
/// --opt-max-no-improvement, --opt-past/--opt-delta) and early stopping on the validation loss.
struct StopRules {
    let configuration: TrainingConfiguration
    var lastLoss: Double?
    var pastLosses: [Double] = []
    var bestValidation = Double.infinity
    var evaluationsWithoutImprovement = 0

    init(_ configuration: TrainingConfiguration) { self.configuration = configuration }

    /// After a step with training loss `loss`: updates the counters in `state`; returns why to stop, if so.
    mutating func afterStep(loss: Double, state: inout TrainingState) -> String? {
        let c = configuration
        var reason: String?
        if c.relativeLossTolerance > 0, let last = lastLoss, abs(last - loss) / max(loss, 1e-12) < Double(c.relativeLossTolerance) {
            reason = "loss changed by less than --adam-epsf"
        }
        if Float(loss) < state.bestLoss { state.bestLoss = Float(loss); state.noImprovement = 0 } else { state.noImprovement += 1 }
        if c.maxNoImprovement > 0 && state.noImprovement >= c.maxNoImprovement {
            reason = "no improvement for \(state.noImprovement) steps"
        }
        if c.past > 0 {
            if pastLosses.count >= c.past, abs(pastLosses[pastLosses.count - c.past] - loss) / max(loss, 1e-12) < Double(c.pastDelta) {
                reason = "loss changed by less than --opt-delta over --opt-past steps"
            }
            pastLosses.append(loss)
        }
        state.previousLoss = Float(loss)
        lastLoss = loss
        return reason
    }

    /// After a validation: whether it is the best so far, and why to stop, if so.
    mutating func afterValidation(_ loss: Double) -> (best: Bool, stop: String?) {
        if loss < bestValidation {
            bestValidation = loss
            evaluationsWithoutImprovement = 0
            return (true, nil)
        }
        evaluationsWithoutImprovement += 1
        let e = configuration.earlyStop
        return (false, e > 0 && evaluationsWithoutImprovement >= e ? "validation loss did not improve for \(e) evaluations" : nil)
    }
}
