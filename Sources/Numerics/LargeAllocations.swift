#if canImport(Glibc)
import Glibc
#endif

/// Arrays of hundreds of MB whose pages are first touched on every core, in 2 MiB pages where Linux's
/// transparent huge pages are offered on request (`madvise`, the usual default). A fresh array's pages are
/// faulted in and zeroed by the kernel on first touch, one 4 KiB page at a time: GPTQ's factor of a
/// 11008-wide input (a 970 MB double matrix and its 485 MB float copy) spent longer faulting in
/// `[Double](repeating: 0, count:)`'s serial memset than LAPACK took to factor it, on this project's 2-core
/// virtual machine (`tools/page_faults.c`: first touch 1.6 GB/s in 4 KiB pages, 6.5 GB/s in 2 MiB pages).
public enum LargeAllocations {
    /// Transparent huge pages' size on x86-64 and arm64 (4 KiB base pages).
    static let hugePageBytes = 2 << 20

    /// An array of `count` elements that `initialize` writes, every element (it receives the uninitialized
    /// buffer: spread its writes over the cores, e.g. with `Kernels.parallelRows`).
    public static func array<Element: BitwiseCopyable>(
        count: Int, initializedBy initialize: (UnsafeMutableBufferPointer<Element>) -> Void
    ) -> [Element] {
        [Element](unsafeUninitializedCapacity: count) { buffer, initialized in
            adviseHugePages(UnsafeMutableRawBufferPointer(buffer))
            initialize(buffer)
            initialized = count
        }
    }

    /// `count` copies of `value`, written by every core in 2 MiB slices.
    public static func array<Element: BitwiseCopyable>(repeating value: Element, count: Int) -> [Element] {
        array(count: count) { buffer in
            inSlices(count, of: Element.self) {
                buffer.baseAddress!.advanced(by: $0.lowerBound).initialize(
                    repeating: value, count: $0.count)
            }
        }
    }

    /// A copy of `elements`, written by every core in 2 MiB slices (a `var` copy of an array is copied on its
    /// first write, by one core).
    public static func copy<Element: BitwiseCopyable>(of elements: [Element]) -> [Element] {
        elements.withUnsafeBufferPointer { source in
            array(count: source.count) { buffer in
                inSlices(source.count, of: Element.self) {
                    buffer.baseAddress!.advanced(by: $0.lowerBound).initialize(
                        from: source.baseAddress!.advanced(by: $0.lowerBound), count: $0.count)
                }
            }
        }
    }

    /// `body` on the element ranges of consecutive 2 MiB slices of `count` elements, over the cores.
    static func inSlices<Element>(_ count: Int, of _: Element.Type, _ body: (Range<Int>) -> Void) {
        Kernels.parallelSlices(count, slice: hugePageBytes / MemoryLayout<Element>.stride, body)
    }

    /// Asks for huge pages over the whole 2 MiB pages inside `region` (before its first touch).
    static func adviseHugePages(_ region: UnsafeMutableRawBufferPointer) {
        #if os(Linux)
        guard let base = region.baseAddress else { return }
        let start = (Int(bitPattern: base) + hugePageBytes - 1) & ~(hugePageBytes - 1)
        let end = (Int(bitPattern: base) + region.count) & ~(hugePageBytes - 1)
        guard end > start, let aligned = UnsafeMutableRawPointer(bitPattern: start) else { return }
        // Advice only: where huge pages are off or unavailable the region keeps 4 KiB pages.
        _ = madvise(aligned, end - start, MADV_HUGEPAGE)
        #endif
    }
}
