import VLQCore

/// The kinds of failure planning or running quantization.
public enum QuantizationError: String, ErrorKind, Equatable {
    /// A recipe with a missing or unknown field: rules, match, component, encoding, method, group size.
    case invalidRecipe
    /// A bundle's quantization record that lacks a field or holds a malformed one.
    case invalidRecord
    /// A source bundle that is already quantized.
    case alreadyQuantized
    /// A method that needs calibration statistics (or their Gram matrices) run without them.
    case needsCalibration
    /// A tensor the model does not have, or of another shape than the model's.
    case tensorMismatch
    /// A weight whose size disagrees with its statistics or AWQ scales: they are not of this model.
    case statisticsMismatch
    /// A weight that cannot be quantized in the encoding and group size asked for.
    case invalidGrouping
    /// Weights to quantize holding NaN or infinite values.
    case nonFiniteWeights
    /// A Hessian that is not positive definite or cannot be inverted.
    case numericalFailure
}
