#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// The machine's memory read bandwidth, measured: what a decode step that streams its weights once can
/// reach at best (`vlq bench` prints each decode time next to this limit).
public enum MemoryBandwidth {
    /// Bytes per second read from a buffer of `bytes` (far larger than the caches) on every core, the
    /// best of `repeats` passes. Each core sums its own slice with SIMD loads, as a matrix-vector kernel
    /// streams its rows.
    public static func measureRead(bytes: Int = 1 << 30, repeats: Int = 3) -> Double {
        let count = max(bytes / MemoryLayout<Float>.stride, 4096) & ~63
        let buffer = FloatBuffer(count)
        // Touch every page first, so that the passes read memory rather than fault it in.
        for i in stride(from: 0, to: count, by: 1024) { buffer.pointer[i] = Float(i & 7) }
        var best = Double.infinity
        var sink: Float = 0
        for _ in 0..<max(1, repeats) {
            let started = seconds()
            sink += sum(buffer.pointer, count: count)
            best = min(best, seconds() - started)
        }
        // The sums are kept alive through `sink` so that no pass is optimised away.
        return sink.isNaN ? 0 : Double(count * MemoryLayout<Float>.stride) / best
    }

    /// The sum of `count` floats (a multiple of 64), slices summed in parallel.
    public static func sum(_ p: UnsafePointer<Float>, count: Int) -> Float {
        let blocks = count / 64
        let tasks = Kernels.activeProcessors
        let partial = FloatBuffer(tasks)
        Kernels.concurrently(tasks) { t in
            var a = SIMD16<Float>(), b = SIMD16<Float>(), c = SIMD16<Float>(), d = SIMD16<Float>()
            let raw = UnsafeRawPointer(p)
            for block in (blocks * t / tasks)..<(blocks * (t + 1) / tasks) {
                let offset = block * 256
                a += raw.loadUnaligned(fromByteOffset: offset, as: SIMD16<Float>.self)
                b += raw.loadUnaligned(fromByteOffset: offset + 64, as: SIMD16<Float>.self)
                c += raw.loadUnaligned(fromByteOffset: offset + 128, as: SIMD16<Float>.self)
                d += raw.loadUnaligned(fromByteOffset: offset + 192, as: SIMD16<Float>.self)
            }
            partial.pointer[t] = (a + b + c + d).sum()
        }
        return (0..<tasks).reduce(0) { $0 + partial.pointer[$1] }
    }

    static func seconds() -> Double {
        var t = timespec()
        clock_gettime(CLOCK_MONOTONIC, &t)
        return Double(t.tv_sec) + Double(t.tv_nsec) / 1e9
    }
}
