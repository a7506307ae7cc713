/// Overflow-checked arithmetic on sizes read from files: a hostile header must yield an error,
/// never a trap.
public enum Checked {
    public static func add(_ a: Int, _ b: Int) -> Int? {
        let (r, o) = a.addingReportingOverflow(b)
        return o ? nil : r
    }

    public static func multiply(_ a: Int, _ b: Int) -> Int? {
        let (r, o) = a.multipliedReportingOverflow(by: b)
        return o ? nil : r
    }

    /// Product of dimensions, nil on overflow or a negative dimension.
    public static func product<S: Sequence>(_ dims: S) -> Int? where S.Element == Int {
        var total = 1
        for d in dims {
            guard d >= 0, let t = multiply(total, d) else { return nil }
            total = t
        }
        return total
    }

    /// `UInt64` from a file to `Int`, nil if it does not fit.
    public static func int(_ v: UInt64) -> Int? {
        v <= UInt64(Int.max) ? Int(v) : nil
    }

    public static func alignUp(_ value: Int, to alignment: Int) -> Int? {
        precondition(alignment > 0 && alignment & (alignment - 1) == 0)
        guard let v = add(value, alignment - 1) else { return nil }
        return v & ~(alignment - 1)
    }
}
