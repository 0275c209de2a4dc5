import Foundation

/// AdamW as the 2023 finetune runs it (ggml's Adam): global gradient-norm clipping, bias-corrected moments,
/// decoupled weight decay scaled by the learning rate and the schedule.
///   g ← g·min(1, clip/‖g‖);  m ← β₁m + (1−β₁)g;  v ← β₂v + (1−β₂)g²
///   x ← x·(1 − decay·lr·sched) − lr·sched·(m/(1−β₁ᵗ)) / (√(v/(1−β₂ᵗ)) + ε)
public struct AdamWOptions: Sendable, Equatable, Codable {
    public var learningRate: Float = 2e-4
    public var minLearningRate: Float = 0
    public var weightDecay: Float = 0.1
    public var decayMinDimensions = 2
    public var beta1: Float = 0.9
    public var beta2: Float = 0.999
    public var epsilon: Float = 1e-8
    public var gradientClip: Float = 1.0
    public init() {}
}

/// The moments of one parameter tensor.
public struct AdamMoments: Sendable {
    public var m: [Float]
    public var v: [Float]
    public init(count: Int) {
        m = [Float](repeating: 0, count: count)
        v = [Float](repeating: 0, count: count)
    }
}

public enum AdamW {
    /// Global L2 norm of the gradients.
    public static func gradientNorm(_ grads: [[Float]]) -> Double {
        var sum = 0.0
        for g in grads { for x in g { sum += Double(x) * Double(x) } }
        return sum.squareRoot()
    }

    /// One update of `params` (in place); `step` counts from 1.
    public static func update(params: inout [Float], grads: [Float], moments: inout AdamMoments, options o: AdamWOptions,
                              step: Int, schedule: Float, clipFactor: Float, decays: Bool) {
        let lr = o.learningRate * schedule
        let beta1h = lr / (1 - Float(pow(Double(o.beta1), Double(step))))
        let beta2h = 1 / (1 - Float(pow(Double(o.beta2), Double(step))))
        let decay = decays ? o.weightDecay * lr : 0
        for i in 0..<params.count {
            let g = grads[i] * clipFactor
            moments.m[i] = moments.m[i] * o.beta1 + g * (1 - o.beta1)
            moments.v[i] = moments.v[i] * o.beta2 + g * g * (1 - o.beta2)
            params[i] = params[i] * (1 - decay) - moments.m[i] * beta1h / ((moments.v[i] * beta2h).squareRoot() + o.epsilon)
        }
    }
}

/// The finetune's learning-rate schedule (SEED-SPEC §4.1): linear warmup, then cosine decay with optional restarts.
public struct LearningSchedule: Sendable, Equatable, Codable {
    public var warmup: Int
    public var cosineDecaySteps: Int
    public var cosineDecayMin: Float
    public var cosineDecayRestart: Float
    public var restarts: Bool

    public init(warmup: Int, cosineDecaySteps: Int, cosineDecayMin: Float, cosineDecayRestart: Float, restarts: Bool) {
        self.warmup = warmup
        self.cosineDecaySteps = cosineDecaySteps
        self.cosineDecayMin = cosineDecayMin
        self.cosineDecayRestart = cosineDecayRestart
        self.restarts = restarts
    }

    static func cosineDecay(_ step: Int, _ decaySteps: Int, _ minimum: Float) -> Float {
        let s = Float(min(step, decaySteps))
        let c = 0.5 * (1 + cos(Float.pi * s / Float(max(1, decaySteps))))
        return (1 - minimum) * c + minimum
    }

    static func cosineDecayRestart(_ step: Int, _ decaySteps: Int, _ minimum: Float, _ multiplier: Float) -> Float {
        var s = step, d = max(1, decaySteps)
        while s > d {
            s -= d
            d = max(1, Int(multiplier * Float(d)))
        }
        return cosineDecay(s, d, minimum)
    }

    /// The schedule factor at optimizer iteration `step` (0-based), floored by `minFraction` = minLR / LR.
    public func factor(step: Int, minFraction: Float) -> Float {
        let r: Float
        if step < warmup {
            r = Float(step) / Float(warmup)
        } else if restarts {
            r = LearningSchedule.cosineDecayRestart(step - warmup, cosineDecaySteps, cosineDecayMin, cosineDecayRestart)
        } else {
            r = LearningSchedule.cosineDecay(step, cosineDecaySteps, cosineDecayMin)  // the finetune uses the raw step here
        }
        return minFraction + r * (1 - minFraction)
    }
}
