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

/// The built-in recipes (`Recipe.preset`).
enum Preset: String, CaseIterable, ExpressibleByArgument {
    case int8, int4, int3
}

/// How long steps show their progress (`--progress`).
enum ProgressChoice: String, CaseIterable, ExpressibleByArgument {
    case auto, always, never
}
