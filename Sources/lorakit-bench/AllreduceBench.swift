import ArgumentParser
import Distributed
import Foundation

/// The gradient exchange of a data-parallel step alone: `mpirun -np N lorakit-bench allreduce`.
struct AllreduceBench: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "allreduce",
        abstract: "Seconds per allreduce of LoRA gradient buffers (run under mpirun).")

    @Option(help: "Buffer sizes in floats, comma-separated (default: SmolLM2 r8 on 7 targets, an 8B-shaped r16 adapter).")
    var floats = "2442240,41943040"
    @Option var repeats = 5

    func run() throws {
        guard MPICommunicator.isLaunchedByMPI else { throw ValidationError("run under mpirun -np N") }
        let comm = try MPICommunicator()
        for n in floats.split(separator: ",").compactMap({ Int($0) }) {
            var buffer = [Float](repeating: 1, count: n)
            try comm.sum(&buffer)  // warm-up
            var times: [Double] = []
            for _ in 0..<repeats {
                let start = Date()
                try comm.sum(&buffer)
                times.append(Date().timeIntervalSince(start))
            }
            if comm.rank == 0 {
                let best = times.min()!, median = times.sorted()[times.count / 2]
                print(String(format: "%d ranks, %d floats (%.1f MB): median %.3f s, best %.3f s (%.2f GB/s of buffer)",
                             comm.size, n, Double(n * 4) / 1e6, median, best, Double(n * 4) / best / 1e9))
            }
        }
    }
}
