/// The nearest of some names to what a user typed, for "did you mean" hints (subcommands, recipe keys).
public enum Suggestion {
    /// The closest name within a few typos (or of which `typed` is a prefix); nil when none is close.
    public static func nearest(to typed: String, among names: [String]) -> String? {
        names.map { (name: $0, distance: editDistance(typed, $0)) }
            .filter { $0.distance <= max(2, typed.count / 3) || $0.name.hasPrefix(typed) }
            .min { $0.distance < $1.distance }?.name
    }

    /// Levenshtein distance: inserting, deleting or replacing one character costs 1.
    public static func editDistance(_ a: String, _ b: String) -> Int {
        let a = Array(a), b = Array(b)
        guard !a.isEmpty, !b.isEmpty else { return max(a.count, b.count) }
        var previous = Array(0...b.count)
        for i in 1...a.count {
            var current = [i] + Array(repeating: 0, count: b.count)
            for j in 1...b.count {
                let replace = previous[j - 1] + (a[i - 1] == b[j - 1] ? 0 : 1)
                current[j] = min(previous[j] + 1, current[j - 1] + 1, replace)
            }
            previous = current
        }
        return previous[b.count]
    }
}
