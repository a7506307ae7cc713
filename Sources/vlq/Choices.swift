import Allocation
import ArgumentParser
import Conversion
import Quantization

// Option values that are choices are enums: ArgumentParser lists them in --help and refuses others
// before any work.

extension OutputDType: ExpressibleByArgument {}
extension QuantizationMethod: ExpressibleByArgument {}

/// How convert stores the metadata section.
enum MetadataCompressionChoice: String, CaseIterable, ExpressibleByArgument {
    case zstd, none
}

/// What `--max-kld`, `--target-bits` and `--max-size` choose precision for (`--allocate`).
extension AllocationRecord.Scope: ExpressibleByArgument {}

/// The encodings an allocation chooses among (`--choices q3g64,q4g128,q8g128`).
struct ChoiceList: ExpressibleByArgument {
    let choices: [MixedPrecisionSearch.Choice]

    init?(argument: String) {
        let parsed = argument.split(separator: ",").map { MixedPrecisionSearch.Choice(name: String($0)) }
        guard !parsed.isEmpty, parsed.allSatisfy({ $0 != nil }) else { return nil }
        choices = parsed.map { $0! }
    }
}

/// The built-in recipes (`Recipe.preset`).
enum Preset: String, CaseIterable, ExpressibleByArgument {
    case int8, int4, int3
    case int4All = "int4-all"
}

/// How long steps show their progress (`--progress`).
enum ProgressChoice: String, CaseIterable, ExpressibleByArgument {
    case auto, always, never
}

/// A size given on the command line: bytes, or a decimal number with kB, MB or GB (powers of 1000, as
/// every size vlq prints).
struct ByteSize: ExpressibleByArgument {
    let bytes: Int

    init?(argument: String) {
        let units: [(String, Double)] = [("GB", 1e9), ("MB", 1e6), ("kB", 1e3), ("KB", 1e3), ("B", 1)]
        let text = argument.trimmingCharacters(in: .whitespaces)
        let (number, scale) =
            units.first { text.hasSuffix($0.0) }.map { (String(text.dropLast($0.0.count)), $0.1) } ?? (text, 1)
        guard let value = Double(number.trimmingCharacters(in: .whitespaces)), value.isFinite, value > 0,
            value * scale < 9e18
        else { return nil }
        bytes = Int(value * scale)
    }
}
