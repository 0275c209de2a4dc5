import ArgumentParser
import Foundation
import Kernels

/// How fast one thread's part of a split product runs, by how the product is cut: what each of P threads would do
/// alone, measured on one core (the machine here has two; the parts of a many-core step are these shapes).
struct SplitBench: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "split",
        abstract: "GFLOP/s of one thread's part of a product split P ways: the chosen grid, rows only, columns only (one core).")

    @Option(help: "Products M×N×K, comma-separated (default: a Qwen2.5-0.5B step's largest, 4 × 256 tokens).")
    var shapes = "1024x896x4864,1024x4864x896,1024x896x896,1024x4096x896"
    @Option(help: "Part counts, comma-separated.") var parts = "1,2,4,8,16"

    func run() throws {
        BLAS.setThreads(1)
        print("one core; BLAS \(BLAS.libraryPath ?? "none") (\(BLAS.coreName ?? "?"))")
        for shape in shapes.split(separator: ",") {
            let sides = shape.split(separator: "x").compactMap { Int($0) }
            guard sides.count == 3, sides.allSatisfy({ $0 > 0 }) else {
                throw ValidationError("--shapes: '\(shape)' is not M×N×K (e.g. 1024x896x4864)")
            }
            let (m, n, k) = (sides[0], sides[1], sides[2])
            var line = "M \(m) N \(n) K \(k):"
            for p in parts.split(separator: ",").compactMap({ Int($0) }) where p > 0 {
                let g = BLAS.grid(m: m, n: n, parts: p)
                let chosen = rate(min(m, g.rowsPerPart), min(n, g.columnsPerPart), k)
                let byRows = rate(min(m, (m + p - 1) / p), n, k), byColumns = rate(m, min(n, (n + p - 1) / p), k)
                line += String(format: "  P%d grid %dx%d %.0f (rows %.0f, columns %.0f)", p, g.rows, g.columns, chosen, byRows, byColumns)
            }
            print(line)
        }
    }

    /// GFLOP/s of an m × n × k product on this thread, the best of three rounds of ~0.2 s.
    func rate(_ m: Int, _ n: Int, _ k: Int) -> Double {
        let a = [Float](repeating: 0.25, count: m * k), b = [Float](repeating: 0.5, count: k * n)
        var c = [Float](repeating: 0, count: m * n)
        let repeats = max(1, Int(2e10 / Double(2 * m * n * k)))
        var best = Double.infinity
        for _ in 0..<3 {
            let elapsed = seconds {
                for _ in 0..<repeats {
                    Float.gemm(transA: false, transB: false, m: m, n: n, k: k, alpha: 1, a: a, lda: k, b: b, ldb: n,
                               beta: 0, c: &c, ldc: n)
                }
            }
            best = min(best, elapsed / Double(repeats))
        }
        return Double(2 * m * n * k) / best / 1e9
    }
}
