import FuzzTargets
import VLQCore

#if canImport(Glibc)
import Glibc
#endif

// libFuzzer driver for the readers (built only with VLQ_FUZZ set; see tools/fuzz.sh).
//
//     vlq-fuzz <target> [libFuzzer options] [corpus folders]
//
// SwiftPM links an executable with `main` renamed to `<module>_main`, so libFuzzer's own `main` never
// runs: `vlqFuzzMain` below is that entry point and hands over to libFuzzer through LLVMFuzzerRunDriver.
// The target is also passed on in VLQ_FUZZ_TARGET, so that the child processes libFuzzer starts
// (-fork, -minimize_crash) run the same target without the first argument.

@_silgen_name("LLVMFuzzerRunDriver")
func LLVMFuzzerRunDriver(
    _ argc: UnsafeMutablePointer<Int32>,
    _ argv: UnsafeMutablePointer<UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?>,
    _ callback: @convention(c) (UnsafePointer<UInt8>?, Int) -> Int32
) -> Int32

nonisolated(unsafe) var selectedTarget = FuzzTarget.json

func fuzzOne(_ data: UnsafePointer<UInt8>?, _ size: Int) -> Int32 {
    let bytes = UnsafeRawBufferPointer(start: size > 0 ? data : nil, count: size)
    do {
        try selectedTarget.run(bytes)
    } catch is VLQError {
    } catch {
        // Bad input must be reported as a VLQError: that is what the CLI prints on one line.
        writeToStandardError(
            "vlq-fuzz: \(selectedTarget.rawValue) threw \(type(of: error)), not a VLQError: \(error)\n")
        abort()
    }
    return 0
}

/// libFuzzer's own `main` (linked in, but not what runs) refers to this; it runs the selected target too.
@_cdecl("LLVMFuzzerTestOneInput")
func LLVMFuzzerTestOneInput(_ data: UnsafePointer<UInt8>?, _ size: Int) -> Int32 {
    fuzzOne(data, size)
}

@_cdecl("vlq_fuzz_main")
func vlqFuzzMain(_ argc: Int32, _ argv: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>) -> Int32 {
    var args = (0..<Int(argc)).map { argv[$0] }
    let names = FuzzTarget.allCases.map(\.rawValue).joined(separator: ", ")
    if let env = getenv("VLQ_FUZZ_TARGET"), let t = FuzzTarget(rawValue: String(cString: env)) {
        selectedTarget = t
        if args.count > 1, let a = args[1], String(cString: a) == t.rawValue { args.remove(at: 1) }
    } else if args.count > 1, let a = args[1], let t = FuzzTarget(rawValue: String(cString: a)) {
        selectedTarget = t
        args.remove(at: 1)
        setenv("VLQ_FUZZ_TARGET", t.rawValue, 1)
    } else {
        writeToStandardError("usage: vlq-fuzz <target> [libFuzzer options] [corpus...]\ntargets: \(names)\n")
        return 2
    }
    var count = Int32(args.count)
    args.append(nil)
    return args.withUnsafeMutableBufferPointer { buffer in
        var pointer: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>? = buffer.baseAddress
        return LLVMFuzzerRunDriver(&count, &pointer) { data, size in fuzzOne(data, size) }
    }
}

/// Straight to file descriptor 2: C's `stderr` is a global variable Swift 6 will not let this code touch.
func writeToStandardError(_ text: String) {
    let bytes = Array(text.utf8)
    var offset = 0
    while offset < bytes.count {
        let written = bytes.withUnsafeBytes { write(2, $0.baseAddress! + offset, $0.count - offset) }
        if written <= 0 { return }
        offset += written
    }
}
