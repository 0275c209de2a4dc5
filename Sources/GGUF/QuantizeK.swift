/// Float → the K-quant types (super-blocks of 256), bit-identical to llama.cpp's reference quantizers
/// (`quantize_row_q{2,3,4,5,6}_K_ref` in ggml-quants.c, compiled without contracting a·b + c into one rounding),
/// which is what `llama-quantize` runs when no importance matrix is given. Every float operation below keeps the
/// reference's order: a different order rounds differently and picks other levels.
///
/// Layouts (bytes):  Q2_K  scales[16] qs[64] d dmin                     84
///                   Q3_K  hmask[32] qs[64] scales[12] d               110
///                   Q4_K  d dmin scales[12] qs[128]                   144
///                   Q5_K  d dmin scales[12] qh[32] qs[128]            176
///                   Q6_K  ql[128] qh[64] scales[16] d                 210
extension Quantize {
    /// ggml's `nearest_int`: round half to even through the float adder (|v| < 2²²); never traps, even on NaN.
    @inline(__always)
    static func nearestInt(_ v: Float) -> Int32 {
        let biased = v + 12_582_912
        return Int32(bitPattern: biased.bitPattern & 0x007F_FFFF) - 0x0040_0000
    }

    @inline(__always)
    static func clamp(_ v: Int32, _ lo: Int32, _ hi: Int32) -> Int32 { Swift.max(lo, Swift.min(hi, v)) }

    @inline(__always)
    static func half(_ y: UnsafeMutableRawPointer, at offset: Int) -> Float {
        HalfPrecision.floatFromHalfBits(y.load(fromByteOffset: offset, as: UInt16.self))
    }

    // MARK: Level searches

    /// ggml's `make_qkx2_quants`: levels 0…nmax with a scale and a min (x ≈ scale·L − min) for one group, trying
    /// `nstep` + 1 scales around the min–max one and keeping the least weighted error. Returns the scale; `theMin`
    /// gets the min (positive: subtracted).
    static func levelsWithMin(_ n: Int, _ nmax: Int32, _ x: UnsafePointer<Float>, _ weights: UnsafePointer<Float>,
                              _ levels: UnsafeMutablePointer<UInt8>, _ theMin: inout Float,
                              _ trial: UnsafeMutablePointer<UInt8>, rmin: Float, rdelta: Float, steps: Int,
                              absoluteError: Bool) -> Float {
        var min = x[0], max = x[0]
        var sumW = weights[0]
        var sumX = sumW * x[0]
        for i in 1..<n {
            if x[i] < min { min = x[i] }
            if x[i] > max { max = x[i] }
            let w = weights[i]
            sumW += w
            sumX += w * x[i]
        }
        if min > 0 { min = 0 }
        if max == min {
            for i in 0..<n { levels[i] = 0 }
            theMin = -min
            return 0
        }
        var iscale = Float(nmax) / (max - min)
        var scale = 1 / iscale
        var bestError: Float = 0
        for i in 0..<n {
            levels[i] = UInt8(clamp(nearestInt(iscale * (x[i] - min)), 0, nmax))
            var diff = scale * Float(levels[i]) + min - x[i]
            diff = absoluteError ? abs(diff) : diff * diff
            bestError += weights[i] * diff
        }
        if steps < 1 {
            theMin = -min
            return scale
        }
        for step in 0...steps {
            iscale = (rmin + rdelta * Float(step) + Float(nmax)) / (max - min)
            var sumL: Float = 0, sumL2: Float = 0, sumXL: Float = 0
            for i in 0..<n {
                let l = clamp(nearestInt(iscale * (x[i] - min)), 0, nmax)
                trial[i] = UInt8(l)
                let w = weights[i], lf = Float(l)
                sumL += w * lf
                sumL2 += w * lf * lf
                sumXL += w * lf * x[i]
            }
            let determinant = sumW * sumL2 - sumL * sumL
            guard determinant > 0 else { continue }
            var thisScale = (sumW * sumXL - sumX * sumL) / determinant
            var thisMin = (sumL2 * sumX - sumL * sumXL) / determinant
            if thisMin > 0 {
                thisMin = 0
                thisScale = sumXL / sumL2
            }
            var error: Float = 0
            for i in 0..<n {
                var diff = thisScale * Float(trial[i]) + thisMin - x[i]
                diff = absoluteError ? abs(diff) : diff * diff
                error += weights[i] * diff
            }
            if error < bestError {
                for i in 0..<n { levels[i] = trial[i] }
                bestError = error
                scale = thisScale
                min = thisMin
            }
        }
        theMin = -min
        return scale
    }

    /// The value of largest magnitude, its sign kept (the first one on ties), and that magnitude.
    static func signedMax(_ n: Int, _ x: UnsafePointer<Float>) -> (max: Float, amax: Float) {
        var max: Float = 0, amax: Float = 0
        for i in 0..<n {
            let ax = abs(x[i])
            if ax > amax { amax = ax; max = x[i] }
        }
        return (max, amax)
    }

    /// Signed levels round(iscale·x) in −nmax…nmax−1 and their x²-weighted sums Σw·x·l and Σw·l² (the two
    /// searches' common pass); each level + `offset` goes to `levels` when given.
    static func roundedLevels(_ n: Int, _ nmax: Int32, _ x: UnsafePointer<Float>, iscale: Float,
                              into levels: UnsafeMutablePointer<Int8>?, offset: Int32) -> (sumLX: Float, sumL2: Float) {
        var sumLX: Float = 0, sumL2: Float = 0
        for i in 0..<n {
            let l = clamp(nearestInt(iscale * x[i]), -nmax, nmax - 1)
            levels?[i] = Int8(l + offset)
            let w = x[i] * x[i], lf = Float(l)
            sumLX += w * x[i] * lf
            sumL2 += w * lf * lf
        }
        return (sumLX, sumL2)
    }

    /// ggml's `make_qx_quants` with `rmse_type` 1 (weights x²), no importance: signed levels −nmax…nmax−1 stored
    /// as 0…2·nmax−1, trying 18 scales around −nmax / (the value of largest magnitude). Returns the scale.
    static func signedLevels(_ n: Int, _ nmax: Int32, _ x: UnsafePointer<Float>, _ levels: UnsafeMutablePointer<Int8>) -> Float {
        let (max, amax) = signedMax(n, x)
        if amax < 1e-15 {
            for i in 0..<n { levels[i] = 0 }
            return 0
        }
        let (firstLX, firstL2) = roundedLevels(n, nmax, x, iscale: Float(-nmax) / max, into: levels, offset: nmax)
        var scale: Float = firstL2 != 0 ? firstLX / firstL2 : 0
        var best = scale * firstLX
        for step in -9...9 where step != 0 {
            let iscale = -(Float(nmax) + 0.1 * Float(step)) / max
            let (sumLX, sumL2) = roundedLevels(n, nmax, x, iscale: iscale, into: nil, offset: 0)
            if sumL2 > 0 && sumLX * sumLX > best * sumL2 {
                _ = roundedLevels(n, nmax, x, iscale: iscale, into: levels, offset: nmax)
                scale = sumLX / sumL2
                best = scale * sumLX
            }
        }
        return scale
    }

    /// ggml's `make_q3_quants` with its least-squares refinement: signed levels −nmax…nmax−1 (stored + nmax),
    /// each moved while that lowers the x²-weighted error, five rounds at most. Returns the scale.
    static func refinedSignedLevels(_ n: Int, _ nmax: Int32, _ x: UnsafePointer<Float>, _ levels: UnsafeMutablePointer<Int8>) -> Float {
        let (max, amax) = signedMax(n, x)
        if amax < 1e-15 {
            for i in 0..<n { levels[i] = 0 }
            return 0
        }
        var (sumLX, sumL2) = roundedLevels(n, nmax, x, iscale: Float(-nmax) / max, into: levels, offset: 0)
        for _ in 0..<5 {
            var changed = 0
            for i in 0..<n {
                let w = x[i] * x[i], old = Float(levels[i])
                var slx = sumLX - w * x[i] * old
                guard slx > 0 else { continue }
                var sl2 = sumL2 - w * old * old
                let new = clamp(nearestInt(x[i] * sl2 / slx), -nmax, nmax - 1)
                guard new != Int32(levels[i]) else { continue }
                let nf = Float(new)
                slx += w * x[i] * nf
                sl2 += w * nf * nf
                if sl2 > 0 && slx * slx * sumL2 > sumLX * sumLX * sl2 {
                    levels[i] = Int8(new)
                    sumLX = slx
                    sumL2 = sl2
                    changed += 1
                }
            }
            if changed == 0 { break }
        }
        for i in 0..<n { levels[i] = levels[i] &+ Int8(nmax) }
        return sumL2 > 0 ? sumLX / sumL2 : 0
    }

    // MARK: Super-blocks

    /// Q4_K and Q5_K: eight groups of 32 with a 6-bit scale and min each, under an f16 scale and min.
    static func kWithMins(_ x: UnsafePointer<Float>, _ y: UnsafeMutableRawPointer, bits: Int) {
        let nmax: Int32 = bits == 4 ? 15 : 31
        var levels = [UInt8](repeating: 0, count: 256), trial = [UInt8](repeating: 0, count: 32)
        var weights = [Float](repeating: 0, count: 32), mins = [Float](repeating: 0, count: 8)
        var scales = [Float](repeating: 0, count: 8)
        var maxScale: Float = 0, maxMin: Float = 0
        for j in 0..<8 {
            let g = x + 32 * j
            var sumX2: Float = 0
            for l in 0..<32 { sumX2 += g[l] * g[l] }
            let average = (sumX2 / 32).squareRoot()
            for l in 0..<32 { weights[l] = average + abs(g[l]) }
            scales[j] = levels.withUnsafeMutableBufferPointer { lv in
                levelsWithMin(32, nmax, g, weights, lv.baseAddress! + 32 * j, &mins[j], &trial,
                              rmin: bits == 4 ? -1 : -0.5, rdelta: 0.1, steps: bits == 4 ? 20 : 15, absoluteError: false)
            }
            if scales[j] > maxScale { maxScale = scales[j] }
            if mins[j] > maxMin { maxMin = mins[j] }
        }
        let invScale: Float = maxScale > 0 ? 63 / maxScale : 0
        let invMin: Float = maxMin > 0 ? 63 / maxMin : 0
        var packed = [UInt8](repeating: 0, count: 12)
        for j in 0..<8 {
            let ls = Swift.min(63, UInt8(truncatingIfNeeded: nearestInt(invScale * scales[j])))
            let lm = Swift.min(63, UInt8(truncatingIfNeeded: nearestInt(invMin * mins[j])))
            if j < 4 {
                packed[j] = ls
                packed[j + 4] = lm
            } else {
                packed[j + 4] = (ls & 0xF) | (lm & 0xF) << 4
                packed[j - 4] |= (ls >> 4) << 6
                packed[j] |= (lm >> 4) << 6
            }
        }
        storeHalf(maxScale / 63, y)
        storeHalf(maxMin / 63, y + 2)
        for (i, b) in packed.enumerated() { y.storeBytes(of: b, toByteOffset: 4 + i, as: UInt8.self) }
        let d = half(y, at: 0), dmin = half(y, at: 2)
        for j in 0..<8 {
            let (sc, m) = scaleAndMin(j, packed)
            let scale = d * Float(sc)
            if scale == 0 { continue }
            let shift = dmin * Float(m)
            for i in 0..<32 { levels[32 * j + i] = UInt8(clamp(nearestInt((x[32 * j + i] + shift) / scale), 0, nmax)) }
        }
        if bits == 4 {
            for j in stride(from: 0, to: 256, by: 64) {
                for l in 0..<32 {
                    y.storeBytes(of: levels[j + l] | levels[j + l + 32] << 4, toByteOffset: 16 + j / 2 + l, as: UInt8.self)
                }
            }
            return
        }
        var high = [UInt8](repeating: 0, count: 32)
        var m1: UInt8 = 1, m2: UInt8 = 2
        for n in stride(from: 0, to: 256, by: 64) {
            for j in 0..<32 {
                var l1 = levels[n + j], l2 = levels[n + j + 32]
                if l1 > 15 { l1 -= 16; high[j] |= m1 }
                if l2 > 15 { l2 -= 16; high[j] |= m2 }
                y.storeBytes(of: l1 | l2 << 4, toByteOffset: 48 + n / 2 + j, as: UInt8.self)
            }
            m1 <<= 2
            m2 <<= 2
        }
        for (i, b) in high.enumerated() { y.storeBytes(of: b, toByteOffset: 16 + i, as: UInt8.self) }
    }

    /// ggml's `get_scale_min_k4`: group j's 6-bit scale and min from the 12 packed bytes.
    static func scaleAndMin(_ j: Int, _ q: [UInt8]) -> (UInt8, UInt8) {
        if j < 4 { return (q[j] & 63, q[j + 4] & 63) }
        return ((q[j + 4] & 0xF) | (q[j - 4] >> 6) << 4, (q[j + 4] >> 4) | (q[j] >> 6) << 4)
    }

    static func q4_K(_ x: UnsafePointer<Float>, _ y: UnsafeMutableRawPointer) { kWithMins(x, y, bits: 4) }
    static func q5_K(_ x: UnsafePointer<Float>, _ y: UnsafeMutableRawPointer) { kWithMins(x, y, bits: 5) }

    /// Q6_K: sixteen groups of 16 with signed 8-bit scales under an f16 scale; levels −32…31.
    static func q6_K(_ x: UnsafePointer<Float>, _ y: UnsafeMutableRawPointer) {
        var levels = [Int8](repeating: 0, count: 256), scales = [Float](repeating: 0, count: 16)
        var maxScale: Float = 0, maxAbsScale: Float = 0
        for ib in 0..<16 {
            let scale = levels.withUnsafeMutableBufferPointer { signedLevels(16, 32, x + 16 * ib, $0.baseAddress! + 16 * ib) }
            scales[ib] = scale
            if abs(scale) > maxAbsScale {
                maxAbsScale = abs(scale)
                maxScale = scale
            }
        }
        if maxAbsScale < 1e-15 {
            for i in 0..<210 { y.storeBytes(of: 0, toByteOffset: i, as: UInt8.self) }
            return
        }
        let iscale = -128 / maxScale
        storeHalf(1 / iscale, y + 208)
        var groupScales = [Int8](repeating: 0, count: 16)
        for ib in 0..<16 {
            groupScales[ib] = Int8(truncatingIfNeeded: Swift.min(127, nearestInt(iscale * scales[ib])))
            y.storeBytes(of: groupScales[ib], toByteOffset: 192 + ib, as: Int8.self)
        }
        let d = half(y, at: 208)
        for j in 0..<16 {
            let scale = d * Float(groupScales[j])
            if scale == 0 { continue }
            for i in 0..<16 { levels[16 * j + i] = Int8(clamp(nearestInt(x[16 * j + i] / scale), -32, 31) + 32) }
        }
        for j in stride(from: 0, to: 256, by: 128) {
            let ql = j / 2, qh = 128 + j / 4
            for l in 0..<32 {
                let q0 = UInt8(bitPattern: levels[j + l]), q1 = UInt8(bitPattern: levels[j + l + 32])
                let q2 = UInt8(bitPattern: levels[j + l + 64]), q3 = UInt8(bitPattern: levels[j + l + 96])
                y.storeBytes(of: (q0 & 0xF) | (q2 & 0xF) << 4, toByteOffset: ql + l, as: UInt8.self)
                y.storeBytes(of: (q1 & 0xF) | (q3 & 0xF) << 4, toByteOffset: ql + l + 32, as: UInt8.self)
                y.storeBytes(of: q0 >> 4 | (q1 >> 4) << 2 | (q2 >> 4) << 4 | (q3 >> 4) << 6, toByteOffset: qh + l, as: UInt8.self)
            }
        }
    }

    /// Q2_K: sixteen groups of 16 with a 4-bit scale and min each, under an f16 scale and min; levels 0…3.
    static func q2_K(_ x: UnsafePointer<Float>, _ y: UnsafeMutableRawPointer) {
        var levels = [UInt8](repeating: 0, count: 256), trial = [UInt8](repeating: 0, count: 16)
        var weights = [Float](repeating: 0, count: 16), mins = [Float](repeating: 0, count: 16)
        var scales = [Float](repeating: 0, count: 16)
        var maxScale: Float = 0, maxMin: Float = 0
        for j in 0..<16 {
            for l in 0..<16 { weights[l] = abs(x[16 * j + l]) }
            scales[j] = levels.withUnsafeMutableBufferPointer { lv in
                levelsWithMin(16, 3, x + 16 * j, weights, lv.baseAddress! + 16 * j, &mins[j], &trial,
                              rmin: -0.5, rdelta: 0.1, steps: 15, absoluteError: true)
            }
            if scales[j] > maxScale { maxScale = scales[j] }
            if mins[j] > maxMin { maxMin = mins[j] }
        }
        var packed = [UInt8](repeating: 0, count: 16)
        if maxScale > 0 {
            let iscale = 15 / maxScale
            for j in 0..<16 { packed[j] = UInt8(truncatingIfNeeded: nearestInt(iscale * scales[j])) }
            storeHalf(maxScale / 15, y + 80)
        } else {
            storeHalf(0, y + 80)
        }
        if maxMin > 0 {
            let iscale = 15 / maxMin
            for j in 0..<16 { packed[j] |= UInt8(truncatingIfNeeded: nearestInt(iscale * mins[j]) << 4) }
            storeHalf(maxMin / 15, y + 82)
        } else {
            storeHalf(0, y + 82)
        }
        for (i, b) in packed.enumerated() { y.storeBytes(of: b, toByteOffset: i, as: UInt8.self) }
        let d = half(y, at: 80), dmin = half(y, at: 82)
        for j in 0..<16 {
            let scale = d * Float(packed[j] & 0xF)
            if scale == 0 { continue }
            let shift = dmin * Float(packed[j] >> 4)
            for i in 0..<16 { levels[16 * j + i] = UInt8(clamp(nearestInt((x[16 * j + i] + shift) / scale), 0, 3)) }
        }
        packTwoBits(levels, y + 16)
    }

    /// Q3_K: sixteen groups of 16 with signed 6-bit scales under an f16 scale; levels −4…3, the high bit apart.
    static func q3_K(_ x: UnsafePointer<Float>, _ y: UnsafeMutableRawPointer) {
        var levels = [Int8](repeating: 0, count: 256), scales = [Float](repeating: 0, count: 16)
        var maxScale: Float = 0, amax: Float = 0
        for j in 0..<16 {
            scales[j] = levels.withUnsafeMutableBufferPointer { refinedSignedLevels(16, 4, x + 16 * j, $0.baseAddress! + 16 * j) }
            if abs(scales[j]) > amax {
                amax = abs(scales[j])
                maxScale = scales[j]
            }
        }
        var packed = [UInt8](repeating: 0, count: 12)
        if maxScale != 0 {
            let iscale = -32 / maxScale
            for j in 0..<16 {
                let l = UInt8(clamp(Int32(Int8(truncatingIfNeeded: nearestInt(iscale * scales[j]))), -32, 31) + 32)
                if j < 8 { packed[j] = l & 0xF } else { packed[j - 8] |= (l & 0xF) << 4 }
                packed[j % 4 + 8] |= (l >> 4) << (2 * (j / 4))
            }
            storeHalf(1 / iscale, y + 108)
        } else {
            storeHalf(0, y + 108)
        }
        for (i, b) in packed.enumerated() { y.storeBytes(of: b, toByteOffset: 96 + i, as: UInt8.self) }
        let d = half(y, at: 108)
        for j in 0..<16 {
            let low = j < 8 ? packed[j] & 0xF : packed[j - 8] >> 4
            let sc = Int32(low | ((packed[8 + j % 4] >> (2 * (j / 4))) & 3) << 4) - 32
            let scale = d * Float(sc)
            if scale == 0 { continue }
            for i in 0..<16 { levels[16 * j + i] = Int8(clamp(nearestInt(x[16 * j + i] / scale), -4, 3) + 4) }
        }
        var mask = [UInt8](repeating: 0, count: 32)
        var m = 0, bit: UInt8 = 1
        var low = [UInt8](repeating: 0, count: 256)
        for j in 0..<256 {
            var l = UInt8(bitPattern: levels[j])
            if l > 3 {
                mask[m] |= bit
                l -= 4
            }
            low[j] = l
            m += 1
            if m == 32 {
                m = 0
                bit <<= 1
            }
        }
        for (i, b) in mask.enumerated() { y.storeBytes(of: b, toByteOffset: i, as: UInt8.self) }
        packTwoBits(low, y + 32)
    }

    /// Four 2-bit levels a byte: byte j/4 + l of each 128 holds levels j + l, + 32, + 64 and + 96.
    static func packTwoBits(_ levels: [UInt8], _ q: UnsafeMutableRawPointer) {
        for j in stride(from: 0, to: 256, by: 128) {
            for l in 0..<32 {
                let b = levels[j + l] | levels[j + l + 32] << 2 | levels[j + l + 64] << 4 | levels[j + l + 96] << 6
                q.storeBytes(of: b, toByteOffset: j / 4 + l, as: UInt8.self)
            }
        }
    }
}
