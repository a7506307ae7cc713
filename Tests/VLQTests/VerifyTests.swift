import Calibration
import Foundation
import Imaging
import VLQCore
import Verification
import XCTest

/// `vlq reference` and `vlq verify` as a gate.
final class VerifyTests: XCTestCase {
    func writeSet(_ scratch: Scratch, count: Int, name: String = "eval.jsonl") throws -> String {
        let manifest = try String(contentsOfFile: Reference.data + "/eval.jsonl", encoding: .utf8)
        let lines = manifest.split(separator: "\n").prefix(count)
        let rewritten = lines.map { $0.replacingOccurrences(of: "\"eval/", with: "\"" + Reference.data + "/eval/") }
        try (rewritten.joined(separator: "\n") + "\n").write(
            toFile: scratch.file(name), atomically: true,
            encoding: .utf8)
        return scratch.file(name)
    }

    func testAgainstItsOwnReferenceTheBundleHasNoDriftAndTheGateHolds() throws {
        let scratch = try Scratch()
        let bundle = scratch.file("fp.vlq")
        XCTAssertEqual(try vlq("convert", Repo.tinyModel, "-o", bundle, "-q").status, 0)
        let set = try writeSet(scratch, count: 4)
        XCTAssertEqual(try vlq("reference", bundle, "--set", set, "-o", scratch.file("ref.vlqref"), "-q").status, 0)
        let result = try vlq(
            "verify", "--reference", scratch.file("ref.vlqref"), "--candidate", bundle, "--set", set,
            "--max-kld", "1e-9", "--min-same-top", "1", "--json", scratch.file("d.json"), "-q")
        XCTAssertEqual(result.status, 0, result.stderr)
        let json = try JSONValue.parse(try readBytes(scratch.file("d.json")))
        let run = try XCTUnwrap(json["comparisons"]?.arrayValue?.first)
        XCTAssertEqual(run["reference"]?["kind"], "vlqref")
        XCTAssertLessThan(run["logits"]?["mean_kld"]?.doubleValue ?? 1, 1e-9)
        XCTAssertEqual(run["answers"]?["agreement"]?.doubleValue, 1)
        XCTAssertEqual(run["stages"]?["decoder_layer_relative_l2"]?.arrayValue?.count, 4)
        XCTAssertEqual(
            run["stages"]?["vision_layer_relative_l2"]?.arrayValue?.count, 3,
            "features come from hidden state 3")
        XCTAssertEqual(json["verdict"], "pass")
        XCTAssertEqual(json["bounds"]?.arrayValue?.map { $0["passed"] }, [.bool(true), .bool(true)])
        let decoderDrift = try XCTUnwrap(run["stages"]?["decoder_layer_relative_l2"]?.arrayValue)
        XCTAssertTrue(decoderDrift.allSatisfy { ($0.doubleValue ?? 1) < 1e-6 })
    }

    func testABrokenBoundExitsOneAndSaysWhichAndAnotherSetIsRefused() throws {
        let scratch = try Scratch()
        let bundle = scratch.file("fp.vlq"), int8 = scratch.file("int8.vlq")
        XCTAssertEqual(try vlq("convert", Repo.tinyModel, "-o", bundle, "-q").status, 0)
        XCTAssertEqual(try vlq("quantize", bundle, "-o", int8, "--preset", "int8", "-q").status, 0)
        let set = try writeSet(scratch, count: 3)
        XCTAssertEqual(try vlq("reference", bundle, "--set", set, "-o", scratch.file("ref.vlqref"), "-q").status, 0)
        let broken = try vlq(
            "verify", "--reference", scratch.file("ref.vlqref"), "--candidate", int8, "--set", set,
            "--max-kld", "1e-9", "-q")
        XCTAssertEqual(broken.status, 1)
        XCTAssertTrue(broken.stderr.contains("bound broken: mean KLD"), broken.stderr)
        let other = try writeSet(scratch, count: 2, name: "other.jsonl")
        let refused = try vlq(
            "verify", "--reference", scratch.file("ref.vlqref"), "--candidate", int8, "--set", other,
            "-q")
        XCTAssertEqual(refused.status, 2)
        XCTAssertTrue(refused.stderr.contains("the reference was computed on another set"), refused.stderr)
        let usage = try vlq("verify", "--candidate", int8)
        XCTAssertEqual(usage.status, 2)
    }

    func testReferenceDirectoryModeMeetsTheParityBarForTheUnquantizedBundle() throws {
        let scratch = try Scratch()
        let bundle = scratch.file("fp.vlq")
        XCTAssertEqual(try vlq("convert", Repo.tinyModel, "-o", bundle, "-q").status, 0)
        let result = try vlq(
            "verify", "--reference-dir", Reference.data + "/reference", "--candidate", bundle,
            "--max-kld", "1e-5", "--min-same-top", "1", "--min-cosine", "0.99999", "-q")
        XCTAssertEqual(result.status, 0, result.stderr)
        XCTAssertTrue(result.stdout.contains("same top 100.00%"), result.stdout)
    }
}

extension VerifyTests {
    /// verify's KL divergence and same-top figures, recomputed independently: `vlq logits` writes the
    /// candidate's logits for each reference case, numpy computes the statistics from the two files.
    func testVerifyFiguresAgreeWithAnIndependentComputationFromVlqLogits() throws {
        let scratch = try Scratch()
        let bundle = scratch.file("fp.vlq")
        XCTAssertEqual(try vlq("convert", Repo.tinyModel, "-o", bundle, "-q").status, 0)
        for preset in ["int8", "int4"] {
            let int4 = scratch.file(preset + ".vlq")
            XCTAssertEqual(try vlq("quantize", bundle, "-o", int4, "--preset", preset, "-q").status, 0)
            let verified = try vlq(
                "verify", "--reference-dir", Reference.data + "/reference", "--candidate", int4,
                "--json", scratch.file("v.json"), "-q")
            XCTAssertEqual(verified.status, 0, verified.stderr)
            var outputs: [String] = []
            for (i, c) in Reference.cases.enumerated() {
                let out = scratch.file("case-\(i).safetensors")
                let r = try vlq("logits", int4, "--pixel-values", c.file.path, "--prompt", c.question, "-o", out, "-q")
                XCTAssertEqual(r.status, 0, r.stderr)
                outputs.append(c.file.path + "=" + out)
            }
            let script = """
                import json, struct, sys
                import numpy as np
                def load(path):
                    data = open(path, "rb").read()
                    n = struct.unpack("<Q", data[:8])[0]
                    t = json.loads(data[8:8 + n])["logits"]
                    a, b = t["data_offsets"]
                    values = np.frombuffer(data[8 + n + a:8 + n + b], dtype=np.float32)
                    return values.reshape(t["shape"]).astype(np.float64)
                klds, same = [], 0
                for pair in sys.argv[1:]:
                    ref, cand = (load(p) for p in pair.split("="))
                    lr = ref - ref.max(1, keepdims=True); lr -= np.log(np.exp(lr).sum(1, keepdims=True))
                    lc = cand - cand.max(1, keepdims=True); lc -= np.log(np.exp(lc).sum(1, keepdims=True))
                    klds.extend((np.exp(lr) * (lr - lc)).sum(1).clip(0))
                    same += int((ref.argmax(1) == cand.argmax(1)).sum())
                positions = len(klds)
                summary = {"mean_kld": float(np.mean(klds)), "same_top": same / positions, "positions": positions}
                print(json.dumps(summary))
                """
            try script.write(toFile: scratch.file("kld.py"), atomically: true, encoding: .utf8)
            let independent = try python([scratch.file("kld.py")] + outputs)
            XCTAssertEqual(independent.status, 0, independent.stderr)
            let report = try JSONValue.parse(try readBytes(scratch.file("v.json")))
            let mine = try XCTUnwrap(report["comparisons"]?.arrayValue?.first?["logits"])
            let theirs = try JSONValue.parse(independent.stdout)
            XCTAssertEqual(mine["positions"]?.intValue, theirs["positions"]?.intValue)
            XCTAssertEqual(mine["same_top"]!.doubleValue!, theirs["same_top"]!.doubleValue!, accuracy: 1e-12)
            let theirKLD = theirs["mean_kld"]!.doubleValue!
            XCTAssertEqual(mine["mean_kld"]!.doubleValue!, theirKLD, accuracy: 1e-6 * theirKLD + 1e-12)
            XCTAssertGreaterThan(theirs["mean_kld"]!.doubleValue!, 1e-6, "\(preset) drifts measurably")
        }
    }
}

extension VerifyTests {
    func testTheHTMLReportIsSelfContainedWithChartsAndDecodableThumbnails() throws {
        let scratch = try Scratch()
        let bundle = scratch.file("fp.vlq"), int8 = scratch.file("int8.vlq")
        XCTAssertEqual(try vlq("convert", Repo.tinyModel, "-o", bundle, "-q").status, 0)
        XCTAssertEqual(try vlq("quantize", bundle, "-o", int8, "--preset", "int8", "-q").status, 0)
        let set = try writeSet(scratch, count: 3)
        let result = try vlq(
            "verify", "--reference", bundle, "--candidate", int8, "--set", set, "--rank-layers", "2",
            "--html", scratch.file("report.html"), "-q")
        XCTAssertEqual(result.status, 0, result.stderr)
        let page = try String(contentsOfFile: scratch.file("report.html"), encoding: .utf8)
        XCTAssertTrue(page.hasPrefix("<!DOCTYPE html>"))
        XCTAssertFalse(page.contains("<script"), "no scripts")
        XCTAssertFalse(page.contains("src=\"http"), "nothing fetched from outside")
        XCTAssertTrue(page.contains("Hidden-state drift after each vision layer"))
        XCTAssertTrue(page.contains("Hidden-state drift after each decoder layer"))
        XCTAssertTrue(page.contains("Distribution of KL divergence per position"))
        XCTAssertTrue(page.contains("decoder layer 00"))
        XCTAssertTrue(page.contains("<b>No bounds given</b>"), "no bound set: no pass claimed")
        XCTAssertFalse(page.contains("PASS"))
        XCTAssertTrue(page.contains("Layers to keep in higher precision"))
        XCTAssertTrue(page.contains("in q8 g128: extra"))
        XCTAssertTrue(page.contains("answers identical to the reference&#39;s") || page.contains("answers identical"))
        XCTAssertTrue(page.contains("worst first"))
        XCTAssertGreaterThanOrEqual(page.components(separatedBy: "<svg").count - 1, 4)
        let thumbnails = page.components(separatedBy: "data:image/png;base64,").dropFirst().map {
            String($0.prefix { $0 != "\"" })
        }
        XCTAssertEqual(thumbnails.count, 3)
        for t in thumbnails {
            let png = try XCTUnwrap(Base64.decode(t))
            let image = try png.withUnsafeBytes { try ImageDecoder.decode($0, source: "thumbnail") }
            XCTAssertEqual(max(image.width, image.height), 64)
        }
    }
}

/// `VerificationReport`: the figures, the bounds given and the failures, rendered as JSON and HTML.
final class VerificationReportTests: XCTestCase {
    /// One reference case whose candidate moved every logit row's top token.
    func comparison() -> ReferenceComparison {
        let reference: [Float] = [3, 1, 0, 2, 0, 1], candidate: [Float] = [1, 3, 0, 0, 2, 1]
        var logits = LogitDrift()
        logits.add(reference: reference, candidate: candidate, vocab: 3)
        var comparison = ReferenceComparison()
        comparison.logits = logits
        comparison.cases = [
            .init(
                name: "case-000.safetensors",
                vision: FeatureDrift(reference: [1, 0], candidate: [1, 0]),
                projector: FeatureDrift(reference: [1, 0], candidate: [1, 1]), logits: logits)
        ]
        return comparison
    }

    func testEachBrokenBoundIsAFailureWithItsValueAndLimit() throws {
        var report = VerificationReport(
            candidate: "q.vlq",
            bounds: VerificationBounds(
                maxKLD: 1e-3, minSameTop: 0.5,
                minCosine: 0.9))
        report.referenceFolder = .init(path: "reference", comparison: comparison())
        let c = report.referenceFolder!.comparison
        XCTAssertEqual(
            report.failures,
            [
                BoundFailure(bound: .maxKLD, value: c.logits.meanKLD, limit: 1e-3, set: nil),
                BoundFailure(bound: .minSameTop, value: 0, limit: 0.5, set: nil),
                BoundFailure(bound: .minCosine, value: c.minimumProjectorCosine, limit: 0.9, set: nil),
            ])
        XCTAssertEqual(report.failures[1].message, "same top 0.0000 < 0.5")
        XCTAssertEqual(report.failureMessage, "bound broken: " + report.failures.map(\.message).joined(separator: "; "))
        let failure = try XCTUnwrap(report.failure)
        XCTAssertTrue(failure.is(VerificationError.boundBroken), "\(failure.kind)")
        XCTAssertEqual(failure.exitStatus, .checkFailed)
        XCTAssertEqual(failure.description, "q.vlq: " + report.failureMessage!, "the candidate is the subject")
        XCTAssertEqual(report.verdict, "")
        XCTAssertEqual(report.outcome, "fail")

        report.bounds = VerificationBounds(maxKLD: 10)
        XCTAssertNil(report.failureMessage)
        XCTAssertNil(report.failure)
        XCTAssertEqual(report.verdict, "all bounds hold")
        XCTAssertEqual(report.outcome, "pass")
        XCTAssertEqual(report.boundChecks.map(\.passed), [true])
        report.bounds = VerificationBounds()
        XCTAssertEqual(report.outcome, "no bounds given", "nothing was checked")
        XCTAssertTrue(report.verdict.hasPrefix("no bounds given"), report.verdict)
    }

    func testTheJSONAndTheHTMLComeFromTheSameTypedFigures() throws {
        var report = VerificationReport(candidate: "q.vlq", bounds: VerificationBounds(minSameTop: 0.5))
        report.referenceFolder = .init(path: "reference", comparison: comparison())
        let json = report.json
        XCTAssertEqual(json["schema"], .string(verifyReportSchema))
        let folder = try XCTUnwrap(json["comparisons"]?.arrayValue?.first)
        XCTAssertEqual(json["comparisons"]?.arrayValue?.count, 1)
        XCTAssertEqual(folder["reference"]?["path"]?.stringValue, "reference")
        XCTAssertEqual(folder["reference"]?["kind"], "reference-dir")
        XCTAssertEqual(folder["logits"]?["mean_kld"]?.doubleValue, report.referenceFolder!.comparison.logits.meanKLD)
        XCTAssertEqual(folder["logits"]?["positions"]?.intValue, 2)
        XCTAssertNotNil(folder["logits"]?["position_set"]?.stringValue)
        XCTAssertEqual(folder["samples"]?.arrayValue?.first?["name"]?.stringValue, "case-000.safetensors")
        XCTAssertEqual(json["failures"], ["same top 0.0000 < 0.5"])
        XCTAssertEqual(json["verdict"], "fail")
        XCTAssertEqual(json["bounds"]?.arrayValue?.first?["bound"], "min-same-top")
        XCTAssertEqual(json["bounds"]?.arrayValue?.first?["passed"], .bool(false))
        XCTAssertEqual(json["exact_match"], .null)
        XCTAssertEqual(json["layer_ranking"], .null)
        let page = HTMLReport.render(report, thumbnails: [:])
        XCTAssertTrue(page.contains("<b>FAIL</b>: 1 of 1 bound checks broken"), page)
        XCTAssertTrue(page.contains("<code>--min-same-top 0.5</code>: same top 0.0000 &lt; 0.5"), page)
        XCTAssertTrue(page.contains("positions</text>"), "the histogram's value axis is titled")
        XCTAssertTrue(page.contains("<h2>Reference cases, worst first (by mean KLD)</h2>"))
        XCTAssertTrue(page.contains("<div class=label>same top token</div><div class=value>0.00%</div>"))
        XCTAssertFalse(page.contains("answers identical"), "only a run has answers")
        XCTAssertEqual(report.html, page, "no run samples, no thumbnails to read")
    }
}
