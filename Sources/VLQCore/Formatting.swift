/// Number formatting for reports, without Foundation's locale-dependent `String(format:)`.
public func fixed(_ value: Double, _ digits: Int) -> String {
    guard value.isFinite else { return String(value) }
    var scale = 1.0
    for _ in 0..<digits { scale *= 10 }
    let negative = value < 0
    let scaled = (abs(value) * scale).rounded()
    guard scaled < 9.0e18 else { return String(value) }
    let n = UInt64(scaled)
    let integer = n / UInt64(scale)
    var result = String(integer)
    if digits > 0 {
        let fraction = String(n % UInt64(scale))
        result += "." + String(repeating: "0", count: digits - fraction.count) + fraction
    }
    return (negative && n > 0 ? "-" : "") + result
}

/// At least `figures` significant digits and at least one decimal: a time of 0.04 ms on a tiny model must
/// not print as 0.0, and 155.6 ms keeps its decimal beside the others in a column.
public func significant(_ value: Double, _ figures: Int) -> String {
    guard value.isFinite, value != 0 else { return fixed(value, 1) }
    var digits = figures - 1
    var magnitude = abs(value)
    while magnitude >= 10 && digits > 1 { magnitude /= 10; digits -= 1 }
    while magnitude < 1 && digits < 9 { magnitude *= 10; digits += 1 }
    return fixed(value, max(1, digits))
}

/// Decimal units (GB = 10^9 bytes), as disks and download pages count.
public func formatBytes(_ n: Int) -> String {
    let units = ["B", "KB", "MB", "GB", "TB"]
    var value = Double(n)
    var unit = 0
    while value >= 1000 && unit < units.count - 1 {
        value /= 1000
        unit += 1
    }
    return unit == 0 ? "\(n) B" : fixed(value, 2) + " " + units[unit]
}

public func formatDuration(_ seconds: Double) -> String {
    let s = Int(seconds.rounded())
    if s >= 60 {
        let r = String(s % 60)
        return "\(s / 60)m" + (r.count < 2 ? "0" : "") + r + "s"
    }
    return "\(s)s"
}

public func padRight(_ s: String, _ width: Int) -> String {
    s.count >= width ? s : s + String(repeating: " ", count: width - s.count)
}

public func padLeft(_ s: String, _ width: Int) -> String {
    s.count >= width ? s : String(repeating: " ", count: width - s.count) + s
}

/// Scientific notation with three significant digits, for small drift figures.
public func scientific(_ v: Double) -> String {
    guard v != 0, v.isFinite else { return v == 0 ? "0" : String(v) }
    var exponent = 0
    var m = abs(v)
    while m >= 10 { m /= 10; exponent += 1 }
    while m < 1 { m *= 10; exponent -= 1 }
    let digits = (abs(exponent) < 10 ? "0" : "") + String(abs(exponent))
    return (v < 0 ? "-" : "") + fixed(m, 2) + "e" + (exponent < 0 ? "-" : "+") + digits
}
