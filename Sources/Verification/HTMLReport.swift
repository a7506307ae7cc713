import Imaging
import VLQCore

extension VerificationReport {
    /// The report as a self-contained page (`vlq verify --html`), each run sample's image read for its
    /// thumbnail.
    public var html: String {
        var thumbnails: [String: String] = [:]
        for s in run?.comparison.samples ?? [] { thumbnails[s.image] = HTMLReport.thumbnail(path: s.image) }
        return HTMLReport.render(self, thumbnails: thumbnails)
    }
}

/// A self-contained HTML page of a verify report: no scripts, no external files. Charts are inline
/// SVG (drift after every vision and decoder layer, the distribution of per-position KL divergence,
/// the layer ranking); the per-sample table shows each image as an embedded PNG thumbnail.
public enum HTMLReport {
    /// `thumbnails`: base64 PNGs by image path.
    public static func render(_ report: VerificationReport, thumbnails: [String: String]) -> String {
        var body = heading(report) + verdict(report)
        body += logitsSummary(report)
        if !report.klDivergences.isEmpty {
            body += "<h2>Distribution of KL divergence per position</h2>\n"
            body += histogram(report.klDivergences)
        }
        if let run = report.run?.comparison {
            for (title, values) in [
                ("Hidden-state drift after each vision layer", run.visionLayerDrift),
                ("Hidden-state drift after each decoder layer", run.decoderLayerDrift),
            ]
            where !values.isEmpty {
                body += "<h2>\(title)</h2>\n"
                body += bars(
                    values.enumerated().map { ("\($0.offset)", $0.element) },
                    axes: ("layer", "relative L2 error of the hidden state (|h - h_ref| / |h_ref|)"))
            }
        }
        if let ranking = report.layerRanking { body += layerRanking(ranking) }
        if let samples = report.run?.comparison.samples {
            body += samplesTable(samples, thumbnails: thumbnails)
        } else if let cases = report.referenceFolder?.comparison.cases {
            body += casesTable(cases)
        }
        return page(body)
    }

    static func heading(_ report: VerificationReport) -> String {
        var body = "<h1>vlq verify</h1>\n<p class=meta>candidate <code>\(escape(report.candidate))</code>"
        if let run = report.run {
            body += " &middot; reference <code>\(escape(run.reference))</code> on <code>\(escape(run.set))</code>"
        }
        if let folder = report.referenceFolder {
            body += " &middot; reference files <code>\(escape(folder.path))</code>"
        }
        return body + "</p>\n"
    }

    /// What a reader wants first: did it pass, against which bounds.
    static func verdict(_ report: VerificationReport) -> String {
        let checks = report.boundChecks
        guard !report.bounds.isEmpty else {
            return "<div class=\"verdict none\"><b>No bounds given</b>: nothing was gated. "
                + "Pass <code>--max-kld</code>, <code>--min-same-top</code> or <code>--min-cosine</code> "
                + "to make this report a pass/fail check.</div>\n"
        }
        let passed = report.failures.isEmpty
        var body =
            "<div class=\"verdict \(passed ? "pass" : "fail")\"><b>\(passed ? "PASS" : "FAIL")</b>: "
            + (passed ? "every bound given holds" : "\(report.failures.count) of \(checks.count) bound checks broken")
            + "<ul>"
        for c in checks {
            body += "<li class=\(c.passed ? "same" : "differ")>\(c.passed ? "&#10003;" : "&#10007;") "
            body += "<code>--\(c.figure.bound.rawValue) \(c.figure.limit)</code>: \(escape(c.message))</li>"
        }
        return body + "</ul></div>\n"
    }

    /// The layers that drift most on their own, with what keeping each in q8 would add to the bundle.
    static func layerRanking(_ ranking: VerificationReport.LayerRanking) -> String {
        guard !ranking.entries.isEmpty else { return "" }
        var body =
            "<h2>Layers to keep in higher precision (each quantized alone, \(ranking.samples) samples)</h2>\n"
        body += bars(
            ranking.entries.prefix(20).map { ($0.layer, $0.meanKLD) }, horizontal: true,
            axes: ("layer", "mean KLD with only this layer quantized (nats)"))
        body += "<table class=samples><tr><th>rank</th><th>layer</th><th>own mean KLD</th><th>tensors</th>"
        body += "<th>stored now</th><th>in q8 g128: extra</th><th>extra, cumulative</th></tr>\n"
        var cumulative = 0
        for (i, e) in ranking.entries.prefix(8).enumerated() {
            cumulative += max(e.q8ExtraBytes, 0)
            body += "<tr><td>\(i + 1)</td><td>\(escape(e.layer))</td><td>\(number(e.meanKLD))</td>"
            body += "<td>\(e.tensors)</td><td>\(formatBytes(e.storedBytes))</td>"
            let extra = e.q8ExtraBytes > 0 ? "+" + formatBytes(e.q8ExtraBytes) : "already 8-bit or more"
            body += "<td>\(extra)</td><td>+\(formatBytes(cumulative))</td></tr>\n"
        }
        return body + "</table>\n"
    }

    /// The run's logit figures when there is a run, else the reference folder's.
    static func logitsSummary(_ report: VerificationReport) -> String {
        let figures: [(label: String, value: Double?, percent: Bool)]
        if let run = report.run?.comparison {
            let l = run.logits
            figures = [
                ("mean KLD", l.meanKLD, false), ("median KLD", l.medianKLD, false), ("p99 KLD", l.p99KLD, false),
                ("max KLD", l.maxKLD, false), ("same top token", l.sameTopRate, true),
                ("RMS &Delta;p(top)", l.rmsTopProbabilityDelta, false),
                ("perplexity ratio", run.meanPerplexityRatio, false),
                ("answers identical to the reference's", run.answerAgreement, true),
                ("exact match, candidate", run.exactMatch?.candidate, true),
                ("exact match, reference", run.exactMatch?.reference, true),
            ]
        } else if let l = report.referenceFolder?.comparison.logits {
            figures = [
                ("mean KLD", l.meanKLD, false), ("median KLD", l.medianKLD, false), ("p99 KLD", l.p99KLD, false),
                ("max KLD", l.maxKLD, false), ("same top token", l.sameTopRate, true),
                ("RMS &Delta;p(top)", l.rmsTopProbabilityDelta, false),
                ("exact match, candidate", report.answers?.result.rate, true),
            ]
        } else if let answers = report.answers {
            figures = [("exact match, candidate", answers.result.rate, true)]
        } else {
            return ""
        }
        var body = "<h2>Key figures</h2>\n<table class=summary><tr>"
        for (label, value, percent) in figures {
            guard let v = value else { continue }
            let shown = percent ? fixed(100 * v, 2) + "%" : number(v)
            body += "<td><div class=label>\(label)</div><div class=value>\(shown)</div></td>"
        }
        return body + "</tr></table>\n"
    }

    static func samplesTable(_ samples: [RunComparison.Sample], thumbnails: [String: String]) -> String {
        var body =
            "<h2>Samples, worst first (by mean KLD)</h2>\n<table class=samples><tr><th>image</th><th>vision cos</th>"
            + "<th>projector cos</th>"
            + "<th>mean KLD</th><th>same top</th><th>perplexity ratio</th><th>reference answer</th>"
            + "<th>candidate answer</th></tr>\n"
        for s in samples.sorted(by: { $0.logits.meanKLD > $1.logits.meanKLD }) {
            let thumb =
                thumbnails[s.image].map {
                    "<img src=\"data:image/png;base64,\($0)\" alt=\"\(escape(s.image))\">"
                } ?? ""
            let same = s.referenceAnswer == s.candidateAnswer
            let file = String(s.image.split(separator: "/").last ?? "")
            body += "<tr><td>\(thumb)<div class=file>\(escape(file))</div></td>"
            body += "<td>\(fixed(s.vision.cosine, 6))</td><td>\(fixed(s.projector.cosine, 6))</td>"
            body += "<td>\(number(s.logits.meanKLD))</td><td>\(fixed(100 * s.logits.sameTopRate, 1))%</td>"
            body += "<td>\(s.perplexityRatio.map { fixed($0, 4) } ?? "-")</td>"
            body += "<td>\(escape(s.referenceAnswer))</td>"
            body += "<td class=\(same ? "same" : "differ")>\(escape(s.candidateAnswer))</td></tr>\n"
        }
        return body + "</table>\n"
    }

    static func casesTable(_ cases: [ReferenceComparison.CaseResult]) -> String {
        var body =
            "<h2>Reference cases, worst first (by mean KLD)</h2>\n<table class=samples><tr><th>case</th>"
            + "<th>vision cos</th><th>vision rel. L2</th><th>projector cos</th><th>projector rel. L2</th>"
            + "<th>mean KLD</th><th>same top</th></tr>\n"
        for c in cases.sorted(by: { $0.logits.meanKLD > $1.logits.meanKLD }) {
            body += "<tr><td>\(escape(c.name))</td><td>\(fixed(c.vision.cosine, 6))</td>"
            body += "<td>\(number(c.vision.relativeL2))</td>"
            body += "<td>\(fixed(c.projector.cosine, 6))</td><td>\(number(c.projector.relativeL2))</td>"
            body += "<td>\(number(c.logits.meanKLD))</td><td>\(fixed(100 * c.logits.sameTopRate, 1))%</td></tr>\n"
        }
        return body + "</table>\n"
    }

    static func page(_ body: String) -> String {
        """
        <!DOCTYPE html>
        <html lang="en"><head><meta charset="utf-8"><title>vlq verify</title>
        <style>
        body { font: 14px/1.4 system-ui, sans-serif; margin: 24px; color: #1d2433; max-width: 1100px; }
        h1 { font-size: 22px; } h2 { font-size: 16px; margin-top: 28px; }
        code { background: #f1f3f7; padding: 1px 4px; border-radius: 3px; }
        .meta { color: #5a6476; } .pass { color: #17803d; font-weight: 600; } \
        .fail { color: #b42318; font-weight: 600; }
        table { border-collapse: collapse; } \
        td, th { padding: 4px 10px; border-bottom: 1px solid #e3e7ee; text-align: left; vertical-align: middle; }
        .summary td { border: 1px solid #e3e7ee; } .label { color: #5a6476; font-size: 12px; } \
        .value { font-size: 18px; font-weight: 600; white-space: nowrap; }
        .samples img { width: 56px; height: 56px; image-rendering: pixelated; display: block; }
        .file { font-size: 11px; color: #5a6476; } .differ { color: #b42318; } .same { color: #17803d; }
        svg text { font: 11px system-ui, sans-serif; fill: #3b4457; } svg text.axis { font-weight: 600; }
        .verdict { padding: 10px 14px; border-radius: 6px; margin: 12px 0; } .verdict ul { margin: 6px 0 0; }
        .verdict.pass { background: #e9f7ef; } .verdict.fail { background: #fdecea; } \
        .verdict.none { background: #fff6e0; }
        </style></head><body>
        \(body)</body></html>
        """
    }

    static func escape(_ s: String) -> String {
        var out = ""
        for c in s {
            switch c {
            case "&": out += "&amp;"
            case "<": out += "&lt;"
            case ">": out += "&gt;"
            case "\"": out += "&quot;"
            default: out.append(c)
            }
        }
        return out
    }

    /// Whole numbers (counts) without decimals, other values as `number` shows them.
    static func count(_ v: Double) -> String {
        v == v.rounded() && abs(v) < 1e9 ? String(Int(v)) : number(v)
    }

    static func number(_ v: Double) -> String {
        if v == 0 { return "0" }
        if abs(v) >= 0.01 && abs(v) < 1000 { return fixed(v, 4) }
        var e = 0, m = abs(v)
        while m >= 10 { m /= 10; e += 1 }
        while m < 1 { m *= 10; e -= 1 }
        return (v < 0 ? "-" : "") + fixed(m, 2) + "e" + String(e)
    }

    /// Vertical bars (one per layer or bin), or horizontal bars with labels (rankings); `axes` titles the
    /// category axis and the value axis (with its unit).
    static func bars(
        _ items: [(String, Double)], horizontal: Bool = false, spacing: Int = 24, axes: (String, String)
    ) -> String {
        let maximum = max(items.map(\.1).max() ?? 1, 1e-300)
        if horizontal {
            let height = 20 * items.count + 44
            var svg = "<svg width=\"760\" height=\"\(height)\" role=\"img\">"
            svg += "<text x=\"0\" y=\"12\" class=axis>\(escape(axes.0))</text>"
            for (i, (label, v)) in items.enumerated() {
                let w = 480 * v / maximum, y = 20 * i + 20
                svg += "<text x=\"0\" y=\"\(y + 15)\">\(escape(label))</text>"
                svg += "<rect x=\"170\" y=\"\(y + 4)\" width=\"\(fixed(w, 1))\" height=\"14\" fill=\"#3b6fd8\"/>"
                svg += "<text x=\"\(fixed(176 + w, 1))\" y=\"\(y + 15)\">\(number(v))</text>"
            }
            svg += "<text x=\"170\" y=\"\(height - 4)\" class=axis>\(escape(axes.1)) &#8594;</text>"
            return svg + "</svg>\n"
        }
        let width = max(420, spacing * items.count + 70)
        var svg =
            "<svg width=\"\(width)\" height=\"214\" role=\"img\">"
            + "<text x=\"0\" y=\"12\" class=axis>&#8593; \(escape(axes.1))</text>"
            + "<text x=\"0\" y=\"30\">\(count(maximum))</text><text x=\"0\" y=\"164\">0</text>"
            + "<line x1=\"46\" y1=\"20\" x2=\"46\" y2=\"160\" stroke=\"#9aa3b2\"/>"
        for (i, (label, v)) in items.enumerated() {
            let h = 140 * v / maximum
            svg +=
                "<rect x=\"\(50 + spacing * i)\" y=\"\(fixed(160 - h, 1))\" width=\"\(spacing - 6)\" "
                + "height=\"\(fixed(h, 1))\" fill=\"#3b6fd8\"><title>\(escape(label)): \(number(v))</title></rect>"
            svg += "<text x=\"\(50 + spacing * i)\" y=\"176\">\(escape(label))</text>"
        }
        svg += "<text x=\"50\" y=\"204\" class=axis>\(escape(axes.0)) &#8594;</text>"
        return svg + "</svg>\n"
    }

    /// Counts of per-position KL divergence in decades (log10 bins).
    static func histogram(_ values: [Double]) -> String {
        var bins: [Int: Int] = [:]
        for v in values { bins[v > 0 ? Int((log10(v)).rounded(.down)) : -13, default: 0] += 1 }
        let keys = (bins.keys.min()!...bins.keys.max()!)
        return bars(
            keys.map { ("1e\($0)", Double(bins[$0] ?? 0)) }, spacing: 40,
            axes: ("KL divergence at a position (nats, log10 bins)", "positions"))
    }

    /// An embedded PNG thumbnail of an image file (PIL-exact resize to `size` on the longer side).
    public static func thumbnail(path: String, size: Int = 64) -> String? {
        guard let image = try? ImageDecoder.decode(path: path) else { return nil }
        let scale = Double(size) / Double(max(image.width, image.height))
        let w = max(1, Int(Double(image.width) * scale)), h = max(1, Int(Double(image.height) * scale))
        let small = Resampler.resize(image, width: w, height: h, filter: .bicubic)
        return Base64.encode(PNGEncoder.encode(small))
    }
}

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// Minimal PNG writer for thumbnails: 8-bit RGB, zlib with stored (uncompressed) deflate blocks,
/// which every decoder reads; no compression library needed.
enum PNGEncoder {
    static func encode(_ image: RGBImage) -> [UInt8] {
        var raw: [UInt8] = []
        for y in 0..<image.height {
            raw.append(0)
            raw += image.pixels[(y * image.width * 3)..<((y + 1) * image.width * 3)]
        }
        var zlib: [UInt8] = [0x78, 0x01]
        var offset = 0
        repeat {
            let n = min(65535, raw.count - offset)
            let last: UInt8 = offset + n >= raw.count ? 1 : 0
            zlib += [last, UInt8(n & 0xFF), UInt8(n >> 8), UInt8(~n & 0xFF), UInt8((~n >> 8) & 0xFF)]
            zlib += raw[offset..<(offset + n)]
            offset += n
        } while offset < raw.count
        var a: UInt32 = 1, b: UInt32 = 0
        for byte in raw { a = (a + UInt32(byte)) % 65521; b = (b + a) % 65521 }
        zlib += be32(b << 16 | a)
        var png: [UInt8] = [0x89, 0x50, 0x4E, 0x47, 0x0D, 0x0A, 0x1A, 0x0A]
        png += chunk("IHDR", be32(UInt32(image.width)) + be32(UInt32(image.height)) + [8, 2, 0, 0, 0])
        png += chunk("IDAT", zlib)
        png += chunk("IEND", [])
        return png
    }

    static func be32(_ v: UInt32) -> [UInt8] {
        [UInt8(v >> 24), UInt8(v >> 16 & 0xFF), UInt8(v >> 8 & 0xFF), UInt8(v & 0xFF)]
    }

    static let crcTable: [UInt32] = (0..<256).map { n in
        var c = UInt32(n)
        for _ in 0..<8 { c = c & 1 != 0 ? 0xEDB8_8320 ^ (c >> 1) : c >> 1 }
        return c
    }

    static func chunk(_ type: String, _ data: [UInt8]) -> [UInt8] {
        let body = Array(type.utf8) + data
        var crc: UInt32 = 0xFFFF_FFFF
        for byte in body { crc = crcTable[Int((crc ^ UInt32(byte)) & 0xFF)] ^ (crc >> 8) }
        return be32(UInt32(data.count)) + body + be32(~crc)
    }
}
