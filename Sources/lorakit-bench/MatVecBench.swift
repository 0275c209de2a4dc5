import ArgumentParser
import CKernels
import Foundation
import GGUF

/// Per-token product speed of each block type's kernel on one random matrix (generation's inner loop).
struct MatVecBench: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "matvec", abstract: "Weights per nanosecond of the per-token product kernels, by block type.")

    @Option var rows = 4096
    @Option var cols = 4096
    @Option(help: "Thread counts to measure, comma-separated.") var threads = "1,2"
    @Flag(help: "The kernels with activations rounded to 8 bits (generate --activations int8).") var int8 = false

    func run() throws {
        let x = (0..<cols).map { Float($0 % 255 - 127) / 128 }
        var y = [Float](repeating: 0, count: rows)
        print("\(rows) × \(cols) weights, random blocks (f16 scales kept small)")
        var with = 0.0, without = 0.0
        lk_prefetch_timings(&with, &without)
        print(lk_prefetching() != 0 ? "rows prefetched ahead" : "rows not prefetched (the hardware's prefetch alone)",
              with > 0 ? String(format: "(measured: %.1f ms with, %.1f ms without)", with * 1e3, without * 1e3)
                       : "(LORAKIT_PREFETCH)")
        let supported = int8 ? lk_matvec_int8_supported : lk_matvec_supported, multiply = int8 ? lk_matvec_int8 : lk_matvec
        // The exact kernels' two builds side by side where the CPU has AVX-512, each the best of 7 rounds taken
        // alternately (one round alone moved ±20 % between runs on a shared machine).
        let chosen = lk_matvec_avx512()
        defer { lk_set_matvec_avx512(chosen) }
        let builds: [(name: String, avx512: Int32)] = !int8 && lk_matvec_avx512_supported() != 0
            ? [("AVX2", 0), ("AVX-512", 1)] : [("", chosen)]
        for type in benchmarkTypes where supported(Int32(type.rawValue)) != 0 {
            let rowBytes = cols / type.blockSize * type.blockBytes
            let data = randomBlocks(type, count: rows * cols)
            var line = String(format: "%-5@", type.description)
            for t in threads.split(separator: ",").compactMap({ Int($0) }) {
                lk_set_threads(Int32(t))
                let repeats = 20
                var best = [Double](repeating: .infinity, count: builds.count)
                for _ in 0..<7 {
                    for (i, build) in builds.enumerated() {
                        lk_set_matvec_avx512(build.avx512)
                        let elapsed = data.withUnsafeBytes { raw in
                            seconds {
                                for _ in 0..<repeats {
                                    multiply(Int32(type.rawValue), raw.baseAddress!, rowBytes, Int32(rows), Int32(cols), x, &y)
                                }
                            }
                        }
                        best[i] = min(best[i], elapsed)
                    }
                }
                for (i, build) in builds.enumerated() {
                    let perNanosecond = Double(rows * cols * repeats) / (best[i] * 1e9)
                    let gigabytes = Double(data.count * repeats) / best[i] / 1e9
                    line += String(format: "  %d thread%@%@: %5.2f weights/ns (%5.1f GB/s)", t, t == 1 ? " " : "s",
                                   build.name.isEmpty ? "" : " " + build.name, perNanosecond, gigabytes)
                }
            }
            print(line)
        }
    }
}

/// Dequantization speed by block type (what training and prompt processing pay per layer).
struct DequantizeBench: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "dequantize", abstract: "Weights per nanosecond of Dequantize.fast, by block type (one core).")

    @Option var count = 1 << 24

    func run() throws {
        var out = [Float](repeating: 0, count: count)
        print("\(count) weights, random blocks")
        for type in benchmarkTypes {
            let data = randomBlocks(type, count: count)
            let repeats = 5
            let elapsed = data.withUnsafeBytes { raw in
                out.withUnsafeMutableBufferPointer { o in
                    seconds { for _ in 0..<repeats { Dequantize.fast(type, from: raw, count: count, into: o.baseAddress!) } }
                }
            }
            print(String(format: "%-5@ %5.2f weights/ns", type.description, Double(count * repeats) / (elapsed * 1e9)))
        }
    }
}

let benchmarkTypes: [TensorType] = [.f16, .bf16, .q8_0, .q4_0, .q4_1, .q5_0, .q5_1, .q2_K, .q3_K, .q4_K, .q5_K, .q6_K]

/// Random blocks of `type` holding `count` weights; every f16 field is 0x2000 (≈ 0.0078) so values stay finite.
func randomBlocks(_ type: TensorType, count: Int) -> [UInt8] {
    var seed: UInt64 = 1
    func byte() -> UInt8 { seed = seed &* 6364136223846793005 &+ 1442695040888963407; return UInt8(truncatingIfNeeded: seed >> 56) }
    var data = (0..<(count / type.blockSize * type.blockBytes)).map { _ in byte() }
    for block in stride(from: 0, to: data.count, by: type.blockBytes) {
        for offset in halfOffsets(type) { data[block + offset] = 0x00; data[block + offset + 1] = 0x20 }
    }
    return data
}

/// Byte offsets of the f16 fields inside one block.
func halfOffsets(_ type: TensorType) -> [Int] {
    switch type {
    case .f16, .bf16: return []
    case .q4_1, .q5_1, .q4_K, .q5_K: return [0, 2]
    case .q6_K: return [208]
    case .q2_K: return [80, 82]
    case .q3_K: return [108]
    default: return [0]
    }
}
