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

    /// Bytes per second reading `regions` (the weights a decode step streams, say) once, on every core, the
    /// best of `repeats` passes: the limit of a step that reads those very bytes, measured next to it, so
    /// that a machine whose memory speed drifts over minutes (a shared host's) is compared with itself.
    /// Reads only: nothing is allocated beyond a few bytes per core, so no resident memory is added.
    public static func measureRead(regions: [UnsafeRawBufferPointer], repeats: Int = 3) -> Double {
        // Slices of up to 1 MiB, handed out as cores ask, so that one large region and many small ones
        // spread alike.
        let slice = 1 << 20
        var slices: [UnsafeRawBufferPointer] = []
        for region in regions where region.count > 0 {
            for start in stride(from: 0, to: region.count, by: slice) {
                slices.append(UnsafeRawBufferPointer(rebasing: region[start..<min(region.count, start + slice)]))
            }
        }
        let total = slices.reduce(0) { $0 + $1.count }
        guard total > 0 else { return 0 }
        var best = Double.infinity
        var sink: UInt32 = 0
        for _ in 0..<max(1, repeats) {
            let partial = UnsafeMutablePointer<UInt32>.allocate(capacity: slices.count)
            defer { partial.deallocate() }
            let started = seconds()
            Kernels.parallelRows(
                slices.count, minimumPerTask: 1, tasksPerProcessor: Kernels.balancedTasksPerProcessor
            ) { for i in $0 { partial[i] = wordSum(slices[i]) } }
            best = min(best, seconds() - started)
            for i in 0..<slices.count { sink &+= partial[i] }
        }
        // Stored where the optimiser cannot see it unused, so that no pass is optimised away.
        lastWordSum = sink
        return Double(total) / best
    }

    nonisolated(unsafe) static var lastWordSum: UInt32 = 0

    /// The wrapping sum of a region's 32-bit words (and its tail bytes): integer adds, whatever the bytes
    /// hold (as floats they could be NaN or subnormal, which some CPUs add slowly).
    static func wordSum(_ region: UnsafeRawBufferPointer) -> UInt32 {
        var a = SIMD16<UInt32>(), b = a, c = a, d = a
        let blocks = region.count / 256
        let raw = region.baseAddress!
        for block in 0..<blocks {
            let offset = block * 256
            a &+= raw.loadUnaligned(fromByteOffset: offset, as: SIMD16<UInt32>.self)
            b &+= raw.loadUnaligned(fromByteOffset: offset + 64, as: SIMD16<UInt32>.self)
            c &+= raw.loadUnaligned(fromByteOffset: offset + 128, as: SIMD16<UInt32>.self)
            d &+= raw.loadUnaligned(fromByteOffset: offset + 192, as: SIMD16<UInt32>.self)
        }
        var sum = (a &+ b &+ c &+ d).wrappedSum()
        for i in (blocks * 256)..<region.count { sum &+= UInt32(region[i]) }
        return sum
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
