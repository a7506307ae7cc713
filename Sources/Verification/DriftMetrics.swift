#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// How far a candidate's next-token distributions are from a reference's, position by position,
/// as llama.cpp's `--kl-divergence` reports it.
public struct LogitDrift: Sendable {
    public var klDivergences: [Double] = []
    public var sameTop = 0
    public var positions = 0
    /// Squared change in the probability of the reference's top token, summed.
    public var topProbabilityDeltaSquares = 0.0

    public init() {}

    /// Adds every row of two [rows, vocab] logit matrices.
    public mutating func add(reference: [Float], candidate: [Float], vocab: Int) {
        precondition(reference.count == candidate.count && reference.count % vocab == 0)
        for row in 0..<(reference.count / vocab) {
            let r = LogitDrift.logSoftmax(reference, row * vocab, vocab),
                c = LogitDrift.logSoftmax(candidate, row * vocab, vocab)
            var kl = 0.0
            var topR = 0, topC = 0
            for i in 0..<vocab {
                let p = exp(r[i])
                kl += p * (r[i] - c[i])
                if reference[row * vocab + i] > reference[row * vocab + topR] { topR = i }
                if candidate[row * vocab + i] > candidate[row * vocab + topC] { topC = i }
            }
            klDivergences.append(max(kl, 0))
            if topR == topC { sameTop += 1 }
            let d = exp(c[topR]) - exp(r[topR])
            topProbabilityDeltaSquares += d * d
            positions += 1
        }
    }

    static func logSoftmax(_ x: [Float], _ start: Int, _ n: Int) -> [Double] {
        var m = -Double.infinity
        for i in 0..<n { m = max(m, Double(x[start + i])) }
        var sum = 0.0
        for i in 0..<n { sum += exp(Double(x[start + i]) - m) }
        let logSum = m + log(sum)
        return (0..<n).map { Double(x[start + $0]) - logSum }
    }

    public var meanKLD: Double { klDivergences.isEmpty ? 0 : klDivergences.reduce(0, +) / Double(klDivergences.count) }
    public var medianKLD: Double { quantile(0.5) }
    public var p99KLD: Double { quantile(0.99) }
    public var maxKLD: Double { klDivergences.max() ?? 0 }
    public var sameTopRate: Double { positions == 0 ? 1 : Double(sameTop) / Double(positions) }
    public var rmsTopProbabilityDelta: Double {
        positions == 0 ? 0 : (topProbabilityDeltaSquares / Double(positions)).squareRoot()
    }

    func quantile(_ q: Double) -> Double {
        guard !klDivergences.isEmpty else { return 0 }
        let sorted = klDivergences.sorted()
        let index = min(sorted.count - 1, Int((q * Double(sorted.count - 1)).rounded()))
        return sorted[index]
    }
}

/// Agreement of two feature tensors: cosine similarity and relative L2 error.
public struct FeatureDrift: Sendable {
    public var cosine: Double
    public var relativeL2: Double

    public init(reference: [Float], candidate: [Float]) {
        var dot = 0.0, rr = 0.0, cc = 0.0, dd = 0.0
        for i in 0..<min(reference.count, candidate.count) {
            let a = Double(reference[i]), b = Double(candidate[i])
            dot += a * b
            rr += a * a
            cc += b * b
            dd += (a - b) * (a - b)
        }
        cosine = rr > 0 && cc > 0 ? dot / (rr.squareRoot() * cc.squareRoot()) : (rr == cc ? 1 : 0)
        relativeL2 = rr > 0 ? (dd / rr).squareRoot() : dd.squareRoot()
    }
}
